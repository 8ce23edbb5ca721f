"""
What the client and the server share, and nothing else: the job statuses a
record can show, the output streams, the chunk a read of output returns, the
response headers that carry offsets, the error codes of the JSON errors, and
the grammar of a job request's sizes and environment variable names, with
the error that names a field breaking it.

Both sides import this module; neither imports the other's. A change here is
a change of the HTTP API.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class JobStatus(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"
    STOPPED = "stopped"
    TIMED_OUT = "timed_out"
    FAILED_TO_START = "failed_to_start"
    LOST = "lost"

    @property
    def ended(self) -> bool:
        return self not in (JobStatus.RUNNING, JobStatus.STOPPING)


class Stream(enum.Enum):
    STDOUT = "stdout"
    STDERR = "stderr"
    COMBINED = "combined"


@dataclass(frozen=True)
class OutputChunk:
    """Bytes read from one stream, and where to read next."""

    data: bytes
    offset: int
    next_offset: int
    # The job has ended and this chunk reaches the end of its output.
    complete: bool


# Headers of an output response (the body is the bytes themselves).
OFFSET_HEADER = b"Jobworker-Offset"
NEXT_OFFSET_HEADER = b"Jobworker-Next-Offset"
COMPLETE_HEADER = b"Jobworker-Complete"
# Of a 416: how many bytes the stream holds.
SIZE_HEADER = b"Jobworker-Size"


class ErrorCode(enum.StrEnum):
    """``error.code`` of a JSON error body ``{"error": {"code", "message"}}``.

    The API's routes answer with these (``openapi.json``'s Error schema
    lists the same), except the last two: the connection itself answers with
    those, before any route has the request (``openapi.json`` describes them
    with the connection's limits).
    """

    INVALID_REQUEST = "invalid_request"
    INVALID_JSON = "invalid_json"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    BODY_TOO_LARGE = "body_too_large"
    OFFSET_OUT_OF_RANGE = "offset_out_of_range"
    TOO_MANY_JOBS = "too_many_jobs"
    INTERNAL_ERROR = "internal_error"
    SHUTTING_DOWN = "shutting_down"
    LIMITS_UNAVAILABLE = "limits_unavailable"
    STORAGE_FULL = "storage_full"
    OUT_OF_RESOURCES = "out_of_resources"
    # Of the connection, before any route.
    REQUEST_TIMEOUT = "request_timeout"
    HEADERS_TOO_LARGE = "headers_too_large"


CONNECTION_ERRORS = frozenset({ErrorCode.REQUEST_TIMEOUT, ErrorCode.HEADERS_TOO_LARGE})


# A job request's grammar, which the client checks before sending.

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # whole names: fullmatch
SIZE_PATTERN = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?B?)?$", re.IGNORECASE)
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class InvalidSpec(ValueError):
    """A job request is malformed; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_size(value: object, name: str) -> int:
    """A byte count: an integer, or a string such as ``"256M"`` or ``"1.5G"``."""
    if isinstance(value, bool):
        raise InvalidSpec(name, 'must be a size such as 268435456 or "256M"')
    if isinstance(value, int):
        if value <= 0:
            raise InvalidSpec(name, "must be positive")
        return value
    if isinstance(value, str):
        match = SIZE_PATTERN.match(value.strip())
        if match:
            number = float(match.group(1)) * SIZE_UNITS[match.group(2).upper()]
            if number >= 1:
                return int(number)
            raise InvalidSpec(name, "must be at least one byte")
    raise InvalidSpec(name, 'must be a size such as 268435456 or "256M"')
