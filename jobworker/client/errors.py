"""
The client's errors: one base, :class:`JobworkerError`, for anything that
keeps a request from succeeding, and under it one class per thing a caller
can act on, so that a caller catches a kind instead of testing statuses.

:class:`ErrorResponse` and its kinds are the server's answers;
:class:`ConnectionFailed`, :class:`ServerNotTrusted` and
:class:`CertificateRejected` are what goes wrong before there is an answer
(``jobworker.client.connection`` says which is which).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

# The code of an answer the client cannot read (not JSON, not a record):
# the client's own, so not one of the server's ``ErrorCode``s.
UNEXPECTED_RESPONSE = "unexpected_response"


class JobworkerError(Exception):
    """Anything that keeps a request from succeeding."""


class ErrorResponse(JobworkerError):
    """The server answered with an error: ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"


class BadRequest(ErrorResponse):
    """400, 413 or 416: the request (or an offset in it) is not acceptable."""


class AccessDenied(ErrorResponse):
    """403: our identity's role does not grant this action."""


class NotFound(ErrorResponse):
    """404: no such job, or one we may not see."""


class Conflict(ErrorResponse):
    """409: the job's state forbids this, e.g. stopping an ended job."""


class ServerBusy(ErrorResponse):
    """429: the server runs as many jobs as it allows; try again later."""


class Unavailable(ErrorResponse):
    """
    503: the server cannot do it now: it is shutting down, its storage is
    full, or it has no cgroups for the limits a job needs.
    """


ERRORS_BY_STATUS: Mapping[int, type[ErrorResponse]] = {
    400: BadRequest,
    413: BadRequest,
    416: BadRequest,
    403: AccessDenied,
    404: NotFound,
    409: Conflict,
    429: ServerBusy,
    503: Unavailable,
}


def error_response(status: int, phrase: bytes, body: bytes) -> ErrorResponse:
    """
    The error for an answer with an error ``status``: its kind, and the code
    and message of its JSON body, or for a body that is not ours (a proxy's
    page) a code and message made from the status line.
    """
    code, message = f"http_{status}", f"HTTP {status} {phrase.decode('latin-1')}"
    try:
        detail = json.loads(body)["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        pass
    return ERRORS_BY_STATUS.get(status, ErrorResponse)(status, code, message)


def unexpected_response(status: int, message: str) -> ErrorResponse:
    """An answer that is not what the API promises for this request."""
    return ErrorResponse(status, UNEXPECTED_RESPONSE, message)


class ConnectionFailed(JobworkerError):
    """No answer: refused, unreachable, timed out, or the connection broke."""


class ServerNotTrusted(JobworkerError):
    """The server's certificate is not from our CA, or not for its address."""


class CertificateRejected(JobworkerError):
    """The server refused our client certificate during the TLS handshake."""
