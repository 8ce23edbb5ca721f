"""
The exit codes of jobworker-client, and the one place where an error or a
job's ending becomes one (the package's docstring lists them for people).
"""

from __future__ import annotations

import enum

from twisted.internet.defer import CancelledError

from jobworker.client import (
    AccessDenied,
    BadRequest,
    CertificateRejected,
    Conflict,
    ConnectionFailed,
    ErrorResponse,
    JobRecord,
    NotFound,
    ServerNotTrusted,
)
from jobworker.tls import TLSConfigError
from jobworker.wire import JobStatus


class Exit(enum.IntEnum):
    """What jobworker-client's exit status says (and its help text lists)."""

    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    CONNECTION = 3
    SERVER_NOT_TRUSTED = 4
    CERTIFICATE_REJECTED = 5
    FORBIDDEN = 6
    NOT_FOUND = 7
    CONFLICT = 8
    SERVER_ERROR = 9
    TIMED_OUT = 124
    LOST = 125
    FAILED_TO_START = 127
    INTERRUPTED = 130
    BROKEN_PIPE = 141


class UsageError(Exception):
    """The command line cannot be used; the message says why."""


def job_exit_code(job: JobRecord) -> int:
    """The exit code that tells how a job ended, as a shell would."""
    if job.status == JobStatus.FAILED_TO_START.value:
        return Exit.FAILED_TO_START
    if job.status == JobStatus.TIMED_OUT.value:
        return Exit.TIMED_OUT
    if job.status == JobStatus.LOST.value:
        return Exit.LOST
    if job.signal is not None:
        return 128 + job.signal
    if job.exit_code is not None:
        return job.exit_code
    return Exit.UNEXPECTED


def explain(error: BaseException, server: str) -> tuple[int, str | None]:
    """
    The one place where an error becomes an exit code and a one-line
    message (None: say nothing, the code says it all).
    """
    where = f"{server}: " if server else ""
    if isinstance(error, UsageError):
        return Exit.USAGE, str(error)
    if isinstance(error, TLSConfigError):
        return Exit.USAGE, (
            f"{error} (give --ca, --cert and --key, or set JOBWORKER_CA, "
            "JOBWORKER_CERT and JOBWORKER_KEY)"
        )
    if isinstance(error, ConnectionFailed):
        return Exit.CONNECTION, f"cannot reach {server or 'the server'}: {error}"
    if isinstance(error, ServerNotTrusted):
        return Exit.SERVER_NOT_TRUSTED, (
            f"{where}{error} (is --ca the CA that signed the server's certificate?)"
        )
    if isinstance(error, CertificateRejected):
        return Exit.CERTIFICATE_REJECTED, (
            f"{where}{error} (is --cert signed by the server's client CA, "
            "and still valid?)"
        )
    if isinstance(error, AccessDenied):
        return Exit.FORBIDDEN, f"permission denied: {error.message}"
    if isinstance(error, NotFound):
        return Exit.NOT_FOUND, error.message
    if isinstance(error, Conflict):
        return Exit.CONFLICT, error.message
    if isinstance(error, BadRequest):
        return Exit.USAGE, f"invalid request: {error.message}"
    if isinstance(error, ErrorResponse):
        return Exit.SERVER_ERROR, (
            f"server error {error.status} ({error.code}): {error.message}"
        )
    if isinstance(error, CancelledError | KeyboardInterrupt):
        return Exit.INTERRUPTED, None
    if isinstance(error, BrokenPipeError):
        return Exit.BROKEN_PIPE, None
    return Exit.UNEXPECTED, f"unexpected error: {type(error).__name__}: {error}"
