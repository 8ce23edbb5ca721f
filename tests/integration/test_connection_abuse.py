"""
Clients that misbehave at the connection level, against a real server over
TLS on 127.0.0.1: handshakes never finished, headers and bodies sent a byte at
a time, responses never read, oversized headers and bodies, thousands of idle
long-polls, and a server out of file descriptors. Each is cut off by its own
deadline or limit, while other clients go on being served.

The deadlines are made short here through the settings; the abusive clients
are plain blocking sockets in threads, so the reactor (and the server in it)
runs on while they stall.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer

from jobworker.auth.policy import Policy
from jobworker.http.settings import ApiSettings
from jobworker.http.site import Api
from jobworker.jobs.service import JobManager, Settings
from jobworker.tap import Options, raise_open_files_limit
from jobworker.tls import client_tls_policy, server_tls_options
from jobworker.wire import Stream
from tests.pki_fixtures import DevPKI

pytest_plugins = ["tests.pki_fixtures"]

reactor: Any = global_reactor
ROOT = Path(__file__).parents[2]
POLICY = ROOT / "examples" / "policy.toml"
TWISTD = Path(sys.executable).parent / "twistd"
IDLE_POLLS = Path(__file__).parents[1] / "helpers" / "idle_polls.py"

# Each deadline is far shorter than the idle timeout: a connection closed
# within a test's time was closed by the deadline under test, and the log
# says which.
DEADLINE = 1.5
SETTINGS = ApiSettings(
    max_body=4096,
    idle_timeout=60.0,
    handshake_timeout=DEADLINE,
    header_timeout=DEADLINE,
    body_timeout=DEADLINE,
    max_header_bytes=4096,
    max_headers=20,
)


@dataclass
class Server:
    url: str
    port: int
    manager: JobManager
    api: Api
    pki: DevPKI

    def client(self, user: str) -> HTTPClient:
        pair = self.pki.client(user)
        policy = client_tls_policy(self.pki.ca, pair.cert, pair.key)
        pool = HTTPConnectionPool(reactor, persistent=False)
        return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))

    def context(self, user: str = "alice") -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        pair = self.pki.client(user)
        context.load_cert_chain(pair.cert, pair.key)
        return context

    def tls_socket(self, user: str = "alice") -> ssl.SSLSocket:
        """A blocking TLS connection, handshake done (call it in a thread)."""
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        # A close without TLS close_notify raises, unlike an orderly close.
        return self.context(user).wrap_socket(
            raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False
        )


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[JobManager]:
    manager = JobManager(
        reactor,
        tmp_path / "data",
        Settings(max_running_jobs=3, default_grace=1, isolate=os.geteuid() == 0),
    )
    manager.open()
    yield manager
    pytest_twisted.blockon(Deferred.fromCoroutine(manager.shutdown()))


@pytest.fixture
def serve(
    dev_pki: DevPKI, manager: JobManager
) -> Iterator[Callable[[ApiSettings], Server]]:
    """Start a server with the given settings; stopped after the test."""
    ports: list[IListeningPort] = []

    def start(settings: ApiSettings) -> Server:
        api = Api(manager, Policy.from_toml(POLICY), settings)
        tls = server_tls_options(dev_pki.server.cert, dev_pki.server.key, dev_pki.ca)
        port = reactor.listenSSL(0, api.site(), tls, interface="127.0.0.1")
        ports.append(port)
        number = port.getHost().port
        return Server(f"https://127.0.0.1:{number}", number, manager, api, dev_pki)

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def server(serve: Callable[[ApiSettings], Server]) -> Server:
    return serve(SETTINGS)


@pytest.fixture
def deadlines() -> Iterator[list[str]]:
    """The deadlines the server's connections ran out of, as it logs them."""
    kinds: list[str] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "jobworker.http.channel.ApiChannel":
            if "kind" in event:
                kinds.append(event["kind"])
            elif event.get("log_format", "").startswith("Timing out client"):
                kinds.append("idle")

    globalLogPublisher.addObserver(observe)
    yield kinds
    globalLogPublisher.removeObserver(observe)


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def healthz(server: Server, user: str = "bob") -> int:
    """Another client's health check: its status code."""
    response = await server.client(user).get(server.url + "/v1/healthz")
    await response.content()
    return int(response.code)


def read_until_closed(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the server sends until it closes: the bytes, and how it
    ended: "eof" (an orderly close) or the exception's name (e.g. a reset)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (OSError, ssl.SSLError) as e:
        return data, type(e).__name__
    return data, "eof"


def error_response(status: int, reason: str, code: str, message: str) -> bytes:
    """The bytes of an answer the channel itself gives before any request."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body) + 1}\r\n\r\n".encode()
        + body
        + b"\n"
    )


def client_hello() -> bytes:
    """The first flight of a real TLS 1.3 client."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def while_stalled(
    server: Server, stall: Callable[[], tuple[bytes, str]]
) -> tuple[bytes, str]:
    """Run ``stall`` (a blocking client) in a thread; while it is stalled,
    another client's health check answers. Returns what ``stall`` returned."""
    stalled = deferToThread(stall)
    await sleep(0.2)
    assert await healthz(server) == 200
    assert not stalled.called, "the stalled client was cut off before the check"
    result: tuple[bytes, str] = await stalled
    return result


@pytest_twisted.ensureDeferred
async def test_handshake_never_begun_is_dropped(
    server: Server, deadlines: list[str]
) -> None:
    """A client that connects and sends nothing is reset at the handshake
    deadline, not the idle timeout; others are served meanwhile."""

    def stall() -> tuple[bytes, str]:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            return read_until_closed(s)

    assert await while_stalled(server, stall) == (b"", "ConnectionResetError")
    assert deadlines == ["handshake"]


@pytest_twisted.ensureDeferred
async def test_handshake_left_halfway_is_dropped(
    server: Server, deadlines: list[str]
) -> None:
    """A client that sends half a ClientHello and stops is reset at the
    handshake deadline; others are served meanwhile."""
    hello = client_hello()

    def stall() -> tuple[bytes, str]:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(hello[: len(hello) // 2])
            return read_until_closed(s)

    assert await while_stalled(server, stall) == (b"", "ConnectionResetError")
    assert deadlines == ["handshake"]


def dribble(sock: ssl.SSLSocket, head: bytes, byte: bytes) -> tuple[bytes, str]:
    """Send ``head``, then ``byte`` every 50 ms (never finishing) until the
    server answers or closes; then read what it sends until it closes."""
    sock.sendall(head)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.05)
        if readable or sock.pending():
            return read_until_closed(sock)
        sock.sendall(byte)
    return b"", "still open after 30 s"


@pytest_twisted.ensureDeferred
async def test_slowloris_headers_get_408(server: Server, deadlines: list[str]) -> None:
    """Headers sent a byte at a time keep the idle timeout from firing, but
    not the header deadline: 408 and close; others are served meanwhile."""

    def stall() -> tuple[bytes, str]:
        with server.tls_socket() as s:
            return dribble(s, b"GET /v1/healthz HTTP/1.1\r\nX-Slow: ", b"a")

    assert await while_stalled(server, stall) == (
        error_response(
            408,
            "Request Timeout",
            "request_timeout",
            "request header not received in time",
        ),
        "eof",
    )
    assert deadlines == ["header"]


@pytest_twisted.ensureDeferred
async def test_slow_body_gets_408(server: Server, deadlines: list[str]) -> None:
    """A body sent a byte at a time is cut off at the body deadline: 408,
    close, and no job is started."""

    def stall() -> tuple[bytes, str]:
        with server.tls_socket() as s:
            head = (
                b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                b'{"command": "true", "args": ["'
            )
            return dribble(s, head, b"a")

    assert await while_stalled(server, stall) == (
        error_response(
            408,
            "Request Timeout",
            "request_timeout",
            "request body not received in time",
        ),
        "eof",
    )
    assert deadlines == ["body"]
    assert server.manager.list() == []


@pytest_twisted.ensureDeferred
async def test_body_promised_but_never_sent_gets_408(
    server: Server, deadlines: list[str]
) -> None:
    """A Content-Length far over the limit with no body behind it is not
    waited for beyond the body deadline."""

    def stall() -> tuple[bytes, str]:
        with server.tls_socket() as s:
            s.sendall(
                b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 1000000000000000000000\r\n\r\n"
            )
            return read_until_closed(s)

    data, ending = await while_stalled(server, stall)
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert (ending, deadlines) == ("eof", ["body"])


@pytest_twisted.ensureDeferred
async def test_connection_left_idle_is_closed(
    serve: Callable[[ApiSettings], Server], deadlines: list[str]
) -> None:
    """A client that finishes the handshake and sends nothing is closed at
    the idle timeout, politely (TLS close, then end of stream)."""
    server = serve(ApiSettings(idle_timeout=DEADLINE, handshake_timeout=60.0))

    def stall() -> tuple[bytes, str]:
        with server.tls_socket() as s:
            return read_until_closed(s)

    assert await while_stalled(server, stall) == (b"", "eof")
    assert deadlines == ["idle"]


@pytest_twisted.ensureDeferred
async def test_keep_alive_between_requests_is_not_a_header_deadline(
    server: Server, deadlines: list[str]
) -> None:
    """A persistent connection idle between requests for longer than the
    header deadline is still served: that deadline starts at a request's
    first byte."""

    def two_requests() -> list[bytes]:
        answers = []
        with server.tls_socket() as s:
            for pause in (DEADLINE * 2, 0):
                s.sendall(b"GET /v1/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                answers.append(s.recv(65536).split(b"\r\n", 1)[0])
                time.sleep(pause)
        return answers

    assert await deferToThread(two_requests) == [b"HTTP/1.1 200 OK"] * 2
    assert deadlines == []


def header_lines(total: int) -> bytes:
    """A request whose line and header lines add up to ``total`` bytes, as
    Twisted counts them (without their CRLFs)."""
    line = b"GET /v1/healthz HTTP/1.1"
    host = b"Host: x"
    filler = total - len(line) - len(host) - len(b"X-Fill: ")
    return line + b"\r\n" + host + b"\r\nX-Fill: " + b"a" * filler + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "answer"),
    [
        (header_lines(4096), b"HTTP/1.1 200 OK"),
        (
            header_lines(4097),
            error_response(
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                "request line and headers over 4096 bytes",
            ),
        ),
        (
            b"GET /v1/healthz HTTP/1.1\r\nX: " + b"a" * 10_000 + b"\r\n\r\n",
            error_response(
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                "request line and headers over 4096 bytes",
            ),
        ),
        (
            b"GET /v1/healthz HTTP/1.1\r\n"
            + b"".join(b"X-%d: a\r\n" % i for i in range(20))
            + b"\r\n",
            b"HTTP/1.1 200 OK",
        ),
        (
            b"GET /v1/healthz HTTP/1.1\r\n"
            + b"".join(b"X-%d: a\r\n" % i for i in range(21))
            + b"\r\n",
            error_response(
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                "more than 20 headers",
            ),
        ),
    ],
    ids=[
        "bytes-at-limit",
        "bytes-over",
        "one-long-line",
        "count-at-limit",
        "count-over",
    ],
)
@pytest_twisted.ensureDeferred
async def test_header_limits(
    server: Server, request_bytes: bytes, answer: bytes
) -> None:
    """Headers up to the limits are served; one byte or one header more is
    431 with a JSON error, and the connection is closed."""

    def send() -> tuple[bytes, str]:
        with server.tls_socket() as s:
            s.sendall(request_bytes)
            if answer.endswith(b"OK"):
                return s.recv(65536).split(b"\r\n", 1)[0], "open"
            return read_until_closed(s)

    expected = (answer, "open" if answer.endswith(b"OK") else "eof")
    assert await deferToThread(send) == expected


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5000\r\n\r\n" + b"a" * 5000,
        b"Transfer-Encoding: chunked\r\n\r\n"
        + b"1000\r\n"
        + b"a" * 4096
        + b"\r\n1\r\na\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
@pytest_twisted.ensureDeferred
async def test_body_over_the_limit_is_413(server: Server, framing: bytes) -> None:
    """A body over the limit, announced or chunked, is 413 with a JSON error,
    stored nowhere, and starts nothing."""

    def send() -> bytes:
        with server.tls_socket() as s:
            s.sendall(b"POST /v1/jobs HTTP/1.1\r\nConnection: close\r\n" + framing)
            data, ending = read_until_closed(s)
            assert ending == "eof"
            return data

    data = await deferToThread(send)
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n", 1)[0] == b"HTTP/1.1 413 Request Entity Too Large"
    assert json.loads(body) == {
        "error": {"code": "body_too_large", "message": "the request body is too large"}
    }
    assert server.manager.list() == []


@pytest_twisted.ensureDeferred
async def test_follower_that_never_reads_is_dropped(
    serve: Callable[[ApiSettings], Server], deadlines: list[str]
) -> None:
    """A follower that stops reading pauses its stream while others are
    served (the same job's output too); once it has read nothing for the idle
    timeout it is dropped, and the job runs on."""
    server = serve(ApiSettings(idle_timeout=DEADLINE * 2))
    code, job = await start(server, "/bin/sh", "-c", "head -c 8M /dev/zero; sleep 1000")
    assert code == 201
    log = server.manager.output_log(job["id"])
    while log.size(Stream.COMBINED) < 8 << 20:
        await sleep(0.05)

    def follow_without_reading() -> tuple[bytes, str]:
        with server.tls_socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.sendall(
                f"GET /v1/jobs/{job['id']}/output?follow=true HTTP/1.1\r\n"
                "Host: x\r\n\r\n".encode()
            )
            s.recv(1024)
            # Read nothing more until the server has given up on us.
            dropped.wait(30)
            return read_until_closed(s)

    dropped = threading.Event()
    follower_done = deferToThread(follow_without_reading)
    while not server.api.followers:
        await sleep(0.01)
    await sleep(0.3)
    (follower,) = server.api.followers
    assert follower.paused
    assert await healthz(server) == 200
    response = await server.client("alice").get(
        f"{server.url}/v1/jobs/{job['id']}/output?limit=1048576"
    )
    assert (response.code, len(await response.content())) == (200, 1 << 20)
    while server.api.followers:
        await sleep(0.05)
    dropped.set()
    _, ending = await follower_done
    # Dropped without a TLS goodbye: nothing could get through to it.
    assert (ending, deadlines) == ("SSLEOFError", ["stall"])
    assert server.manager.get(job["id"]).status.value == "running"


async def start(server: Server, command: str, *args: str) -> tuple[int, Any]:
    response = await server.client("alice").post(
        server.url + "/v1/jobs", json={"command": command, "args": list(args)}
    )
    return int(response.code), await response.json()


IDLE_POLL_COUNT = 2000


@pytest.fixture
def open_files_for_polls() -> Iterator[None]:
    """Room for the polls' sockets in this process (the server's side) and
    in the client subprocess, which inherits the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = IDLE_POLL_COUNT + 1024
    if needed > hard and os.geteuid() != 0:
        pytest.skip(f"needs {needed} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), max(hard, needed)))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, max(hard, needed)))


@pytest_twisted.ensureDeferred
async def test_two_thousand_idle_long_polls(
    serve: Callable[[ApiSettings], Server], open_files_for_polls: None
) -> None:
    """2,000 long-polls held open at once on one job: others are still served
    (a health check, a job started), and every poll is answered when the job
    ends."""
    # 2,000 handshakes queue up behind each other: that is not what is tested.
    server = serve(dataclasses.replace(SETTINGS, handshake_timeout=60.0))
    code, job = await start(server, "sleep", "1000")
    assert code == 201
    path = f"/v1/jobs/{job['id']}/output?wait=300"
    polls = subprocess.Popen(
        [sys.executable, str(IDLE_POLLS), str(server.port), str(server.pki.directory),
         "alice", path, str(IDLE_POLL_COUNT)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        log = server.manager.output_log(job["id"])
        give_up = time.monotonic() + 120
        while log.waiter_count() < IDLE_POLL_COUNT:
            assert polls.poll() is None, polls.communicate()[0]
            assert time.monotonic() < give_up, log.waiter_count()
            await sleep(0.1)
        assert await healthz(server) == 200
        code, other = await start(server, "true")
        assert (code, other["status"]) == (201, "running")
        server.manager.stop(job["id"], 0)
        output = await deferToThread(polls.communicate, timeout=120)
    finally:
        if polls.poll() is None:
            polls.kill()
            polls.wait()
    lines = output[0].splitlines()
    assert lines[0] == "sent"
    assert json.loads(lines[1]) == {"HTTP/1.1 200 OK": IDLE_POLL_COUNT}
    assert log.waiter_count() == 0


# A real twistd with a low open-files limit.


def twistd(pki: DevPKI, data: Path, port: int, *extra: str) -> list[str]:
    return [
        str(TWISTD), "--pidfile=", "-n", "jobworker",
        "--cert", str(pki.server.cert), "--key", str(pki.server.key),
        "--ca", str(pki.ca), "--policy", str(POLICY), "--data-dir", str(data),
        "--port", str(port), "--no-isolation", "--allow-unisolated-jobs-as-root",
        *extra,
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Twistd:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def text(self) -> str:
        return self.log.read_text()


@pytest.fixture
def run_twistd(
    dev_pki: DevPKI, tmp_path: Path
) -> Iterator[Callable[[tuple[int, int], tuple[str, ...]], Twistd]]:
    """Start twistd with the given open-files limit (soft, hard) and extra
    options; it is serving when this returns. Killed after the test."""
    started: list[Twistd] = []

    def run(limit: tuple[int, int], extra: tuple[str, ...] = ()) -> Twistd:
        port = free_port()
        log = tmp_path / f"twistd-{port}.log"
        process = subprocess.Popen(
            twistd(dev_pki, tmp_path / "data", port, *extra),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limit),
        )
        server = Twistd(process, port, log)
        started.append(server)
        give_up = time.monotonic() + 30
        while "starting on" not in server.text():
            assert process.poll() is None, server.text()
            assert time.monotonic() < give_up, server.text()
            time.sleep(0.05)
        return server

    yield run
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def curl_healthz(pki: DevPKI, port: int) -> bytes:
    alice = pki.client("alice")
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--cacert", str(pki.ca),
         "--cert", str(alice.cert), "--key", str(alice.key),
         "-o", "/dev/null", "-w", "%{http_code}",
         f"https://127.0.0.1:{port}/v1/healthz"],
        capture_output=True, timeout=30,
    ).stdout  # fmt: skip


def test_open_files_limit_is_raised_and_logged(
    dev_pki: DevPKI, run_twistd: Callable[..., Twistd]
) -> None:
    """At start-up the server raises its soft open-files limit to the hard
    limit and says so in the log."""
    server = run_twistd((256, 1024))
    assert "raised the open files limit from 256 to 1024" in server.text()
    limits = psutil.Process(server.process.pid).rlimit(psutil.RLIMIT_NOFILE)
    assert limits == (1024, 1024)


def test_out_of_file_descriptors_the_server_keeps_serving(
    dev_pki: DevPKI, run_twistd: Callable[..., Twistd]
) -> None:
    """A server at its open-files limit (which it cannot raise) closes the
    connections it cannot take and logs it; a job it cannot start for want of
    descriptors is 503 with Retry-After; it stays up, and starts jobs again
    once connections go away."""
    limit = 64
    server = run_twistd((limit, limit), ("--handshake-timeout", "60"))
    assert f"the open files limit is {limit}, the hard limit" in server.text()
    context = ssl.create_default_context(cafile=str(dev_pki.ca))
    alice = dev_pki.client("alice")
    context.load_cert_chain(alice.cert, alice.key)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as kept:
        assert exchange(kept, "GET", "/v1/healthz")[0] == 200
        held = [
            socket.create_connection(("127.0.0.1", server.port), timeout=10)
            for _ in range(limit * 2)
        ]
        try:
            # The server accepts what it can and, at the limit, closes the
            # rest at once (Twisted keeps a descriptor in reserve for this).
            time.sleep(1)
            assert sum(closed_by_server(s) for s in held) > 0
            assert exchange(kept, "GET", "/v1/healthz")[0] == 200
            start = {"command": "/bin/echo", "args": ["hi"]}
            status, headers, body = exchange(kept, "POST", "/v1/jobs", start)
            assert (status, headers["retry-after"], body) == (
                503,
                "1",
                {
                    "error": {
                        "code": "out_of_resources",
                        "message": "the server has no file descriptors to spare;"
                        " try again later",
                    }
                },
            )
        finally:
            for s in held:
                s.close()
        time.sleep(0.5)
        status, _, job = exchange(kept, "POST", "/v1/jobs", start)
        assert (status, job["status"]) == (201, "running")
        status, _, listing = exchange(kept, "GET", "/v1/jobs")
        assert [j["id"] for j in listing["jobs"]] == [job["id"]]
    assert curl_healthz(dev_pki, server.port) == b"200"
    text = server.text()
    assert "EMFILE encountered" in text
    assert "Traceback" not in text
    assert server.process.poll() is None


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed this connection by now."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False  # held open, waiting for a handshake
    except ConnectionResetError:
        return True


def exchange(
    sock: ssl.SSLSocket, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, str], Any]:
    """One request on a kept-alive connection: status, headers, JSON body."""
    data = b"" if body is None else json.dumps(body).encode()
    sock.sendall(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    reader = sock.makefile("rb")
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline()) != b"\r\n":
        name, value = line.decode().split(":", 1)
        headers[name.lower()] = value.strip()
    content = reader.read(int(headers["content-length"]))
    return status, headers, json.loads(content) if content else None


def test_twistd_options_set_the_deadlines(
    dev_pki: DevPKI, run_twistd: Callable[..., Twistd]
) -> None:
    """--handshake-timeout and --header-timeout reach the server: a stalled
    handshake is reset and a stalled request is answered 408."""
    server = run_twistd(
        resource.getrlimit(resource.RLIMIT_NOFILE),
        ("--handshake-timeout", "0.5", "--header-timeout", "0.5"),
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        assert read_until_closed(s) == (b"", "ConnectionResetError")
    context = ssl.create_default_context(cafile=str(dev_pki.ca))
    alice = dev_pki.client("alice")
    context.load_cert_chain(alice.cert, alice.key)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        data, ending = dribble(s, b"GET /v1/healthz HTTP/1.1\r\nX-Slow: ", b"a")
    assert data.split(b"\r\n", 1)[0] == b"HTTP/1.1 408 Request Timeout"
    assert ending == "eof"


@pytest.mark.parametrize(
    "option",
    ["--idle-timeout", "--handshake-timeout", "--header-timeout", "--body-timeout"],
)
def test_timeouts_must_be_positive(option: str) -> None:
    """A timeout of zero seconds is a usage error naming the option."""
    options = Options()
    with pytest.raises(usage.UsageError) as raised:
        options.parseOptions(["--cert", "c", "--key", "k", "--ca", "a", option, "0"])
    assert str(raised.value) == f"{option} must be more than 0 seconds"


def test_open_files_limit_that_cannot_be_raised_is_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where raising the open-files limit fails, start-up goes on and the log
    says why."""
    events: list[LogEvent] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "jobworker.tap":
            events.append(event)

    def refuse(which: int, limits: tuple[int, int]) -> None:
        raise ValueError("not allowed to raise maximum limit")

    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    globalLogPublisher.addObserver(observe)
    try:
        raise_open_files_limit()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [(e["log_level"].name, formatEvent(e)) for e in events] == [
        (
            "warn",
            "could not raise the open files limit from 1024 to 4096:"
            " not allowed to raise maximum limit",
        )
    ]
