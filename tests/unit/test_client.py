"""
The client library: each call's request and the mapping of its answer, every
error, follow's resumption, and wait. In memory, against a fake resource tree
(StubTreq) and a fake clock; tests/integration/test_client_tls.py speaks real
TLS to a real port.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pytest
from OpenSSL import SSL
from service_identity import VerificationError
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import error as net
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from jobworker.client import (
    RETRY_DELAYS,
    AccessDenied,
    BadRequest,
    CertificateRejected,
    Conflict,
    ConnectionFailed,
    ErrorResponse,
    JobRecord,
    JobworkerClient,
    NotFound,
    ServerBusy,
    ServerNotTrusted,
    Unavailable,
    connection_error,
)
from jobworker.wire import OutputChunk

T = TypeVar("T")
BASE = "https://jobworker.test"
JOB_ID = "8f0c1e0e2b7a4c55b0b1d6a1c3e9f7aa"


def record(**changes: Any) -> dict[str, Any]:
    """A job record as the server sends it."""
    job: dict[str, Any] = {
        "id": JOB_ID,
        "owner": "alice",
        "command": "/bin/echo",
        "args": ["hi"],
        "env": {},
        "cwd": None,
        "timeout": None,
        "status": "running",
        "exit_code": None,
        "signal": None,
        "oom_killed": False,
        "error": None,
        "created_at": "2026-11-22T10:00:00.123Z",
        "started_at": "2026-11-22T10:00:00.125Z",
        "ended_at": None,
        "limits": {"cpu": None, "memory": None, "pids": None, "io": {}},
        "isolation": {"network": "none"},
        "run_as": "nobody",
        "usage": None,
        "output_bytes": {"stdout": 0, "stderr": 0},
    }
    job.update(changes)
    return job


@dataclass(frozen=True)
class Seen:
    """One request the fake server received."""

    method: str
    path: str
    query: dict[str, str]
    body: bytes


Handler = Callable[[Request], bytes | int]
Answer = Callable[[Request], bytes]


class FakeServer(Resource):
    """
    Answers each (method, path) with its handler and records every request.
    A handler either answers at once or keeps the request (``held``) for the
    test to write to and finish.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []
        self.routes: dict[tuple[str, str], Handler] = {}
        self.held: list[Request] = []

    def render(self, request: Request) -> bytes | int:
        assert request.method is not None and request.path is not None
        assert request.content is not None
        query = {k.decode(): v[0].decode() for k, v in (request.args or {}).items()}
        seen = Seen(
            request.method.decode(),
            request.path.decode(),
            query,
            request.content.read(),
        )
        self.seen.append(seen)
        handler = self.routes.get((seen.method, seen.path))
        if handler is None:
            return answer(404, {"error": {"code": "not_found", "message": "nope"}})(
                request
            )
        return handler(request)

    def hold(self, request: Request) -> int:
        """Start a 200 octet-stream answer and keep the request open."""
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        self.held.append(request)
        return NOT_DONE_YET


def answer(
    status: int, body: Any = None, headers: dict[str, str] | None = None
) -> Answer:
    """A handler answering ``status`` with ``body`` (JSON unless bytes)."""

    def handle(request: Request) -> bytes:
        request.setResponseCode(status)
        for name, value in (headers or {}).items():
            request.setHeader(name.encode(), value.encode())
        if isinstance(body, bytes):
            return body
        if body is None:
            return b""
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(body).encode()

    return handle


def chunk_answer(data: bytes, offset: int, complete: bool) -> Answer:
    return answer(
        200,
        data,
        {
            "Jobworker-Offset": str(offset),
            "Jobworker-Next-Offset": str(offset + len(data)),
            "Jobworker-Complete": "true" if complete else "false",
        },
    )


class FakeOutput:
    """A job's output for plain reads: ``data`` so far; ``complete`` at the end."""

    def __init__(self) -> None:
        self.data = b""
        self.complete = False

    def read(self, request: Request) -> bytes:
        args = request.args or {}
        offset = int(args.get(b"offset", [b"0"])[0])
        data = self.data[offset:]
        done = self.complete
        return chunk_answer(data, offset, done)(request)


class ClientTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = FakeServer()
        self.stub = StubTreq(self.server)
        self.clock = Clock()
        # StubTreq offers HTTPClient's methods over an in-memory connection.
        http = cast(HTTPClient, self.stub)
        self.client = JobworkerClient(BASE, http, self.clock)

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.server.routes[(method, path)] = handler

    def call(self, coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
        return Deferred.fromCoroutine(coroutine)

    def result(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.successResultOf(self.call(coroutine))

    def error(self, coroutine: Coroutine[Any, Any, Any], kind: type[T]) -> T:
        failure = self.failureResultOf(self.call(coroutine), cast(Any, kind))
        return cast(T, failure.value)


class RequestTests(ClientTestCase):
    def test_start_posts_the_spec_and_reads_the_record(self) -> None:
        """start() POSTs the spec as JSON and returns a typed record."""
        self.route("POST", "/v1/jobs", answer(201, record()))
        spec = {"command": "/bin/echo", "args": ["hi"], "limits": {"cpu": 0.5}}
        job = self.result(self.client.start(spec))
        [seen] = self.server.seen
        assert (seen.method, seen.path, seen.query) == ("POST", "/v1/jobs", {})
        assert json.loads(seen.body) == spec
        assert (job.id, job.owner, job.status, job.argv) == (
            JOB_ID,
            "alice",
            "running",
            ("/bin/echo", "hi"),
        )
        assert not job.ended
        assert job.raw["run_as"] == "nobody"

    def test_record_fields_are_typed(self) -> None:
        """An ended record's exit, signal, usage and sizes become typed fields."""
        self.route(
            "GET",
            f"/v1/jobs/{JOB_ID}",
            answer(
                200,
                record(
                    status="exited",
                    signal=9,
                    oom_killed=True,
                    usage={
                        "cpu_seconds": 0.5,
                        "memory_peak": 1024,
                        "io_read_bytes": 1,
                        "io_write_bytes": 2,
                    },
                    output_bytes={"stdout": 3, "stderr": 4},
                ),
            ),
        )
        job = self.result(self.client.status(JOB_ID))
        assert job.ended
        assert (job.exit_code, job.signal, job.oom_killed) == (None, 9, True)
        assert job.usage is not None and job.usage.memory_peak == 1024
        assert (job.stdout_bytes, job.stderr_bytes) == (3, 4)

    def test_stop_sends_the_grace_period(self) -> None:
        """stop() POSTs {"grace": N} to .../stop, or no body without a grace."""
        self.route("POST", f"/v1/jobs/{JOB_ID}/stop", answer(202, record()))
        self.result(self.client.stop(JOB_ID, grace=2))
        self.result(self.client.stop(JOB_ID))
        first, second = self.server.seen
        assert json.loads(first.body) == {"grace": 2}
        assert second.body == b""

    def test_list_passes_filters_as_query(self) -> None:
        """list() sends status and owner only when given, and reads the jobs."""
        self.route("GET", "/v1/jobs", answer(200, {"jobs": [record(), record()]}))
        jobs = self.result(self.client.list(status="running,exited", owner="bob"))
        assert [j.id for j in jobs] == [JOB_ID, JOB_ID]
        self.result(self.client.list())
        assert [s.query for s in self.server.seen] == [
            {"status": "running,exited", "owner": "bob"},
            {},
        ]

    def test_purge_deletes(self) -> None:
        """purge() is a DELETE answered by 204 and returns nothing."""
        self.route("DELETE", f"/v1/jobs/{JOB_ID}", answer(204))
        assert self.result(self.client.purge(JOB_ID)) is None
        assert self.server.seen[0].method == "DELETE"

    def test_health(self) -> None:
        """health() reads the status and counters."""
        body = {"status": "ok", "running_jobs": 2, "followers": 1}
        self.route("GET", "/v1/healthz", answer(200, body))
        health = self.result(self.client.health())
        assert (health.status, health.running_jobs, health.followers) == ("ok", 2, 1)

    def test_read_passes_its_parameters_and_maps_the_headers(self) -> None:
        """read() sends stream/offset/wait/limit and returns an OutputChunk."""
        self.route(
            "GET", f"/v1/jobs/{JOB_ID}/output", chunk_answer(b"\x00\xffab", 10, True)
        )
        chunk = self.result(
            self.client.read(JOB_ID, "stderr", offset=10, wait=2.5, limit=4)
        )
        assert chunk == OutputChunk(b"\x00\xffab", 10, 14, True)
        assert self.server.seen[0].query == {
            "stream": "stderr",
            "offset": "10",
            "wait": "2.5",
            "limit": "4",
        }

    def test_job_id_cannot_leave_its_path_segment(self) -> None:
        """An id such as "../healthz" is quoted into one segment, not a path."""
        self.error(self.client.status("../healthz"), NotFound)
        assert self.server.seen[0].path == "/v1/jobs/..%2Fhealthz"


class ErrorTests(ClientTestCase):
    def test_each_status_maps_to_its_error(self) -> None:
        """Each error status becomes its ErrorResponse kind with code and message."""
        cases: list[tuple[int, type[ErrorResponse]]] = [
            (400, BadRequest),
            (403, AccessDenied),
            (404, NotFound),
            (409, Conflict),
            (413, BadRequest),
            (416, BadRequest),
            (429, ServerBusy),
            (503, Unavailable),
            (500, ErrorResponse),
            (405, ErrorResponse),
        ]
        for status, kind in cases:
            body = {"error": {"code": f"code_{status}", "message": f"said {status}"}}
            self.route("GET", f"/v1/jobs/{JOB_ID}", answer(status, body))
            error = self.error(self.client.status(JOB_ID), ErrorResponse)
            assert type(error) is kind, status
            assert (error.status, error.code, error.message) == (
                status,
                f"code_{status}",
                f"said {status}",
            )

    def test_error_without_json_keeps_the_status(self) -> None:
        """An error answer that is not our JSON (a proxy's page) is still typed."""
        self.route("GET", f"/v1/jobs/{JOB_ID}", answer(502, b"<html>bad gateway"))
        error = self.error(self.client.status(JOB_ID), ErrorResponse)
        assert (error.status, error.code) == (502, "http_502")

    def test_success_that_is_not_json_is_an_api_error(self) -> None:
        """A 200 whose body is not a job record is reported, not a crash."""
        self.route("GET", f"/v1/jobs/{JOB_ID}", answer(200, b"hello"))
        error = self.error(self.client.status(JOB_ID), ErrorResponse)
        assert error.code == "unexpected_response"
        self.route("GET", f"/v1/jobs/{JOB_ID}", answer(200, {"id": 1}))
        error = self.error(self.client.status(JOB_ID), ErrorResponse)
        assert error.code == "unexpected_response"

    def test_connection_failures_are_translated(self) -> None:
        """A refused connection reaches the caller as ConnectionFailed."""
        client = JobworkerClient(BASE, cast(HTTPClient, RefusingHTTP()), self.clock)
        error = self.error(client.status(JOB_ID), ConnectionFailed)
        assert "refused" in str(error)

    def test_other_exceptions_pass_through(self) -> None:
        """An error that is not about the connection is not disguised as one."""
        client = JobworkerClient(
            BASE, cast(HTTPClient, RefusingHTTP(KeyError("x"))), self.clock
        )
        self.error(client.status(JOB_ID), KeyError)


class RefusingHTTP:
    """An HTTP client whose every request fails with ``error``."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error or net.ConnectionRefusedError()
        self.requests = 0

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        self.requests += 1
        return fail(self.error)


def ssl_error(*reasons: str) -> ResponseNeverReceived:
    """What Twisted raises when a handshake ends with OpenSSL ``reasons``."""
    details = [("SSL routines", "", reason) for reason in reasons]
    return ResponseNeverReceived([Failure(SSL.Error(details))])


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (net.ConnectionRefusedError(), ConnectionFailed),
        (net.DNSLookupError("nowhere.test"), ConnectionFailed),
        (net.TCPTimedOutError(), ConnectionFailed),
        (net.NoRouteError(), ConnectionFailed),
        (net.TimeoutError(), ConnectionFailed),
        (ResponseNeverReceived([Failure(net.ConnectionDone())]), ConnectionFailed),
        (ResponseFailed([Failure(net.ConnectionLost())]), ConnectionFailed),
        (ssl_error("certificate verify failed"), ServerNotTrusted),
        (
            ResponseNeverReceived([Failure(VerificationError(errors=[]))]),
            ServerNotTrusted,
        ),
        (ssl_error("tlsv13 alert certificate required"), CertificateRejected),
        (ssl_error("tlsv1 alert unknown ca"), CertificateRejected),
        (ssl_error("sslv3 alert certificate expired"), CertificateRejected),
        (ssl_error("tlsv1 alert unsupported certificate"), CertificateRejected),
        (ssl_error("tlsv1 alert protocol version"), ConnectionFailed),
        (ssl_error("wrong version number"), ConnectionFailed),
    ],
)
def test_connection_error_mapping(error: Exception, kind: type[Exception]) -> None:
    """Each transport-level failure maps to the one error a user can act on."""
    assert type(connection_error(error)) is kind


def test_connection_error_leaves_others_alone() -> None:
    """Exceptions that are not about the connection are not translated."""
    assert connection_error(ValueError("x")) is None
    assert connection_error(CancelledError()) is None
    cancelled = ResponseNeverReceived([Failure(CancelledError())])
    assert connection_error(cancelled) is None


class FollowTests(ClientTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.output = FakeOutput()
        self.written: list[bytes] = []
        self.route("GET", f"/v1/jobs/{JOB_ID}/output", self.output_handler)

    def output_handler(self, request: Request) -> bytes | int:
        if (request.args or {}).get(b"follow") == [b"true"]:
            return self.server.hold(request)
        return self.output.read(request)

    def follow(self, offset: int = 0) -> Deferred[int]:
        return self.call(self.client.follow(JOB_ID, self.written.append, offset=offset))

    def send(self, data: bytes, stream: int = -1) -> None:
        """The server writes ``data`` on the latest (or given) follow stream."""
        self.output.data += data
        self.server.held[stream].write(data)
        self.stub.flush()

    def end(self) -> None:
        """The job ends: the stream finishes and reads say complete."""
        self.output.complete = True
        self.server.held[-1].finish()
        self.stub.flush()

    def drop(self) -> None:
        """The server's connection of the latest follow stream breaks."""
        request = self.server.held[-1]
        assert request.channel is not None
        transport = request.channel.transport
        assert transport is not None
        transport.loseConnection()
        self.stub.flush()

    def follow_offsets(self) -> list[int]:
        return [
            int(s.query["offset"])
            for s in self.server.seen
            if s.query.get("follow") == "true"
        ]

    def test_bytes_are_delivered_as_they_arrive(self) -> None:
        """Each chunk reaches write() while the stream is still open."""
        done = self.follow()
        self.stub.flush()
        assert self.server.seen[0].query == {
            "stream": "combined",
            "offset": "0",
            "follow": "true",
        }
        self.send(b"one ")
        assert self.written == [b"one "]
        self.send(b"two")
        assert self.written == [b"one ", b"two"]
        self.assertNoResult(done)
        self.end()
        assert self.successResultOf(done) == 7

    def test_resumes_after_a_dropped_connection_without_loss_or_repeat(
        self,
    ) -> None:
        """A broken stream is followed again from the next undelivered byte."""
        done = self.follow(offset=2)
        self.stub.flush()
        self.output.data = b"xx"
        self.send(bytes(range(128)))
        self.drop()
        self.stub.flush()
        assert self.follow_offsets() == [2, 130]
        self.send(bytes(range(128, 256)))
        self.end()
        assert self.successResultOf(done) == 258
        assert b"".join(self.written) == bytes(range(256))
        assert self.clock.getDelayedCalls() == []

    def test_resumes_repeatedly(self) -> None:
        """Several drops in a row still give every byte exactly once."""
        done = self.follow()
        self.stub.flush()
        for i in range(5):
            self.send(bytes([i]) * 3)
            self.drop()
            self.stub.flush()
        self.end()
        assert self.successResultOf(done) == 15
        assert b"".join(self.written) == b"".join(bytes([i]) * 3 for i in range(5))
        assert self.follow_offsets() == [0, 3, 6, 9, 12, 15]

    def test_early_clean_end_while_running_continues(self) -> None:
        """A stream that ends cleanly before the job did is picked up again."""
        done = self.follow()
        self.stub.flush()
        self.send(b"abc")
        self.output.data += b"de"  # written after the stream ended
        self.server.held[-1].finish()
        self.stub.flush()
        assert self.written == [b"abc", b"de"]
        self.stub.flush()
        assert self.follow_offsets() == [0, 5]
        self.send(b"f")
        self.end()
        assert self.successResultOf(done) == 6
        assert b"".join(self.written) == b"abcdef"

    def test_retries_with_backoff_then_gives_up(self) -> None:
        """Drops without progress wait RETRY_DELAYS on the clock, then raise."""
        done = self.follow()
        self.stub.flush()
        self.send(b"a")
        self.drop()
        self.stub.flush()
        assert self.follow_offsets() == [0, 1], "progress: reconnect at once"
        for delay in RETRY_DELAYS:
            self.drop()
            self.assertNoResult(done)
            attempts = len(self.server.seen)
            self.clock.advance(delay - 0.01)
            self.stub.flush()
            assert len(self.server.seen) == attempts, "retried too early"
            self.clock.advance(0.01)
            self.stub.flush()
            assert len(self.server.seen) == attempts + 1
        self.drop()
        self.failureResultOf(done, ConnectionFailed)
        assert self.follow_offsets()[1:] == [1] * (len(RETRY_DELAYS) + 1)
        assert self.written == [b"a"]

    def test_first_request_is_not_retried(self) -> None:
        """A server that cannot be reached at all is reported at once."""
        http = RefusingHTTP()
        client = JobworkerClient(BASE, cast(HTTPClient, http), self.clock)
        self.failureResultOf(
            self.call(client.follow(JOB_ID, self.written.append)), ConnectionFailed
        )
        assert http.requests == 1

    def test_api_error_is_not_retried(self) -> None:
        """An error answer (here 404) ends follow at once."""
        self.route(
            "GET",
            f"/v1/jobs/{JOB_ID}/output",
            answer(404, {"error": {"code": "not_found", "message": "no job"}}),
        )
        error = self.failureResultOf(self.follow(), NotFound).value
        assert str(error) == "no job"
        assert len(self.server.seen) == 1

    def test_write_error_ends_follow(self) -> None:
        """If write() raises (say, a closed pipe) follow raises it, no retry."""

        def broken(data: bytes) -> None:
            raise BrokenPipeError()

        done = self.call(self.client.follow(JOB_ID, broken))
        self.stub.flush()
        self.send(b"x")
        self.failureResultOf(done, BrokenPipeError)
        assert len(self.server.seen) == 1

    def test_cancel_stops_delivery(self) -> None:
        """Once follow is cancelled, nothing more is written."""
        done = self.follow()
        self.stub.flush()
        self.send(b"a")
        done.cancel()
        self.failureResultOf(done, CancelledError)
        self.send(b"b")
        assert self.written == [b"a"]


class WaitTests(ClientTestCase):
    def test_wait_long_polls_from_the_end_then_fetches_the_record(self) -> None:
        """wait() skips existing output, long-polls until complete, no timers."""
        records = [
            record(output_bytes={"stdout": 5, "stderr": 2}),
            record(status="exited", exit_code=3),
        ]
        self.route(
            "GET",
            f"/v1/jobs/{JOB_ID}",
            lambda request: answer(200, records.pop(0))(request),
        )
        self.route("GET", f"/v1/jobs/{JOB_ID}/output", self.server.hold)
        done = self.call(self.client.wait(JOB_ID))
        self.stub.flush()
        [poll] = [s for s in self.server.seen if s.path.endswith("/output")]
        assert poll.query == {"stream": "combined", "offset": "7", "wait": "30"}
        self.assertNoResult(done)
        assert self.clock.getDelayedCalls() == []
        held = self.server.held[0]
        for name, value in [
            ("Offset", b"7"),
            ("Next-Offset", b"9"),
            ("Complete", b"true"),
        ]:
            held.setHeader(b"Jobworker-" + name.encode(), value)
        held.write(b"zz")
        held.finish()
        self.stub.flush()
        job = self.successResultOf(done)
        assert (job.status, job.exit_code) == ("exited", 3)

    def test_wait_polls_again_after_an_empty_answer(self) -> None:
        """A long-poll that timed out with nothing new is simply asked again."""
        records = [record(), record(status="stopped", signal=15)]
        self.route(
            "GET",
            f"/v1/jobs/{JOB_ID}",
            lambda request: answer(200, records.pop(0))(request),
        )
        answers = [chunk_answer(b"", 0, False), chunk_answer(b"", 0, True)]
        self.route(
            "GET",
            f"/v1/jobs/{JOB_ID}/output",
            lambda request: answers.pop(0)(request),
        )
        job = self.result(self.client.wait(JOB_ID))
        assert (job.status, job.signal) == ("stopped", 15)
        assert answers == []

    def test_cancelled_wait_raises_cancelled_error(self) -> None:
        """Cancelling wait() mid long-poll is a CancelledError, not a failure."""
        self.route("GET", f"/v1/jobs/{JOB_ID}", answer(200, record()))
        self.route("GET", f"/v1/jobs/{JOB_ID}/output", self.server.hold)
        done = self.call(self.client.wait(JOB_ID))
        self.stub.flush()
        self.assertNoResult(done)
        done.cancel()
        self.failureResultOf(done, CancelledError)

    def test_wait_on_an_ended_job_answers_at_once(self) -> None:
        """An ended job's record comes back without reading output."""
        self.route("GET", f"/v1/jobs/{JOB_ID}", answer(200, record(status="lost")))
        job = self.result(self.client.wait(JOB_ID))
        assert job.status == "lost"
        assert len(self.server.seen) == 1


def test_record_from_json_rejects_other_shapes() -> None:
    """A body that is not a record raises ErrorResponse, not KeyError."""
    with pytest.raises(ErrorResponse):
        JobRecord.from_json({"jobs": []})
