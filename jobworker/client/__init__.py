"""
A client library for the jobworker HTTPS API, on treq.

    client = JobworkerClient.from_files(
        reactor, "https://127.0.0.1:8443",
        ca="certs/ca.pem", cert="certs/alice.pem", key="certs/alice.key",
    )
    job = await client.start({"command": "/bin/echo", "args": ["hi"]})
    await client.follow(job.id, sys.stdout.buffer.write)
    job = await client.wait(job.id)

One method per API call, typed results (:class:`JobRecord`, and the
:class:`~jobworker.wire.OutputChunk`) and typed errors:
:class:`ApiError` and its subclasses for the server's answers,
:class:`ConnectionFailed`,
:class:`ServerNotTrusted` and :class:`CertificateRejected` for what goes
wrong before there is an answer. :func:`connection_error` is the one place
where Twisted's and OpenSSL's exceptions become ours.

The HTTP client and the clock are passed in, so tests run the real client
against a resource tree in memory (``treq.testing.StubTreq``) and a
``task.Clock``.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

import treq
from OpenSSL import SSL
from service_identity import VerificationError
from treq.client import HTTPClient
from twisted.internet import error as net
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.iweb import IResponse

from jobworker.tls import StrPath, client_tls_policy
from jobworker.wire import JobStatus, OutputChunk

DEFAULT_SERVER = "https://127.0.0.1:8443"
# Ask for this long per long-poll: well under the server's limit (300 s), so
# a proxy or NAT that drops idle connections is less likely to cut it.
LONG_POLL_SECONDS = 30.0
# How long follow() waits before each consecutive reconnection attempt. A
# delivered byte resets the count: only a connection that keeps failing
# without progress gives up.
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
CONNECT_TIMEOUT = 10.0
# Statuses stay strings in records, so that a status a newer server adds
# does not break this client.
ENDED = frozenset(status.value for status in JobStatus if status.ended)


# Errors


class JobworkerError(Exception):
    """Anything that keeps a request from succeeding."""


class ApiError(JobworkerError):
    """The server answered with an error: ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"


class BadRequest(ApiError):
    """400, 413 or 416: the request (or an offset in it) is not acceptable."""


class Forbidden(ApiError):
    """403: our identity's role does not grant this action."""


class NotFound(ApiError):
    """404: no such job, or one we may not see."""


class Conflict(ApiError):
    """409: the job's state forbids this, e.g. stopping an ended job."""


class TooManyJobs(ApiError):
    """429: the server runs as many jobs as it allows."""


class Unavailable(ApiError):
    """503: the server is shutting down."""


ERRORS_BY_STATUS: Mapping[int, type[ApiError]] = {
    400: BadRequest,
    413: BadRequest,
    416: BadRequest,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    429: TooManyJobs,
    503: Unavailable,
}


class ConnectionFailed(JobworkerError):
    """No answer: refused, unreachable, timed out, or the connection broke."""


class ServerNotTrusted(JobworkerError):
    """The server's certificate is not from our CA, or not for its address."""


class CertificateRejected(JobworkerError):
    """The server refused our client certificate during the TLS handshake."""


# OpenSSL's names for alerts a server sends about a client's certificate.
CERTIFICATE_ALERTS = (
    "certificate required",
    "unknown ca",
    "certificate expired",
    "certificate revoked",
    "certificate unknown",
    "bad certificate",
    "unsupported certificate",
    "access denied",
)


def connection_error(error: BaseException) -> JobworkerError | None:
    """
    The one place where transport-level failures become our errors; None for
    anything else (which is then not ours to explain).

    Twisted wraps what goes wrong during a request in ``ResponseNeverReceived``
    or ``ResponseFailed`` (a list of ``Failure``s). A TLS handshake problem is
    an ``SSL.Error`` inside: OpenSSL's reasons say which side objected. Ours
    say "certificate verify failed"; the server's arrive as alerts ("tlsv13
    alert certificate required", "tlsv1 alert unknown ca", "sslv3 alert
    certificate expired", ...). With TLS 1.3 the server checks our
    certificate after our side of the handshake is done, so its alert shows
    up as the request's failure, not the connection's.
    """
    causes = _causes(error)
    if _cancelled(error):
        return None  # we gave up on it: not the connection's fault
    for cause in causes:
        if isinstance(cause, VerificationError):
            return ServerNotTrusted(
                "the server's certificate is for another host name or address"
            )
        if isinstance(cause, SSL.Error):
            return _tls_error(cause)
    for cause in causes:
        if isinstance(cause, net.ConnectionRefusedError):
            return ConnectionFailed("connection refused: is the server running?")
        if isinstance(cause, net.DNSLookupError):
            return ConnectionFailed(f"cannot resolve the server's name: {cause}")
        if isinstance(cause, net.ConnectError | net.TimeoutError):
            return ConnectionFailed(f"cannot connect: {_describe(cause)}")
        if isinstance(cause, net.ConnectionLost | net.ConnectionDone):
            return ConnectionFailed("the server closed the connection")
    if isinstance(error, ResponseFailed):
        return ConnectionFailed("the connection broke during the response")
    return None


def _cancelled(error: BaseException) -> bool:
    return any(isinstance(cause, CancelledError) for cause in _causes(error))


def _translated(error: Exception) -> Exception:
    """What to raise for ``error``: ours, a plain CancelledError, or itself."""
    if _cancelled(error):
        return error if isinstance(error, CancelledError) else CancelledError()
    return connection_error(error) or error


def _causes(error: BaseException) -> builtins.list[BaseException]:
    """``error`` and, for Twisted's wrapper exceptions, what they wrap."""
    found = [error]
    for reason in getattr(error, "reasons", None) or []:
        if isinstance(reason, Failure) and isinstance(reason.value, BaseException):
            found += _causes(reason.value)
    return found


def _tls_error(error: SSL.Error) -> JobworkerError:
    reasons = _ssl_reasons(error)
    text = "; ".join(reasons) or "TLS handshake failed"
    if any("certificate verify failed" in r for r in reasons):
        return ServerNotTrusted(f"the server's certificate is not trusted: {text}")
    if any(" alert " in f" {r} " and _about_certificate(r) for r in reasons):
        return CertificateRejected(f"the server refused our certificate: {text}")
    return ConnectionFailed(f"TLS handshake failed: {text}")


def _ssl_reasons(error: SSL.Error) -> builtins.list[str]:
    details = error.args[0] if error.args else []
    if isinstance(details, list):
        return [str(d[-1]) for d in details if isinstance(d, tuple) and d]
    return [str(details)]


def _about_certificate(reason: str) -> bool:
    return any(reason.endswith(alert) for alert in CERTIFICATE_ALERTS)


def _describe(error: BaseException) -> str:
    text = str(error).strip().rstrip(".")
    return text or type(error).__name__


# Results


@dataclass(frozen=True)
class Usage:
    """Resources a job consumed, as the server's cgroup counted them."""

    cpu_seconds: float
    memory_peak: int | None
    io_read_bytes: int
    io_write_bytes: int


@dataclass(frozen=True)
class JobRecord:
    """A job as the server describes it; ``raw`` is the JSON as received."""

    id: str
    owner: str
    command: str
    args: tuple[str, ...]
    status: str
    exit_code: int | None
    signal: int | None
    oom_killed: bool
    error: str | None
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    run_as: str | None
    usage: Usage | None
    stdout_bytes: int
    stderr_bytes: int
    raw: Mapping[str, Any]

    @property
    def ended(self) -> bool:
        """True once the job will not change any more (no process left)."""
        return self.status in ENDED

    @property
    def argv(self) -> tuple[str, ...]:
        return (self.command, *self.args)

    @classmethod
    def from_json(cls, data: Any) -> JobRecord:
        """Read a record; a shape we do not understand is an ``ApiError``."""
        try:
            usage = data.get("usage")
            sizes = data.get("output_bytes") or {}
            return cls(
                id=str(data["id"]),
                owner=str(data["owner"]),
                command=str(data["command"]),
                args=tuple(str(a) for a in data.get("args", [])),
                status=str(data["status"]),
                exit_code=_optional_int(data.get("exit_code")),
                signal=_optional_int(data.get("signal")),
                oom_killed=bool(data.get("oom_killed")),
                error=data.get("error"),
                created_at=data.get("created_at"),
                started_at=data.get("started_at"),
                ended_at=data.get("ended_at"),
                run_as=data.get("run_as"),
                usage=None if usage is None else Usage(**usage),
                stdout_bytes=int(sizes.get("stdout", 0)),
                stderr_bytes=int(sizes.get("stderr", 0)),
                raw=MappingProxyType(dict(data)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ApiError(
                200, "unexpected_response", f"not a job record: {e}"
            ) from None


@dataclass(frozen=True)
class Health:
    status: str
    running_jobs: int
    followers: int


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


# The client


class JobworkerClient:
    """
    One method per API call. ``http`` is treq's ``HTTPClient`` (or
    ``StubTreq`` in tests); ``clock`` times the pauses between reconnection
    attempts in :meth:`follow`.
    """

    def __init__(
        self,
        base_url: str,
        http: HTTPClient,
        clock: IReactorTime,
        pool: HTTPConnectionPool | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._http = http
        self._clock = clock
        self._pool = pool

    @classmethod
    def from_files(
        cls,
        reactor: Any,
        server: str,
        ca: StrPath,
        cert: StrPath,
        key: StrPath,
    ) -> JobworkerClient:
        """
        A client that trusts the CA in ``ca`` and presents ``cert``/``key``.
        Connections are kept alive between requests. Raises
        ``jobworker.tls.TLSConfigError`` naming a file that cannot be used.
        """
        policy = client_tls_policy(ca, cert, key)
        pool = HTTPConnectionPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
        agent = Agent(  # type: ignore[no-untyped-call]
            reactor, contextFactory=policy, pool=pool, connectTimeout=CONNECT_TIMEOUT
        )
        return cls(server, HTTPClient(agent), reactor, pool)

    async def close(self) -> None:
        """Close kept-alive connections."""
        if self._pool is not None:
            await self._pool.closeCachedConnections()  # type: ignore[no-untyped-call]

    # Jobs

    async def start(self, spec: Mapping[str, Any]) -> JobRecord:
        """Start a job from a request as the API takes it (command, args, ...)."""
        return JobRecord.from_json(await self._json("POST", "/v1/jobs", body=spec))

    async def stop(self, job_id: str, grace: float | None = None) -> JobRecord:
        """Ask a running job to stop: SIGTERM, ``grace`` seconds, SIGKILL."""
        body = None if grace is None else {"grace": grace}
        path = f"{_job_path(job_id)}/stop"
        return JobRecord.from_json(await self._json("POST", path, body=body))

    async def status(self, job_id: str) -> JobRecord:
        return JobRecord.from_json(await self._json("GET", _job_path(job_id)))

    async def list(
        self, status: str | None = None, owner: str | None = None
    ) -> builtins.list[JobRecord]:
        """Jobs our role may read; ``status`` may name several, comma-separated."""
        params = [(k, v) for k, v in (("status", status), ("owner", owner)) if v]
        body = await self._json("GET", "/v1/jobs", params=params)
        jobs = body.get("jobs") if isinstance(body, dict) else None
        if not isinstance(jobs, builtins.list):
            raise ApiError(200, "unexpected_response", "no list of jobs in the answer")
        return [JobRecord.from_json(j) for j in jobs]

    async def purge(self, job_id: str) -> None:
        """Delete an ended job's record and output."""
        await self._call("DELETE", _job_path(job_id))

    async def health(self) -> Health:
        body = await self._json("GET", "/v1/healthz")
        try:
            return Health(
                str(body["status"]), int(body["running_jobs"]), int(body["followers"])
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ApiError(
                200, "unexpected_response", f"not a health report: {e}"
            ) from None

    # Output

    async def read(
        self,
        job_id: str,
        stream: str = "combined",
        offset: int = 0,
        wait: float = 0,
        limit: int | None = None,
    ) -> OutputChunk:
        """
        What ``stream`` holds from ``offset`` now, or, if nothing yet and the
        job runs, once something arrives (at most ``wait`` seconds).
        """
        params = [("stream", stream), ("offset", str(offset))]
        if wait:
            params.append(("wait", f"{wait:g}"))
        if limit is not None:
            params.append(("limit", str(limit)))
        response, data = await self._call(
            "GET", f"{_job_path(job_id)}/output", params=params
        )
        return OutputChunk(
            data=data,
            offset=_int_header(response, b"jobworker-offset", offset),
            next_offset=_int_header(
                response, b"jobworker-next-offset", offset + len(data)
            ),
            complete=_header(response, b"jobworker-complete") == "true",
        )

    async def follow(
        self,
        job_id: str,
        write: Callable[[bytes], None],
        stream: str = "combined",
        offset: int = 0,
    ) -> int:
        """
        Hand ``stream``'s bytes from ``offset`` to ``write`` as they arrive,
        until the job has ended and everything is delivered; returns the
        offset after the last byte.

        If the connection drops mid-stream, follow again from the next
        undelivered byte: nothing is lost or repeated. Consecutive failures
        without progress are retried after the pauses in ``RETRY_DELAYS``,
        then the last error is raised. The first request is not retried: a
        server that cannot be reached at all is reported at once.
        """
        cursor = _Cursor(offset, write)
        failures = 0
        while True:
            before = cursor.offset
            try:
                await self._follow_once(job_id, stream, cursor)
                # The server ended the stream cleanly. That is normally the
                # job's end, but a body delimited by closing the connection
                # ends cleanly too when cut short: ask, and pick up the rest.
                if await self._catch_up(job_id, stream, cursor):
                    return cursor.offset
                error: JobworkerError = ConnectionFailed(
                    "the follow stream ended early"
                )
            except ConnectionFailed as e:
                if cursor.offset == offset and not cursor.answered:
                    raise
                error = e
            if cursor.offset > before:
                failures = 0  # progress: reconnect at once
                continue
            failures += 1
            if failures > len(RETRY_DELAYS):
                raise error
            await deferLater(self._clock, RETRY_DELAYS[failures - 1])

    async def _follow_once(self, job_id: str, stream: str, cursor: _Cursor) -> None:
        params = [
            ("stream", stream),
            ("offset", str(cursor.offset)),
            ("follow", "true"),
        ]
        url = self._base + f"{_job_path(job_id)}/output"
        try:
            response = await self._http.request(
                "GET", url, params=params, unbuffered=True
            )
            if response.code != 200:
                await _raise_for(response, await treq.content(response))
            cursor.answered = True
            await treq.collect(response, cursor.deliver)
        except Exception as e:
            if _cancelled(e):
                # treq's collect cannot be cancelled: stop writing now, and
                # let the next chunk close the connection.
                cursor.abandoned = True
            translated = _translated(e)
            if translated is e:
                raise
            raise translated from e

    async def _catch_up(self, job_id: str, stream: str, cursor: _Cursor) -> bool:
        """Deliver what a cleanly ended stream left out; True if complete."""
        chunk = await self.read(job_id, stream, cursor.offset)
        if chunk.data:
            cursor.deliver(chunk.data)
        return chunk.complete

    async def wait(self, job_id: str) -> JobRecord:
        """
        The job's final record, once it has ended.

        The API has no long-poll on a record, so this long-polls the output
        (which completes when the job ends), skipping what was written before
        it was called. Output that arrives meanwhile is read and dropped.
        """
        record = await self.status(job_id)
        offset = record.stdout_bytes + record.stderr_bytes
        while not record.ended:
            chunk = await self.read(job_id, "combined", offset, wait=LONG_POLL_SECONDS)
            offset = chunk.next_offset
            if chunk.complete:
                record = await self.status(job_id)
        return record

    # HTTP

    async def _json(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: builtins.list[tuple[str, str]] | None = None,
    ) -> Any:
        response, data = await self._call(method, path, body, params)
        try:
            return json.loads(data)
        except ValueError:
            raise ApiError(
                response.code, "unexpected_response", "the answer is not JSON"
            ) from None

    async def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: builtins.list[tuple[str, str]] | None = None,
    ) -> tuple[IResponse, bytes]:
        """One request: the response and its whole body, or one of our errors."""
        kwargs: dict[str, Any] = {"params": params or []}
        if body is not None:
            kwargs["json"] = dict(body)
        try:
            response = await self._http.request(method, self._base + path, **kwargs)
            data = await treq.content(response)
        except Exception as e:
            translated = _translated(e)
            if translated is e:
                raise
            raise translated from e
        if response.code >= 400:
            await _raise_for(response, data)
        return response, data


class _Cursor:
    """Where a follow is: the next offset to deliver, and who to deliver to."""

    def __init__(self, offset: int, write: Callable[[bytes], None]) -> None:
        self.offset = offset
        self._write = write
        self.answered = False
        self.abandoned = False

    def deliver(self, data: bytes) -> None:
        if self.abandoned:
            raise CancelledError("follow was cancelled")
        # Count a byte only once it was written: if write raises, it is not
        # ours to skip on the next attempt (and the error ends the follow).
        self._write(data)
        self.offset += len(data)


async def _raise_for(response: IResponse, data: bytes) -> None:
    """Raise the ApiError subclass for an error answer."""
    status = response.code
    code, message = (
        f"http_{status}",
        f"HTTP {status} {response.phrase.decode('latin-1')}",
    )
    try:
        detail = json.loads(data)["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        pass
    raise ERRORS_BY_STATUS.get(status, ApiError)(status, code, message)


def _job_path(job_id: str) -> str:
    # A job id is hex, but the user types it: never let it leave its segment.
    return "/v1/jobs/" + quote(job_id, safe="")


def _header(response: IResponse, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return None if not values else values[0].decode("ascii", "replace")


def _int_header(response: IResponse, name: bytes, default: int) -> int:
    value = _header(response, name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise ApiError(
            response.code, "unexpected_response", f"bad {name.decode()} header"
        ) from None
