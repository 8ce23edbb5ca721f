"""
Fakes for driving the HTTP API in memory: the job library as the routes see
it (``jobworker.http.library.JobService``) with records in memory and output
from bytes, an identity a request names in a header, HTTP/1.1 to a real site
over in-memory connections, its time on a ``Clock``, and the audit lines it
logs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Site
from zope.interface import implementer

from jobworker.auth.policy import Identity, Policy
from jobworker.http.settings import ApiSettings
from jobworker.http.site import Api
from jobworker.jobs.errors import JobConflict, JobNotFound
from jobworker.jobs.output import OffsetOutOfRange, OutputSpan
from jobworker.jobs.record import Job
from jobworker.jobs.sandbox import JobSandbox
from jobworker.jobs.spec import JobSpec, Limits
from jobworker.wire import JobStatus, OutputChunk, Stream

MiB = 1 << 20
IDENTITY_HEADER = b"X-Test-Identity"
# alice operates her own jobs, within ceilings; bob reads everyone's;
# mallory has a certificate but no role.
POLICY = """
[roles.operator]
grants = { start = "own", stop = "own", read = "own", purge = "own" }
run_as = "worker"
ceilings = { memory = "1G", pids = 100, io = { read_bps = "10M" } }

[roles.auditor]
grants = { read = "all" }

[identities]
alice = "operator"
bob = "auditor"
"""


def identity_from_header(request: IRequest) -> Identity | None:
    """Who a test says a request is from (``X-Test-Identity``); no header, nobody."""
    name = request.getHeader(IDENTITY_HEADER)
    return None if name is None else Identity(name.decode())


class FakeOutput:
    """A job's output in memory: the bytes of each stream, and waiters."""

    def __init__(self) -> None:
        self._data = {stream: bytearray() for stream in Stream}
        self._closed = False
        self._waiters: list[tuple[Stream, int, Deferred[None]]] = []
        # Reads fail as they do once a job's files are gone.
        self.gone = False

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, stream: Stream, data: bytes) -> None:
        """Append to stdout or stderr (and so to combined); wake readers."""
        self._data[stream] += data
        self._data[Stream.COMBINED] += data
        self._wake()

    def close(self) -> None:
        """The job ended: no more bytes; every waiter is woken."""
        self._closed = True
        self._wake()

    def size(self, stream: Stream) -> int:
        return len(self._data[stream])

    def sizes(self) -> dict[str, int]:
        return {s.value: self.size(s) for s in (Stream.STDOUT, Stream.STDERR)}

    def read(self, stream: Stream, offset: int, limit: int) -> OutputChunk:
        if self.gone:
            raise FileNotFoundError(f"{stream.value}: gone")
        size = self.size(stream)
        if offset > size and self._closed:
            raise OffsetOutOfRange(stream, offset, size)
        data = bytes(self._data[stream][offset : offset + max(limit, 0)])
        end = offset + len(data)
        return OutputChunk(data, offset, end, self._closed and end >= size)

    def span(self, stream: Stream, offset: int, limit: int) -> OutputSpan:
        size = self.size(stream)
        if offset > size and self._closed:
            raise OffsetOutOfRange(stream, offset, size)
        end = max(offset, min(size, offset + max(limit, 0)))
        return OutputSpan(offset, end, complete=self._closed and end >= size)

    def wait(self, stream: Stream, offset: int) -> Deferred[None]:
        if self._closed or self.size(stream) > offset:
            return succeed(None)

        def forget(waiter: Deferred[None]) -> None:
            self._waiters[:] = [w for w in self._waiters if w[2] is not waiter]

        waiter: Deferred[None] = Deferred(forget)
        self._waiters.append((stream, offset, waiter))
        return waiter

    def waiter_count(self) -> int:
        return len(self._waiters)

    def _wake(self) -> None:
        ready = [
            w
            for (stream, offset, w) in self._waiters
            if self._closed or self.size(stream) > offset
        ]
        self._waiters[:] = [w for w in self._waiters if w[2] not in ready]
        for waiter in ready:
            waiter.callback(None)


@dataclass(frozen=True)
class Started:
    """What a start was asked: the spec, for whom, as whom, within what."""

    spec: JobSpec
    owner: str
    run_as: str | None
    ceiling: Limits | None
    sandbox: JobSandbox | None = None


@dataclass
class FakeJobService:
    """
    The job library in memory. ``add`` puts a job there; ``fail`` makes a
    method raise; ``broken`` makes every method raise what a bug would.
    """

    clock: Clock = field(default_factory=Clock)
    jobs: dict[str, Job] = field(default_factory=dict)
    outputs: dict[str, FakeOutput] = field(default_factory=dict)
    started: list[Started] = field(default_factory=list)
    stopped: list[tuple[str, float | None]] = field(default_factory=list)
    failures: dict[str, Exception] = field(default_factory=dict)
    broken: bool = False
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def add(
        self,
        owner: str = "alice",
        status: JobStatus = JobStatus.RUNNING,
        output: bytes = b"",
        job_id: str | None = None,
        command: str = "/bin/echo",
    ) -> Job:
        """A job of ``owner`` with ``output`` on stdout (closed once it ended)."""
        job = Job(
            id=job_id or f"{next(self._ids):032x}",
            owner=owner,
            spec=JobSpec(command),
            status=status,
            created_at="2026-11-22T10:00:00.123Z",
            run_as="nobody",
            started_at="2026-11-22T10:00:00.125Z",
            ended_at="2026-11-22T10:00:01.000Z" if status.ended else None,
            exit_code=0 if status is JobStatus.EXITED else None,
        )
        self.jobs[job.id] = job
        log = self.outputs[job.id] = FakeOutput()
        if output:
            log.write(Stream.STDOUT, output)
        if status.ended:
            log.close()
        return job

    def fail(self, method: str, error: Exception) -> None:
        """Make ``method`` raise ``error`` from now on."""
        self.failures[method] = error

    def _called(self, method: str) -> None:
        if self.broken:
            raise RuntimeError(f"{method} is broken")
        if method in self.failures:
            raise self.failures[method]

    # jobworker.http.library.JobService

    async def start(
        self,
        spec: JobSpec,
        owner: str,
        run_as: str | None = None,
        ceiling: Limits | None = None,
        sandbox: JobSandbox | None = None,
    ) -> Job:
        self._called("start")
        self.started.append(Started(spec, owner, run_as, ceiling, sandbox))
        job = self.add(owner, command=spec.command)
        job = job.evolve(spec=spec, run_as=run_as)
        self.jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job:
        self._called("get")
        if job_id not in self.jobs:
            raise JobNotFound(job_id)
        return self.jobs[job_id]

    def list(
        self, owner: str | None = None, statuses: set[JobStatus] | None = None
    ) -> list[Job]:
        self._called("list")
        return [
            job
            for job in self.jobs.values()
            if (owner is None or job.owner == owner)
            and (statuses is None or job.status in statuses)
        ]

    def describe(self, job: Job) -> dict[str, object]:
        self._called("describe")
        return job.to_json(self.outputs[job.id].sizes())

    def stop(self, job_id: str, grace: float | None = None) -> Job:
        self._called("stop")
        job = self.get(job_id)
        if job.status.ended:
            raise JobConflict(f"job {job_id} has already ended ({job.status.value})")
        self.stopped.append((job_id, grace))
        job = self.jobs[job_id] = job.evolve(status=JobStatus.STOPPING)
        return job

    def purge(self, job_id: str) -> None:
        self._called("purge")
        job = self.get(job_id)
        if not job.status.ended:
            raise JobConflict(f"job {job_id} is {job.status.value}: stop it first")
        del self.jobs[job_id], self.outputs[job_id]

    def output_log(self, job_id: str) -> FakeOutput:
        self._called("output_log")
        self.get(job_id)
        return self.outputs[job_id]

    async def read_output(
        self,
        job_id: str,
        stream: Stream = Stream.COMBINED,
        offset: int = 0,
        limit: int = MiB,
        wait: float = 0,
    ) -> OutputChunk:
        self._called("read_output")
        output = self.output_log(job_id)
        chunk = output.read(stream, offset, limit)
        if chunk.data or chunk.complete or wait <= 0:
            return chunk
        # A wait that is over is no error: the answer is what there is.
        with contextlib.suppress(defer.TimeoutError):
            await output.wait(stream, offset).addTimeout(wait, self.clock)
        return output.read(stream, offset, limit)

    def running_count(self) -> int:
        self._called("running_count")
        return sum(not job.status.ended for job in self.jobs.values())


@dataclass
class Response:
    """An HTTP response as a client read it."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        return str(self.json()["error"]["code"])


class Exchange:
    """One request on its own in-memory connection, and what came back."""

    def __init__(self, site: Site, data: bytes) -> None:
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert protocol is not None
        self.protocol = protocol
        self.transport = StringTransport()
        protocol.makeConnection(self.transport)
        protocol.dataReceived(data)

    @property
    def answered(self) -> bool:
        """The server has answered in full, and closed the connection."""
        return bool(self.transport.disconnecting)

    def response(self) -> Response:
        """What the server has sent so far, parsed."""
        return parse_response(self.transport.value())

    def disconnect(self) -> None:
        """The client goes away."""
        self.protocol.connectionLost(Failure(ConnectionDone("client gone")))


class MemoryClient:
    """HTTP/1.1 to ``site`` in memory; the site's deadlines run on ``clock``."""

    def __init__(self, site: Site, clock: Clock) -> None:
        site.reactor = clock
        self.site = site

    def send(
        self,
        method: str,
        target: str,
        body: bytes | Any = b"",
        identity: str | None = "alice",
        headers: Mapping[str, str] | None = None,
    ) -> Exchange:
        """Send one request (a body that is not bytes as JSON), as ``identity``."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        lines = [f"{method} {target} HTTP/1.1", "Host: jobworker"]
        lines += [f"Content-Length: {len(data)}", "Connection: close"]
        if identity is not None:
            lines.append(f"{IDENTITY_HEADER.decode()}: {identity}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        head = "\r\n".join(lines) + "\r\n\r\n"
        return Exchange(self.site, head.encode() + data)

    def request(
        self, method: str, target: str, body: bytes | Any = b"", **kw: Any
    ) -> Response:
        """Send one request and read its answer, which must be complete."""
        exchange = self.send(method, target, body, **kw)
        assert exchange.answered, exchange.transport.value()
        return exchange.response()


def parse_response(raw: bytes) -> Response:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(rest)
    else:
        body = rest[: int(headers.get("content-length", len(rest)))]
    return Response(int(lines[0].split(" ")[1]), headers, body)


def dechunk(data: bytes) -> bytes:
    """The body of a chunked response, as far as it has come."""
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body += data[:size]
        data = data[size + 2 :]
    return body


@dataclass
class Served:
    """A real site over fake jobs: the jobs, the API, a client, one clock."""

    jobs: FakeJobService
    api: Api
    client: MemoryClient

    @property
    def clock(self) -> Clock:
        return self.jobs.clock


def serve(
    jobs: FakeJobService | None = None,
    policy: str = POLICY,
    settings: ApiSettings | None = None,
) -> Served:
    """The API over ``jobs`` (empty ones), each request's identity its header's."""
    jobs = jobs or FakeJobService()
    api = Api(
        jobs, Policy.from_toml_text(policy), settings, identify=identity_from_header
    )
    return Served(jobs, api, MemoryClient(api.site(), jobs.clock))


AuditLine = tuple[str | None, str, str | None, bool | None, int]


@contextmanager
def audit_lines() -> Iterator[list[AuditLine]]:
    """The audit lines logged meanwhile: identity, action, job, allowed, status."""
    lines: list[AuditLine] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "jobworker.audit":
            fields = ("identity", "action", "job_id", "allowed", "status")
            lines.append(tuple(event[name] for name in fields))

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)
