"""
The HTTPS API: a twisted.web resource tree under ``/v1``.

Every endpoint is an :class:`Endpoint`: it declares the action each method
needs, and ``Endpoint.render`` does the rest in one place: who is calling
(from the client certificate, never from anything the client says), the
handler as a coroutine, the mapping of errors to a status and a JSON body, and
one audit line per request. Handlers never look at certificates, and no
traceback ever reaches a client.

Checks run in this order: a job the caller may not see is 404 (what exists is
not leaked), an action the caller's role does not grant on a visible job is
403, and only then does the job's state matter (409).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from jobworker.auth.policy import (
    Action,
    Forbidden,
    Identity,
    Policy,
    Role,
    check_ceilings,
)
from jobworker.http.audit import Audit
from jobworker.http.channel import ApiChannel, ConnectionLimits
from jobworker.jobs.confinement import LimitsUnavailable
from jobworker.jobs.output import OffsetOutOfRange, OutputLog
from jobworker.jobs.record import Job
from jobworker.jobs.service import (
    JobConflict,
    JobManager,
    JobNotFound,
    MiB,
    ShuttingDown,
    StorageFull,
    TooManyJobs,
)
from jobworker.jobs.spec import InvalidSpec, IOLimits, JobSpec, Limits, parse_job_spec
from jobworker.tls import peer_common_name
from jobworker.wire import JobStatus, Stream

JSON = b"application/json"
OCTETS = b"application/octet-stream"
FOLLOW_CHUNK = 256 * 1024
# Module level: a Logger that is a class attribute takes its class's name.
# A JSON number without a sign: the document's "number", written as clients
# (and their float formatting, e.g. 1e-05) write it. Not float()'s own
# syntax, which also takes "nan", "inf", "1_0" and spaces.
DECIMAL = re.compile(r"^[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$")


@dataclass(frozen=True)
class ApiSettings:
    """Limits of the HTTP layer."""

    max_body: int = MiB
    max_wait: float = 300.0
    default_limit: int = MiB
    max_limit: int = 16 * MiB
    # Idle connections are closed after this many seconds; so is one whose
    # client stops reading a response (a follow stream) for as long.
    idle_timeout: float = 60.0
    # Deadlines Twisted has no setting for (see jobworker.http.channel): to finish
    # the TLS handshake, to send a request's headers, to send its body.
    handshake_timeout: float = 10.0
    header_timeout: float = 20.0
    body_timeout: float = 60.0
    # Request line and headers together, in bytes; and how many headers.
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100


class ApiError(Exception):
    """An error the client caused or must know about, as status + JSON."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def api_error(error: Exception) -> ApiError | None:
    """The one place where the library's errors become HTTP statuses."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, JobNotFound):
        return ApiError(404, "not_found", str(error))
    if isinstance(error, InvalidSpec):
        return ApiError(400, "invalid_request", str(error))
    if isinstance(error, Forbidden):
        return ApiError(403, "forbidden", str(error))
    if isinstance(error, JobConflict):
        return ApiError(409, "conflict", str(error))
    if isinstance(error, OffsetOutOfRange):
        return ApiError(
            416, "offset_out_of_range", str(error), {"Jobworker-Size": str(error.size)}
        )
    if isinstance(error, TooManyJobs):
        return ApiError(429, "too_many_jobs", str(error), {"Retry-After": "1"})
    if isinstance(error, ShuttingDown):
        return ApiError(503, "shutting_down", str(error))
    if isinstance(error, LimitsUnavailable):
        return ApiError(503, "limits_unavailable", str(error))
    if isinstance(error, StorageFull):
        return ApiError(503, "storage_full", str(error), {"Retry-After": "60"})
    return None


def identity_from_certificate(request: IRequest) -> Identity | None:
    """The caller's identity: the subject CN of its verified certificate."""
    channel = request.channel  # type: ignore[attr-defined]
    if isinstance(channel, ApiChannel):
        return channel.peer_identity()
    name = peer_common_name(channel.transport)
    return None if name is None else Identity(name)


class Api:
    """What every endpoint shares: the library, the policy, the settings."""

    log = Logger()

    def __init__(
        self,
        manager: JobManager,
        policy: Policy,
        settings: ApiSettings | None = None,
        identify: Callable[[IRequest], Identity | None] = identity_from_certificate,
    ) -> None:
        self.manager = manager
        self.policy = policy
        self.settings = settings or ApiSettings()
        self.identify = identify
        # Open follow streams, for health and tests.
        self.followers: set[FollowStream] = set()

    def visible_job(
        self, request: Request, identity: Identity, job_id: str, action: Action
    ) -> Job:
        """The job, if the caller may see it (else 404) and act on it (else 403)."""
        try:
            job = self.manager.get(job_id)
        except JobNotFound:
            decided(request, False)  # nothing there to be allowed
            raise
        if not self.policy.can_see(identity, job.owner):
            decided(request, False)
            raise JobNotFound(job_id)
        allowed = self.policy.authorize(identity, action, job.owner).allowed
        decided(request, allowed)
        if not allowed:
            raise ApiError(
                403, "forbidden", f"{identity.name} may not {action.value} job {job_id}"
            )
        return job

    def record(self, job: Job) -> dict[str, Any]:
        return self.manager.describe(job)

    def root(self) -> Resource:
        root = Directory(self)
        v1 = Directory(self)
        root.putChild(b"v1", v1)
        v1.putChild(b"jobs", JobsEndpoint(self))
        v1.putChild(b"healthz", HealthEndpoint(self))
        v1.putChild(b"openapi.json", OpenAPIEndpoint(self))
        return root

    def site(self) -> Site:
        settings = self.settings
        # A body is JSON whatever its Content-Type says (curl -d sends a
        # form's): Twisted must not parse it into the query arguments.
        site = Site(
            self.root(), timeout=settings.idle_timeout, parsePOSTFormSubmission=False
        )
        limits = ConnectionLimits(
            handshake_timeout=settings.handshake_timeout,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            stall_timeout=settings.idle_timeout,
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
        )
        # Our channel, not Twisted's HTTP/2-negotiating wrapper: no ALPN is
        # offered (see jobworker.tls), so HTTP/1.1 is all there is.
        site.protocol = functools.partial(ApiChannel, limits)  # type: ignore[method-assign, assignment]
        site.requestFactory = request_factory(self.settings.max_body)
        site.displayTracebacks = False
        return site


Handler = Callable[[Request, Identity], Awaitable[Any]]


class Endpoint(Resource):
    """
    One route. Subclasses define ``handle_<METHOD>`` coroutines and say, in
    ``actions``, which policy action each method needs (``None``: any
    authenticated caller; the handler checks per job).
    """

    actions: ClassVar[dict[str, Action | None]] = {}

    def __init__(self, api: Api, job_id: str | None = None) -> None:
        super().__init__()
        self.api = api
        self.job_id = job_id

    def getChild(self, path: bytes, request: IRequest) -> Resource:
        return NotFoundEndpoint(self.api)

    def render(self, request: Request) -> int:
        method = (request.method or b"").decode("ascii", "replace")
        identity = self.api.identify(request)
        audit = Audit(identity, self.action_name(method), self.job_id)
        if isinstance(request, ApiRequest):
            request.audit = audit
        request.notifyFinish().addBoth(audit.finished, request)
        if identity is None:
            send_error(request, ApiError(403, "forbidden", "no client certificate"))
            return NOT_DONE_YET
        handler: Handler | None = getattr(self, f"handle_{method}", None)
        if handler is None:
            allowed = ", ".join(sorted(self.actions))
            request.setHeader(b"Allow", allowed.encode())
            send_error(request, ApiError(405, "method_not_allowed", f"use {allowed}"))
            return NOT_DONE_YET
        if self.actions[method] is None:
            audit.allowed = True  # any authenticated caller may
        running = Deferred.fromCoroutine(self._run(handler, request, identity, audit))
        request.notifyFinish().addErrback(lambda _: running.cancel())
        return NOT_DONE_YET

    def action_name(self, method: str) -> str:
        action = self.actions.get(method)
        return action.value if action is not None else method.lower()

    async def _run(
        self, handler: Handler, request: Request, identity: Identity, audit: Audit
    ) -> None:
        try:
            result = await handler(request, identity)
        except CancelledError:
            return  # the client went away; nothing to answer
        except Exception as e:
            error = api_error(e)
            if error is None:
                self.api.log.failure(
                    "unexpected error in {method} {path}",
                    Failure(),
                    method=request.method,
                    path=request.path,
                )
                error = ApiError(
                    500, "internal_error", "internal error; see server log"
                )
            send_error(request, error)
            return
        if result is not NOT_DONE_YET and not request.finished:
            send_json(request, 200 if result is not None else 204, result)


class JobsEndpoint(Endpoint):
    """``/v1/jobs``: list jobs, start a job."""

    actions = {"GET": Action.READ, "POST": Action.START}

    def getChild(self, path: bytes, request: IRequest) -> Resource:
        return JobEndpoint(self.api, path.decode("ascii", "replace"))

    async def handle_GET(self, request: Request, identity: Identity) -> dict[str, Any]:
        query = Query(request, {"status", "owner"})
        owner = query.text("owner")
        statuses = query.statuses()
        jobs = self.api.manager.list(owner, statuses)
        policy = self.api.policy
        decided(request, policy.authorize(identity, Action.READ, None).allowed)
        readable = [
            j for j in jobs if policy.authorize(identity, Action.READ, j.owner).allowed
        ]
        return {"jobs": [self.api.record(j) for j in readable]}

    async def handle_POST(self, request: Request, identity: Identity) -> Any:
        Query(request, set())
        role = self.api.policy.role_for(identity)
        decision = self.api.policy.authorize(identity, Action.START, None)
        decided(request, decision.allowed)
        if role is None or not decision.allowed:
            raise ApiError(403, "forbidden", f"{identity.name} may not start jobs")
        spec = within_ceilings(
            role,
            parse_job_spec(read_json(request)),
            self.api.manager.settings.default_limits,
        )
        try:
            job = await self.api.manager.start(spec, identity.name, run_as=role.run_as)
        except OSError as e:
            # Out of file descriptors (a job needs pipes and files): the
            # server is busy, not broken; a later try may well succeed.
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            raise ApiError(
                503,
                "out_of_resources",
                "the server has no file descriptors to spare; try again later",
                {"Retry-After": "1"},
            ) from None
        audit = audit_of(request)
        if audit is not None:
            audit.job_id = job.id
        request.setHeader(b"Location", f"/v1/jobs/{job.id}".encode())
        send_json(request, 201, self.api.record(job))
        return NOT_DONE_YET


class JobEndpoint(Endpoint):
    """``/v1/jobs/{id}``: one job's record; purge it."""

    actions = {"GET": Action.READ, "DELETE": Action.PURGE}

    def getChild(self, path: bytes, request: IRequest) -> Resource:
        if path == b"stop":
            return StopEndpoint(self.api, self.job_id)
        if path == b"output":
            return OutputEndpoint(self.api, self.job_id)
        return NotFoundEndpoint(self.api)

    async def handle_GET(self, request: Request, identity: Identity) -> dict[str, Any]:
        Query(request, set())
        assert self.job_id is not None
        return self.api.record(
            self.api.visible_job(request, identity, self.job_id, Action.READ)
        )

    async def handle_DELETE(self, request: Request, identity: Identity) -> None:
        Query(request, set())
        assert self.job_id is not None
        self.api.visible_job(request, identity, self.job_id, Action.PURGE)
        self.api.manager.purge(self.job_id)


class StopEndpoint(Endpoint):
    """``/v1/jobs/{id}/stop``: SIGTERM, grace, SIGKILL."""

    actions = {"POST": Action.STOP}

    async def handle_POST(self, request: Request, identity: Identity) -> Any:
        Query(request, set())
        assert self.job_id is not None
        self.api.visible_job(request, identity, self.job_id, Action.STOP)
        body = read_json(request, empty_ok=True)
        grace = parse_grace(body)
        job = self.api.manager.stop(self.job_id, grace)
        send_json(request, 202, self.api.record(job))
        return NOT_DONE_YET


class OutputEndpoint(Endpoint):
    """``/v1/jobs/{id}/output``: long-poll reads by offset, or a follow stream."""

    actions = {"GET": Action.READ}

    async def handle_GET(self, request: Request, identity: Identity) -> Any:
        settings = self.api.settings
        query = Query(request, {"stream", "offset", "wait", "limit", "follow"})
        stream = query.stream()
        offset = query.integer("offset", 0, minimum=0)
        follow = query.boolean("follow")
        wait = query.number("wait", 0.0, maximum=settings.max_wait)
        limit = query.integer(
            "limit", settings.default_limit, minimum=1, maximum=settings.max_limit
        )
        assert self.job_id is not None
        self.api.visible_job(request, identity, self.job_id, Action.READ)
        log = self.api.manager.output_log(self.job_id)
        if follow:
            if offset > log.size(stream) and log.closed:
                raise OffsetOutOfRange(stream, offset, log.size(stream))
            return FollowStream(
                request, log, stream, offset, registry=self.api.followers
            ).start()
        # The first piece, once there is one (or the wait is over); a larger
        # answer is sent on piece by piece as the client takes it: one large
        # write costs more per byte (allocations, copies) and holds the whole
        # answer in memory, twice over once encrypted.
        chunk = await self.api.manager.read_output(
            self.job_id, stream, offset, min(limit, FOLLOW_CHUNK), wait
        )
        whole = limit if len(chunk.data) == FOLLOW_CHUNK else len(chunk.data)
        span = log.span(stream, offset, whole)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", OCTETS)
        request.setHeader(b"Jobworker-Offset", str(span.offset).encode())
        request.setHeader(b"Jobworker-Next-Offset", str(span.end).encode())
        request.setHeader(b"Jobworker-Complete", b"true" if span.complete else b"false")
        request.setHeader(b"Content-Length", str(span.end - span.offset).encode())
        if span.end > chunk.next_offset:
            # From the first byte again (one piece read twice): a producer
            # registered after a write that filled the transport's buffer is
            # never paused by twisted.web, and would write the whole answer.
            return FollowStream(request, log, stream, offset, end=span.end).start()
        request.write(chunk.data)
        request.finish()
        return NOT_DONE_YET


class HealthEndpoint(Endpoint):
    """``/v1/healthz``: liveness, for any authenticated client."""

    actions = {"GET": None}

    async def handle_GET(self, request: Request, identity: Identity) -> dict[str, Any]:
        Query(request, set())
        return {
            "status": "ok",
            "running_jobs": self.api.manager.running_count(),
            "followers": len(self.api.followers),
        }


class OpenAPIEndpoint(Endpoint):
    """``/v1/openapi.json``: the document describing this API."""

    actions = {"GET": None}

    async def handle_GET(self, request: Request, identity: Identity) -> Any:
        Query(request, set())
        document = resources.files("jobworker").joinpath("openapi.json").read_bytes()
        request.setHeader(b"Content-Type", JSON)
        request.setHeader(b"Content-Length", str(len(document)).encode())
        request.write(document)
        request.finish()
        return NOT_DONE_YET


class NotFoundEndpoint(Endpoint):
    """Any path the API does not have: a JSON 404, audited like the rest."""

    def render(self, request: Request) -> int:
        identity = self.api.identify(request)
        audit = Audit(identity, "unknown_path", None)
        request.notifyFinish().addBoth(audit.finished, request)
        path = (request.path or b"").decode("utf-8", "replace")
        send_error(request, ApiError(404, "not_found", f"no such path: {path}"))
        return NOT_DONE_YET


class Directory(Resource):
    """An inner node of the tree (``/``, ``/v1``): only its children answer."""

    def __init__(self, api: Api) -> None:
        super().__init__()
        self.api = api

    def getChild(self, path: bytes, request: IRequest) -> Resource:
        return NotFoundEndpoint(self.api)

    def render(self, request: Request) -> int:
        return NotFoundEndpoint(self.api).render(request)


@implementer(IPushProducer)
class FollowStream:
    """
    Stream a job's output from an offset until the job ends; or, given an
    ``end``, the rest of a long-poll answer: the bytes up to ``end``, which
    are all there already, after the handler has set the headers.

    Bytes go from the file to the connection chunk by chunk. When the client
    reads slowly, the transport pauses us and we stop reading the file; we
    wait on the OutputLog when we have caught up with the writer. Nothing is
    buffered here beyond one chunk.
    """

    log = Logger()

    def __init__(
        self,
        request: Request,
        log: OutputLog,
        stream: Stream,
        offset: int,
        registry: set[FollowStream] | None = None,
        end: int | None = None,
    ) -> None:
        self._request = request
        self._log = log
        self._stream = stream
        self.offset = offset
        self._registry = registry if registry is not None else set()
        self._end = end
        self.paused = False
        self._waiting: Deferred[None] | None = None
        self._done = False

    def start(self) -> Any:
        request = self._request
        if self._end is None:
            request.setResponseCode(200)
            request.setHeader(b"Content-Type", OCTETS)
            request.setHeader(b"Jobworker-Offset", str(self.offset).encode())
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(self._client_gone)
        self._registry.add(self)
        self._pump()
        return NOT_DONE_YET

    def _pump(self) -> None:
        while not self.paused and not self._done:
            want = FOLLOW_CHUNK
            if self._end is not None:
                want = min(want, self._end - self.offset)
                if want <= 0:
                    self._finish()
                    return
            try:
                chunk = self._log.read(self._stream, self.offset, want)
            except OSError as e:  # the files went away: the job was purged
                self._abort(e)
                return
            if chunk.data:
                self.offset = chunk.next_offset
                self._request.write(chunk.data)
                continue
            if self._end is not None:
                self._abort(None)  # fewer bytes than the answer promised
                return
            if chunk.complete:
                self._finish()
                return
            self._waiting = self._log.wait(self._stream, self.offset)
            self._waiting.addCallbacks(self._woken, lambda f: f.trap(CancelledError))
            return

    def _woken(self, _: None) -> None:
        self._waiting = None
        self._pump()

    def _finish(self) -> None:
        self._done = True
        self._registry.discard(self)
        self._request.unregisterProducer()
        self._request.finish()

    def _abort(self, error: OSError | None) -> None:
        """The body cannot be completed: cut the connection, so it shows."""
        self.log.warn(
            "output of {path} cut short at offset {offset}: {error}",
            path=self._log.directory.name,
            offset=self.offset,
            error=error or "bytes missing",
        )
        self._done = True
        self._registry.discard(self)
        self._request.unregisterProducer()
        self._request.loseConnection()

    def _client_gone(self, reason: Failure) -> None:
        self._done = True
        self._registry.discard(self)
        if self._waiting is not None:
            self._waiting.cancel()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if self.paused and not self._done:
            self.paused = False
            if self._waiting is None:
                self._pump()

    def stopProducing(self) -> None:
        self._client_gone(Failure(CancelledError()))


class Query:
    """Strictly parsed query arguments: unknown or repeated names are refused."""

    def __init__(self, request: Request, allowed: set[str]) -> None:
        self._values: dict[str, str] = {}
        for raw_name, values in (request.args or {}).items():
            name = raw_name.decode("utf-8", "replace")
            if name not in allowed:
                raise ApiError(
                    400, "invalid_request", f"{name}: unknown query parameter"
                )
            if len(values) != 1:
                raise ApiError(400, "invalid_request", f"{name}: give it once")
            try:
                self._values[name] = values[0].decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, "invalid_request", f"{name}: not UTF-8") from None

    def text(self, name: str) -> str | None:
        return self._values.get(name)

    def integer(
        self, name: str, default: int, minimum: int = 0, maximum: int | None = None
    ) -> int:
        raw = self._values.get(name)
        if raw is None:
            return default
        if not (raw.isascii() and raw.isdigit()):
            raise ApiError(400, "invalid_request", f"{name}: must be a whole number")
        value = int(raw)
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum}" + (
                f" to {maximum}" if maximum is not None else ""
            )
            raise ApiError(400, "invalid_request", f"{name}: must be {bounds}")
        return value

    def number(self, name: str, default: float, maximum: float) -> float:
        raw = self._values.get(name)
        if raw is None:
            return default
        if not DECIMAL.match(raw):
            raise ApiError(400, "invalid_request", f"{name}: must be a number")
        value = float(raw)
        if not 0 <= value <= maximum:
            raise ApiError(
                400, "invalid_request", f"{name}: must be from 0 to {maximum:g}"
            )
        return value

    def boolean(self, name: str) -> bool:
        raw = self._values.get(name, "false")
        if raw not in ("true", "false"):
            raise ApiError(400, "invalid_request", f"{name}: must be true or false")
        return raw == "true"

    def stream(self) -> Stream:
        raw = self._values.get("stream", "combined")
        try:
            return Stream(raw)
        except ValueError:
            raise ApiError(
                400, "invalid_request", "stream: must be stdout, stderr or combined"
            ) from None

    def statuses(self) -> set[JobStatus] | None:
        raw = self._values.get("status")
        if raw is None:
            return None
        try:
            return {JobStatus(s) for s in raw.split(",")}
        except ValueError:
            names = ", ".join(s.value for s in JobStatus)
            raise ApiError(
                400, "invalid_request", f"status: must be one of {names}"
            ) from None


def read_json(request: Request, empty_ok: bool = False) -> Any:
    """The request body as JSON; 400 if it is not."""
    if too_large(request):
        raise ApiError(413, "body_too_large", "the request body is too large")
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
        raise ApiError(400, "invalid_json", "body: not UTF-8") from None
    except ValueError as e:
        raise ApiError(400, "invalid_json", f"body: not valid JSON: {e}") from None
    except RecursionError:
        # The parser recurses per level: [[[[...]]]] deep enough exhausts it.
        raise ApiError(400, "invalid_json", "body: nested too deeply") from None


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
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "body: must be a JSON object")
    for key in body:
        if key != "grace":
            raise ApiError(400, "invalid_request", f"{key}: unknown field")
    grace = body.get("grace")
    if grace is None:
        return None
    if (
        isinstance(grace, bool)
        or not isinstance(grace, int | float)
        or not 0 <= grace <= 3600
    ):
        raise ApiError(
            400, "invalid_request", "grace: must be a number of seconds from 0 to 3600"
        )
    return float(grace)


def within_ceilings(
    role: Role, spec: JobSpec, defaults: Limits | None = None
) -> JobSpec:
    """
    The spec with the role's ceilings applied: a limit above one is refused
    (403, naming the limit); a limit left out gets the server's default, but
    never more than the ceiling, or the ceiling where there is no default.
    """
    limits = spec.limits
    effective = check_ceilings(
        role,
        cpu=limits.cpu,
        memory=limits.memory,
        pids=limits.pids,
        io=limits.io.to_json(),
        network=spec.isolation.network,
        defaults=defaults,
    )
    return dataclasses.replace(
        spec,
        limits=Limits(
            cpu=effective.cpu,
            memory=effective.memory,
            pids=effective.pids,
            io=IOLimits(**effective.io),
        ),
    )


def send_json(request: Request, status: int, body: Any) -> None:
    if client_gone(request):
        return
    data = b"" if status == 204 else json.dumps(body).encode() + b"\n"
    request.setResponseCode(status)
    if data:
        request.setHeader(b"Content-Type", JSON)
    request.setHeader(b"Content-Length", str(len(data)).encode())
    request.write(data)
    request.finish()


def send_error(request: Request, error: ApiError) -> None:
    if client_gone(request):
        return
    if request.finished or request.startedWriting:
        request.loseConnection()
        return
    for name, value in error.headers.items():
        request.setHeader(name.encode(), value.encode())
    send_json(
        request, error.status, {"error": {"code": error.code, "message": error.message}}
    )


def audit_of(request: Request) -> Audit | None:
    return request.audit if isinstance(request, ApiRequest) else None


def decided(request: Request, allowed: bool) -> None:
    """Record the policy's answer in the request's audit line."""
    audit = audit_of(request)
    if audit is not None:
        audit.allowed = allowed


def too_large(request: Request) -> bool:
    return isinstance(request, ApiRequest) and request.body_too_large


def client_gone(request: Request) -> bool:
    return isinstance(request, ApiRequest) and request.client_gone


class ApiRequest(Request):
    """
    A request that refuses to store a body over ``max_body`` bytes (the
    handler that reads it answers 413), and knows when its client left.
    """

    max_body = MiB
    body_too_large = False
    client_gone = False
    audit: Audit | None = None
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.body_too_large = True
            length = 0  # keep it in memory: nothing of it will be stored
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.max_body:
            self.body_too_large = True
        if not self.body_too_large:
            super().handleContentChunk(data)

    def connectionLost(self, reason: Failure) -> None:
        self.client_gone = True
        super().connectionLost(reason)


def request_factory(max_body: int) -> type[Request]:
    return type("ApiRequest", (ApiRequest,), {"max_body": max_body})
