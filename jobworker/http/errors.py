"""
Errors as the API answers them: a status, an ``error.code`` from
``jobworker.wire.ErrorCode``, a message, and sometimes headers.

Handlers raise :class:`HTTPError` for what they find wrong themselves;
the job library and the policy raise their own errors, and
:func:`as_http_error` is the one place those become statuses.
"""

from __future__ import annotations

from collections.abc import Mapping

from jobworker.auth.policy import Forbidden
from jobworker.jobs.confinement import LimitsUnavailable
from jobworker.jobs.errors import (
    JobConflict,
    JobNotFound,
    OutOfUids,
    ShuttingDown,
    StorageFull,
    TooManyJobs,
)
from jobworker.jobs.output import OffsetOutOfRange
from jobworker.jobs.spec import InvalidSpec
from jobworker.wire import SIZE_HEADER, ErrorCode


class HTTPError(Exception):
    """An error the client caused or must know about, as status + JSON."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        headers: Mapping[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code.value, "message": self.message}}


def as_http_error(error: Exception) -> HTTPError | None:
    """The answer for an error of the library or the policy; None: a bug."""
    if isinstance(error, HTTPError):
        return error
    if isinstance(error, JobNotFound):
        return HTTPError(404, ErrorCode.NOT_FOUND, str(error))
    if isinstance(error, InvalidSpec):
        return HTTPError(400, ErrorCode.INVALID_REQUEST, str(error))
    if isinstance(error, Forbidden):
        return HTTPError(403, ErrorCode.FORBIDDEN, str(error))
    if isinstance(error, JobConflict):
        return HTTPError(409, ErrorCode.CONFLICT, str(error))
    if isinstance(error, OffsetOutOfRange):
        size = {SIZE_HEADER: str(error.size).encode()}
        return HTTPError(416, ErrorCode.OFFSET_OUT_OF_RANGE, str(error), size)
    if isinstance(error, TooManyJobs):
        retry = {b"Retry-After": b"1"}
        return HTTPError(429, ErrorCode.TOO_MANY_JOBS, str(error), retry)
    if isinstance(error, ShuttingDown):
        return HTTPError(503, ErrorCode.SHUTTING_DOWN, str(error))
    if isinstance(error, LimitsUnavailable):
        return HTTPError(503, ErrorCode.LIMITS_UNAVAILABLE, str(error))
    if isinstance(error, StorageFull):
        retry = {b"Retry-After": b"60"}
        return HTTPError(503, ErrorCode.STORAGE_FULL, str(error), retry)
    if isinstance(error, OutOfUids):  # a running job's end frees one
        retry = {b"Retry-After": b"1"}
        return HTTPError(503, ErrorCode.OUT_OF_RESOURCES, str(error), retry)
    return None
