"""
What a request says, read strictly: query parameters (an unknown or
repeated name is refused), the JSON body, numbers, and a stop's grace.

Every refusal is a 400 naming the parameter or field, so a person can act
on it; a body over the limit is a 413.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from twisted.web.server import Request

from jobworker.http.errors import HTTPError
from jobworker.http.request import body_too_large
from jobworker.wire import ErrorCode, JobStatus, Stream

# A JSON number without a sign: the document's "number", written as clients
# (and their float formatting, e.g. 1e-05) write it. Not float()'s own
# syntax, which also takes "nan", "inf", "1_0" and spaces.
DECIMAL = re.compile(r"^[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$")
MAX_GRACE = 3600


def invalid(message: str) -> HTTPError:
    return HTTPError(400, ErrorCode.INVALID_REQUEST, message)


class Query:
    """Strictly parsed query arguments: unknown or repeated names are refused."""

    def __init__(self, request: Request, allowed: set[str]) -> None:
        self._values: dict[str, str] = {}
        for raw_name, values in (request.args or {}).items():
            name = raw_name.decode("utf-8", "replace")
            if name not in allowed:
                raise invalid(f"{name}: unknown query parameter")
            if len(values) != 1:
                raise invalid(f"{name}: give it once")
            try:
                self._values[name] = values[0].decode("utf-8")
            except UnicodeDecodeError:
                raise invalid(f"{name}: not UTF-8") from None

    def text(self, name: str) -> str | None:
        return self._values.get(name)

    def integer(
        self, name: str, default: int, minimum: int = 0, maximum: int | None = None
    ) -> int:
        raw = self._values.get(name)
        if raw is None:
            return default
        if not (raw.isascii() and raw.isdigit()):
            raise invalid(f"{name}: must be a whole number")
        value = int(raw)
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum}" + (
                f" to {maximum}" if maximum is not None else ""
            )
            raise invalid(f"{name}: must be {bounds}")
        return value

    def number(self, name: str, default: float, maximum: float) -> float:
        raw = self._values.get(name)
        if raw is None:
            return default
        if not DECIMAL.match(raw):
            raise invalid(f"{name}: must be a number")
        value = float(raw)
        if not 0 <= value <= maximum:
            raise invalid(f"{name}: must be from 0 to {maximum:g}")
        return value

    def boolean(self, name: str) -> bool:
        raw = self._values.get(name, "false")
        if raw not in ("true", "false"):
            raise invalid(f"{name}: must be true or false")
        return raw == "true"

    def stream(self) -> Stream:
        raw = self._values.get("stream", Stream.COMBINED.value)
        try:
            return Stream(raw)
        except ValueError:
            raise invalid("stream: must be stdout, stderr or combined") from None

    def statuses(self) -> set[JobStatus] | None:
        raw = self._values.get("status")
        if raw is None:
            return None
        try:
            return {JobStatus(s) for s in raw.split(",")}
        except ValueError:
            names = ", ".join(s.value for s in JobStatus)
            raise invalid(f"status: must be one of {names}") from None


def read_json(request: Request, empty_ok: bool = False) -> Any:
    """The request body as JSON; 400 if it is not, 413 if it was too large."""
    if body_too_large(request):
        raise HTTPError(413, ErrorCode.BODY_TOO_LARGE, "the request body is too large")
    assert request.content is not None
    request.content.seek(0)
    body = request.content.read()
    if not body.strip() and empty_ok:
        return {}
    try:
        return json.loads(
            body.decode("utf-8"), parse_float=json_number, parse_int=json_integer
        )
    except UnicodeDecodeError:
        raise not_json("body: not UTF-8") from None
    except ValueError as e:
        raise not_json(f"body: not valid JSON: {e}") from None
    except RecursionError:
        # The parser recurses per level: [[[[...]]]] deep enough exhausts it.
        raise not_json("body: nested too deeply") from None


def not_json(message: str) -> HTTPError:
    return HTTPError(400, ErrorCode.INVALID_JSON, message)


def json_number(text: str) -> int | float:
    """
    A JSON number with a fraction or exponent. JSON Schema, and so the API's
    document, counts 3.0 (or 3e0) as an integer: read it as one, so that a
    field that wants an integer takes it.
    """
    value = float(text)
    return int(value) if value.is_integer() else value


def json_integer(text: str) -> int:
    """A JSON integer, refused (as invalid JSON) beyond what a float holds:
    no field takes one, and some would fail converting it."""
    value = int(text)
    if abs(value) > sys.float_info.max:
        raise ValueError(f"a number of {len(text)} digits is too large")
    return value


def parse_grace(body: Any) -> float | None:
    """A stop request's ``grace``: seconds from SIGTERM to SIGKILL, or None."""
    if not isinstance(body, dict):
        raise invalid("body: must be a JSON object")
    for key in body:
        if key != "grace":
            raise invalid(f"{key}: unknown field")
    grace = body.get("grace")
    if grace is None:
        return None
    if (
        isinstance(grace, bool)
        or not isinstance(grace, int | float)
        or not 0 <= grace <= MAX_GRACE
    ):
        raise invalid(f"grace: must be a number of seconds from 0 to {MAX_GRACE}")
    return float(grace)
