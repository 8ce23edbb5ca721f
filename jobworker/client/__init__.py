"""
A client library for the jobworker HTTPS API, on treq.

    client = JobworkerClient.from_files(
        reactor, "https://127.0.0.1:8443",
        ca="certs/ca.pem", cert="certs/alice.pem", key="certs/alice.key",
    )
    job = await client.start({"command": "/bin/echo", "args": ["hi"]})
    await client.follow(job.id, sys.stdout.buffer.write)
    job = await client.wait(job.id)

One method per API call, typed results (:class:`JobRecord` with its
:class:`UsageReport`, :class:`Health`, and the
:class:`~jobworker.wire.OutputChunk`) and typed errors, all under
:class:`JobworkerError`: :class:`ErrorResponse` and its kinds for the
server's answers, :class:`ConnectionFailed`, :class:`ServerNotTrusted` and
:class:`CertificateRejected` for what goes wrong before there is an answer.
:func:`connection_error` is the one place where Twisted's and OpenSSL's
exceptions become ours.

This package imports nothing of the server: only ``jobworker.wire``, which
both sides share, and ``jobworker.tls``.
"""

from __future__ import annotations

from jobworker.client.client import DEFAULT_SERVER, JobworkerClient
from jobworker.client.connection import connection_error
from jobworker.client.errors import (
    AccessDenied,
    BadRequest,
    CertificateRejected,
    Conflict,
    ConnectionFailed,
    ErrorResponse,
    JobworkerError,
    NotFound,
    ServerBusy,
    ServerNotTrusted,
    Unavailable,
)
from jobworker.client.following import RETRY_DELAYS
from jobworker.client.records import Health, JobRecord, UsageReport

__all__ = [
    "DEFAULT_SERVER",
    "RETRY_DELAYS",
    "AccessDenied",
    "BadRequest",
    "CertificateRejected",
    "Conflict",
    "ConnectionFailed",
    "ErrorResponse",
    "Health",
    "JobRecord",
    "JobworkerClient",
    "JobworkerError",
    "NotFound",
    "ServerBusy",
    "ServerNotTrusted",
    "Unavailable",
    "UsageReport",
    "connection_error",
]
