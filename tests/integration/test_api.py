"""
The HTTPS API over real mutual TLS on 127.0.0.1: routes, authorization,
errors, long-poll and follow, with real jobs behind it.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool, ResponseNeverReceived
from zope.interface import implementer

from jobworker.auth.policy import Policy
from jobworker.http.settings import ApiSettings
from jobworker.http.site import Api
from jobworker.jobs.service import JobManager, Settings
from jobworker.jobs.spec import Limits
from jobworker.linux.uids import UidRange
from jobworker.pki import write_dev_pki
from jobworker.tls import client_tls_policy, server_tls_options
from jobworker.wire import Stream
from tests.host_dirs import visible_tempdir
from tests.stalled_reader import ask_then_stop_reading

reactor: Any = global_reactor
EXAMPLE_POLICY = Path(__file__).parents[2] / "examples" / "policy.toml"
USERS = ("alice", "bob", "charlie", "mallory")


@dataclass
class Server:
    url: str
    port: IListeningPort
    manager: JobManager
    certs: Path

    def client(self, user: str) -> HTTPClient:
        policy = client_tls_policy(
            self.certs / "ca.pem",
            self.certs / f"{user}.pem",
            self.certs / f"{user}.key",
        )
        pool = HTTPConnectionPool(reactor, persistent=False)
        return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    write_dev_pki(directory, users=USERS)
    return directory


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[JobManager]:
    manager = JobManager(
        reactor,
        tmp_path / "data",
        Settings(max_running_jobs=3, default_grace=2, uid_locks=tmp_path / "uids"),
    )
    manager.open()
    yield manager
    pytest_twisted.blockon(Deferred.fromCoroutine(manager.shutdown()))


@pytest.fixture
def api(manager: JobManager) -> Api:
    return Api(manager, Policy.from_toml(EXAMPLE_POLICY), ApiSettings(max_body=4096))


@pytest.fixture
def server(certs: Path, manager: JobManager, api: Api) -> Iterator[Server]:
    tls = server_tls_options(
        certs / "server.pem", certs / "server.key", certs / "ca.pem"
    )
    port = reactor.listenSSL(0, api.site(), tls, interface="127.0.0.1")
    address = port.getHost()
    yield Server(f"https://127.0.0.1:{address.port}", port, manager, certs)
    pytest_twisted.blockon(port.stopListening())


async def call(
    server: Server, user: str, method: str, path: str, body: Any = None, **kw: Any
) -> tuple[int, Any, Any]:
    """One request; returns status, decoded JSON (or bytes) and headers."""
    client = server.client(user)
    data = (
        body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    )
    response = await client.request(method, server.url + path, data=data, **kw)
    content = await response.content()
    if response.headers.getRawHeaders(b"content-type") == [b"application/json"]:
        return response.code, json.loads(content), response.headers
    return response.code, content, response.headers


async def start(server: Server, user: str, command: str, *args: str) -> dict[str, Any]:
    code, job, _ = await call(
        server, user, "POST", "/v1/jobs", {"command": command, "args": list(args)}
    )
    assert code == 201, job
    return job  # type: ignore[no-any-return]


def error_code(body: Any) -> str:
    return body["error"]["code"]  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_start_read_and_output(server: Server) -> None:
    """alice starts a job: 201 with Location; she reads its record and output."""
    client = server.client("alice")
    response = await client.post(
        server.url + "/v1/jobs", json={"command": "/bin/echo", "args": ["hi"]}
    )
    assert response.code == 201
    job = await response.json()
    assert response.headers.getRawHeaders(b"location") == [
        f"/v1/jobs/{job['id']}".encode()
    ]
    assert (job["owner"], job["status"]) == ("alice", "running")
    # The example's roles name no user: each job a uid of its own.
    assert job["run_as"] is None
    assert job["uid"] in UidRange() and job["gid"] == job["uid"]
    await server.manager.wait(job["id"])
    code, record, _ = await call(server, "alice", "GET", f"/v1/jobs/{job['id']}")
    assert (code, record["status"], record["exit_code"]) == (200, "exited", 0)
    assert record["output_bytes"] == {"stdout": 3, "stderr": 0}
    code, data, headers = await call(
        server, "alice", "GET", f"/v1/jobs/{job['id']}/output?stream=stdout"
    )
    assert (code, data) == (200, b"hi\n")
    assert headers.getRawHeaders(b"jobworker-offset") == [b"0"]
    assert headers.getRawHeaders(b"jobworker-next-offset") == [b"3"]
    assert headers.getRawHeaders(b"jobworker-complete") == [b"true"]


@pytest.mark.parametrize(
    "content_type",
    [b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x"],
)
@pytest_twisted.ensureDeferred
async def test_body_is_json_whatever_its_content_type(
    server: Server, content_type: bytes
) -> None:
    """A JSON body sent as a form (as curl -d does), with "=" and "&" in it,
    is read as JSON, not as form fields."""
    body = {"command": "/bin/sh", "args": ["-c", "X=1&& echo $X"]}
    code, job, _ = await call(
        server, "alice", "POST", "/v1/jobs", body,
        headers={b"Content-Type": [content_type]},
    )  # fmt: skip
    assert code == 201, job
    ended = await server.manager.wait(job["id"])
    assert (ended.exit_code, ended.spec.args) == (0, ("-c", "X=1&& echo $X"))


@pytest_twisted.ensureDeferred
async def test_list_shows_what_the_role_may_see(server: Server) -> None:
    """alice lists only her jobs; bob (auditor) and charlie (admin) list all."""
    mine = await start(server, "alice", "true")
    theirs = await start(server, "charlie", "true")
    for user, expected in [
        ("alice", [mine["id"]]),
        ("bob", [mine["id"], theirs["id"]]),
        ("charlie", [mine["id"], theirs["id"]]),
    ]:
        code, body, _ = await call(server, user, "GET", "/v1/jobs")
        assert code == 200
        assert [j["id"] for j in body["jobs"]] == expected, user
    code, body, _ = await call(server, "bob", "GET", "/v1/jobs?owner=charlie")
    assert [j["id"] for j in body["jobs"]] == [theirs["id"]]


@pytest_twisted.ensureDeferred
async def test_other_users_job_is_not_found(server: Server) -> None:
    """alice cannot see charlie's job: 404 on every route, never 403."""
    job = await start(server, "charlie", "sleep", "1000")
    base = f"/v1/jobs/{job['id']}"
    for method, path in [
        ("GET", base),
        ("GET", base + "/output"),
        ("POST", base + "/stop"),
        ("DELETE", base),
    ]:
        code, body, _ = await call(server, "alice", method, path)
        assert (code, error_code(body)) == (404, "not_found"), (method, path)
        assert job["id"] in body["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_auditor_reads_but_may_not_act(server: Server) -> None:
    """bob reads charlie's job, but starting, stopping and purging are 403."""
    job = await start(server, "charlie", "sleep", "1000")
    code, record, _ = await call(server, "bob", "GET", f"/v1/jobs/{job['id']}")
    assert (code, record["id"]) == (200, job["id"])
    code, body, _ = await call(server, "bob", "POST", f"/v1/jobs/{job['id']}/stop")
    assert (code, error_code(body)) == (403, "forbidden")
    code, body, _ = await call(server, "bob", "POST", "/v1/jobs", {"command": "true"})
    assert (code, error_code(body)) == (403, "forbidden")
    assert server.manager.get(job["id"]).status.value == "running"


@pytest_twisted.ensureDeferred
async def test_unknown_identity_may_do_nothing(server: Server) -> None:
    """A valid certificate whose name the policy does not know is denied."""
    code, body, _ = await call(
        server, "mallory", "POST", "/v1/jobs", {"command": "true"}
    )
    assert (code, error_code(body)) == (403, "forbidden")
    code, body, _ = await call(server, "mallory", "GET", "/v1/jobs")
    assert (code, body) == (200, {"jobs": []})
    code, body, _ = await call(server, "mallory", "GET", "/v1/healthz")
    assert (code, body["status"]) == (200, "ok")


@pytest_twisted.ensureDeferred
async def test_stop_then_conflict(server: Server) -> None:
    """Stopping a running job is 202 (stopping); stopping it once ended is 409."""
    job = await start(server, "alice", "sleep", "1000")
    path = f"/v1/jobs/{job['id']}/stop"
    code, record, _ = await call(server, "alice", "POST", path, {"grace": 1})
    assert (code, record["status"]) == (202, "stopping")
    ended = await server.manager.wait(job["id"])
    assert ended.status.value == "stopped"
    code, body, _ = await call(server, "alice", "POST", path)
    assert (code, error_code(body)) == (409, "conflict")


@pytest_twisted.ensureDeferred
async def test_purge(server: Server) -> None:
    """Purging a running job is 409; an ended one is 204, then 404."""
    job = await start(server, "alice", "sleep", "1000")
    path = f"/v1/jobs/{job['id']}"
    code, body, _ = await call(server, "alice", "DELETE", path)
    assert (code, error_code(body)) == (409, "conflict")
    await call(server, "alice", "POST", path + "/stop", {"grace": 0})
    await server.manager.wait(job["id"])
    code, body, _ = await call(server, "alice", "DELETE", path)
    assert (code, body) == (204, b"")
    code, body, _ = await call(server, "alice", "GET", path)
    assert code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"args": ["x"]}, "command"),
        ({"command": "true", "colour": "red"}, "colour"),
        ({"command": ["true"]}, "command"),
        ({"command": "true", "limits": {"memory": "lots"}}, "limits.memory"),
        ({"command": "true", "env": {"A": 1}}, "env.A"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_invalid_request_names_the_field(
    server: Server, body: dict[str, Any], field: str
) -> None:
    """A malformed job request is 400 naming the field, and starts nothing."""
    code, answer, _ = await call(server, "alice", "POST", "/v1/jobs", body)
    assert (code, error_code(answer)) == (400, "invalid_request")
    assert answer["error"]["message"].startswith(f"{field}:")
    assert server.manager.list() == []


@pytest.mark.parametrize(
    "raw", [b"{not json", b"\xff\xfe", b"", b"[1, 2]", b'"just a string"']
)
@pytest_twisted.ensureDeferred
async def test_malformed_json(server: Server, raw: bytes) -> None:
    """A body that is not a JSON object is 400."""
    code, answer, _ = await call(server, "alice", "POST", "/v1/jobs", raw)
    assert code == 400
    assert error_code(answer) in ("invalid_json", "invalid_request")
    assert server.manager.list() == []


@pytest_twisted.ensureDeferred
async def test_huge_body(server: Server) -> None:
    """A body over the limit is 413 and starts nothing."""
    body = json.dumps({"command": "true", "args": ["x" * 10_000]}).encode()
    code, answer, _ = await call(server, "alice", "POST", "/v1/jobs", body)
    assert (code, error_code(answer)) == (413, "body_too_large")
    assert server.manager.list() == []


@pytest_twisted.ensureDeferred
async def test_ceiling_exceeded_names_the_limit(server: Server) -> None:
    """A limit above the role's ceiling is 403 naming the limit."""
    code, answer, _ = await call(
        server,
        "alice",
        "POST",
        "/v1/jobs",
        {"command": "true", "limits": {"memory": "1T"}},
    )
    assert (code, error_code(answer)) == (403, "forbidden")
    assert "limits.memory" in answer["error"]["message"]
    code, answer, _ = await call(
        server,
        "alice",
        "POST",
        "/v1/jobs",
        {"command": "true", "isolation": {"network": "host"}},
    )
    assert (code, error_code(answer)) == (403, "forbidden")
    assert "isolation.network" in answer["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_limits_left_out_get_the_default_within_the_ceiling(
    server: Server,
) -> None:
    """A limit left out gets the server's default, capped at the role's ceiling."""
    manager = server.manager
    manager.settings = replace(
        manager.settings, default_limits=Limits(memory=256 << 20, pids=100_000)
    )
    job = await start(server, "alice", "true")
    assert (job["limits"]["memory"], job["limits"]["pids"]) == (256 << 20, 512)
    assert job["limits"]["cpu"] == 2.0


@pytest_twisted.ensureDeferred
async def test_too_many_jobs(server: Server) -> None:
    """Past the running-job maximum, start is 429 with Retry-After."""
    for _ in range(3):
        await start(server, "alice", "sleep", "1000")
    code, answer, headers = await call(
        server, "alice", "POST", "/v1/jobs", {"command": "true"}
    )
    assert (code, error_code(answer)) == (429, "too_many_jobs")
    assert headers.getRawHeaders(b"retry-after") == [b"1"]


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("stream=stdin", "stream"),
        ("offset=-1", "offset"),
        ("offset=x", "offset"),
        ("wait=1000", "wait"),
        ("limit=0", "limit"),
        ("follow=yes", "follow"),
        ("colour=red", "colour"),
        ("offset=1&offset=2", "offset"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_output_query(server: Server, query: str, name: str) -> None:
    """Bad output query parameters are 400 naming the parameter."""
    job = await start(server, "alice", "true")
    code, answer, _ = await call(
        server, "alice", "GET", f"/v1/jobs/{job['id']}/output?{query}"
    )
    assert (code, error_code(answer)) == (400, "invalid_request")
    assert answer["error"]["message"].startswith(f"{name}:")


@pytest_twisted.ensureDeferred
async def test_offset_past_end(server: Server) -> None:
    """An offset past the end of an ended job's output is 416."""
    job = await start(server, "alice", "/bin/echo", "hi")
    await server.manager.wait(job["id"])
    code, answer, _ = await call(
        server, "alice", "GET", f"/v1/jobs/{job['id']}/output?offset=4"
    )
    assert (code, error_code(answer)) == (416, "offset_out_of_range")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 404),
        ("GET", "/v2/jobs", 404),
        ("GET", "/v1/nope", 404),
        ("GET", "/v1/jobs/abc/nope", 404),
        ("GET", "/v1/healthz/x", 404),
        ("PUT", "/v1/jobs", 405),
        ("GET", "/v1/jobs/abc/stop", 405),
        ("POST", "/v1/healthz", 405),
        ("GET", "/v1/jobs/" + "f" * 32, 404),
    ],
)
@pytest_twisted.ensureDeferred
async def test_unknown_paths_and_methods(
    server: Server, method: str, path: str, status: int
) -> None:
    """Unknown paths are JSON 404s; unsupported methods are JSON 405s."""
    code, answer, headers = await call(server, "alice", method, path)
    assert code == status
    assert "error" in answer
    if status == 405:
        assert headers.getRawHeaders(b"allow")


@pytest_twisted.ensureDeferred
async def test_long_poll_receives_later_bytes(server: Server) -> None:
    """A long-poll begun before the job writes receives the bytes when they come."""
    # Jobs run as nobody: the flag must be somewhere nobody can look.
    shared = visible_tempdir("jobworker-test-")
    flag = shared / "go"
    job = await start(
        server,
        "alice",
        "/bin/sh",
        "-c",
        f"while [ ! -e {flag} ]; do sleep 0.01; done; echo late",
    )
    polling = Deferred.fromCoroutine(
        call(server, "alice", "GET", f"/v1/jobs/{job['id']}/output?wait=30")
    )
    log = server.manager.output_log(job["id"])
    while log.waiter_count() == 0:
        await sleep(0.01)
    flag.touch()
    try:
        code, data, headers = await polling
    finally:
        shutil.rmtree(shared)
    assert (code, data) == (200, b"late\n")
    assert headers.getRawHeaders(b"jobworker-next-offset") == [b"5"]


@pytest_twisted.ensureDeferred
async def test_follow_streams_until_the_end(server: Server) -> None:
    """Two concurrent followers get identical bytes, from the first to the last."""
    script = "for i in $(seq 1 2000); do echo line $i; done"
    job = await start(server, "alice", "/bin/sh", "-c", script)
    path = f"/v1/jobs/{job['id']}/output?follow=true"
    results = await DeferredList(
        [
            Deferred.fromCoroutine(call(server, user, "GET", path))
            for user in ("alice", "bob")
        ]
    )
    expected = "".join(f"line {i}\n" for i in range(1, 2001)).encode()
    bodies = [r[1][1] for r in results]
    assert bodies == [expected, expected]


@pytest_twisted.ensureDeferred
async def test_client_gone_mid_poll_leaves_no_waiter(server: Server) -> None:
    """A client that disconnects during a long-poll leaves no waiter behind,
    and the handler stops there: nothing is answered, nothing is logged as an
    error."""
    errors: list[str] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(formatEvent(event))

    job = await start(server, "alice", "sleep", "1000")
    client = server.client("alice")
    polling = client.get(f"{server.url}/v1/jobs/{job['id']}/output?wait=60")
    log = server.manager.output_log(job["id"])
    while log.waiter_count() == 0:
        await sleep(0.01)
    globalLogPublisher.addObserver(observe)
    try:
        polling.cancel()
        with pytest.raises(ResponseNeverReceived) as raised:
            await polling
        assert raised.value.reasons[0].check(CancelledError)
        for _ in range(200):
            if log.waiter_count() == 0:
                break
            await sleep(0.01)
        await sleep(0.1)  # for an answer to the gone client to fail, if sent
    finally:
        globalLogPublisher.removeObserver(observe)
    assert log.waiter_count() == 0
    assert errors == []


@pytest_twisted.ensureDeferred
async def test_audit_line_per_request(server: Server) -> None:
    """Every request, allowed or denied, is one audit event with who and what:
    "allowed" is the policy's answer (None where the request was refused
    before the policy was asked), the job is the new one for a start."""
    events: list[LogEvent] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "jobworker.audit":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        await call(server, "bob", "POST", "/v1/jobs", {"command": "true"})
        job = await start(server, "alice", "true")
        job_path = f"/v1/jobs/{job['id']}"
        await call(server, "alice", "GET", job_path)
        await call(server, "mallory", "GET", "/v1/jobs")
        await call(server, "bob", "POST", job_path + "/stop", {"grace": -1})
        await call(server, "alice", "POST", job_path + "/stop", {"grace": -1})
        await call(server, "alice", "GET", "/v1/jobs/" + "f" * 32)
        await call(server, "alice", "GET", job_path + "?colour=red")
        await call(server, "bob", "GET", "/v1/healthz")
    finally:
        globalLogPublisher.removeObserver(observe)
    summary = [
        (e["identity"], e["action"], e["job_id"], e["allowed"], e["status"])
        for e in events
    ]
    assert summary == [
        ("bob", "start", None, False, 403),
        ("alice", "start", job["id"], True, 201),
        ("alice", "read", job["id"], True, 200),
        ("mallory", "read", None, False, 200),  # an empty list
        ("bob", "stop", job["id"], False, 403),
        ("alice", "stop", job["id"], True, 400),  # allowed, but a bad grace
        ("alice", "read", "f" * 32, False, 404),
        ("alice", "read", job["id"], None, 400),  # refused before asking
        ("bob", "get", None, True, 200),
    ]


@pytest_twisted.ensureDeferred
async def test_no_client_certificate_refused(server: Server) -> None:
    """A TLS client without a certificate is refused during the handshake."""
    context = ssl.create_default_context(cafile=str(server.certs / "ca.pem"))
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
        await request_raw(server, context)


@pytest_twisted.ensureDeferred
async def test_tls_1_2_client_refused(server: Server) -> None:
    """A client limited to TLS 1.2 cannot connect at all."""
    context = ssl.create_default_context(cafile=str(server.certs / "ca.pem"))
    context.load_cert_chain(server.certs / "alice.pem", server.certs / "alice.key")
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        await request_raw(server, context)


@pytest_twisted.ensureDeferred
async def test_raw_client_with_certificate_served(server: Server) -> None:
    """The same raw client, with alice's certificate, is answered over TLS 1.3."""
    context = ssl.create_default_context(cafile=str(server.certs / "ca.pem"))
    context.load_cert_chain(server.certs / "alice.pem", server.certs / "alice.key")
    answer = await request_raw(server, context)
    assert answer.startswith(b"HTTP/1.1 200 OK")


async def request_raw(server: Server, context: ssl.SSLContext) -> bytes:
    """A blocking HTTPS GET in a thread, so the reactor keeps serving."""
    port = server.port.getHost().port  # type: ignore[attr-defined]

    def get() -> bytes:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"GET /v1/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            return tls.recv(4096) or b""

    return await deferToThread(get)


async def sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_slow_follower_pauses_the_stream(server: Server, api: Api) -> None:
    """A follower that stops reading pauses the server's file reads: the
    stream does not race ahead of the client into memory."""
    job = await start(
        server, "alice", "/bin/sh", "-c", "head -c 64M /dev/zero; sleep 1000"
    )
    release = threading.Event()
    client = deferToThread(
        ask_then_stop_reading,
        server.certs,
        server.port.getHost().port,  # type: ignore[attr-defined]
        f"/v1/jobs/{job['id']}/output?follow=true",
        release,
    )
    log = server.manager.output_log(job["id"])
    while log.size(Stream.COMBINED) < 64 << 20 or not api.followers:
        await sleep(0.05)
    await sleep(0.2)
    (follower,) = api.followers
    assert follower.paused
    assert follower.offset < 16 << 20  # socket and TLS buffers, not the output
    release.set()
    await client
    while api.followers:
        await sleep(0.01)
    assert log.waiter_count() == 0
