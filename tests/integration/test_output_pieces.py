"""
Long-poll answers larger than one piece are sent piece by piece, as the
client takes them: the same bytes and headers as one read, but never the
whole answer in the server's memory. Over real mutual TLS on 127.0.0.1.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent, HTTPConnectionPool

from jobworker.auth.policy import Policy
from jobworker.http.follow import FOLLOW_CHUNK
from jobworker.http.site import Api
from jobworker.jobs.output import OutputLog
from jobworker.jobs.service import JobManager, Settings
from jobworker.jobs.spec import parse_job_spec
from jobworker.pki import write_dev_pki
from jobworker.tls import client_tls_policy, server_tls_options
from jobworker.wire import OutputChunk, Stream
from tests.stalled_reader import ask_then_stop_reading

reactor: Any = global_reactor
POLICY = """
[roles.operator]
grants = { start = "own", stop = "own", read = "own", purge = "own" }
[identities]
alice = "operator"
"""
MiB = 1 << 20


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    write_dev_pki(directory, users=("alice",))
    return directory


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[JobManager]:
    manager = JobManager(
        reactor, tmp_path / "data", Settings(isolate=False, allow_unisolated_root=True)
    )
    manager.open()
    yield manager
    pytest_twisted.blockon(Deferred.fromCoroutine(manager.shutdown()))


@pytest.fixture
def port(certs: Path, manager: JobManager) -> Iterator[IListeningPort]:
    tls = server_tls_options(
        certs / "server.pem", certs / "server.key", certs / "ca.pem"
    )
    api = Api(manager, Policy.from_toml_text(POLICY))
    port = reactor.listenSSL(0, api.site(), tls, interface="127.0.0.1")
    yield port
    pytest_twisted.blockon(port.stopListening())


def client(certs: Path) -> HTTPClient:
    policy = client_tls_policy(
        certs / "ca.pem", certs / "alice.pem", certs / "alice.key"
    )
    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def finished_job(manager: JobManager, script: str) -> str:
    spec = parse_job_spec({"command": "/bin/sh", "args": ["-c", script]})
    job = await manager.start(spec, owner="alice")
    await manager.wait(job.id)
    return job.id


async def long_poll(
    certs: Path, port: IListeningPort, job_id: str, query: str
) -> tuple[bytes, dict[str, str]]:
    url = f"https://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]
    response = await client(certs).get(f"{url}/v1/jobs/{job_id}/output?{query}")
    assert response.code == 200
    body = await response.content()
    headers = {
        name.decode().lower(): values[0].decode()
        for name, values in response.headers.getAllRawHeaders()
    }
    return body, headers


@pytest_twisted.ensureDeferred
async def test_whole_output_in_pieces(
    certs: Path, port: IListeningPort, manager: JobManager
) -> None:
    """An ended job's 3 MiB and 5 bytes come whole, with the headers of one read."""
    size = 3 * MiB + 5
    job_id = await finished_job(manager, f"head -c {size} /dev/urandom")
    expected = manager.output_log(job_id).read(Stream.STDOUT, 0, size).data
    body, headers = await long_poll(certs, port, job_id, "limit=16777216")
    assert body == expected  # the client checks it against Content-Length
    assert headers["jobworker-offset"] == "0"
    assert headers["jobworker-next-offset"] == str(size)
    assert headers["jobworker-complete"] == "true"


@pytest_twisted.ensureDeferred
async def test_limit_between_pieces(
    certs: Path, port: IListeningPort, manager: JobManager
) -> None:
    """A limit that is not a whole number of pieces is honoured to the byte."""
    job_id = await finished_job(manager, "head -c 2000000 /dev/urandom")
    limit, offset = FOLLOW_CHUNK * 3 + 7, 11
    log = manager.output_log(job_id)
    expected = log.read(Stream.COMBINED, offset, limit).data
    query = f"offset={offset}&limit={limit}"
    body, headers = await long_poll(certs, port, job_id, query)
    assert body == expected and len(body) == limit
    assert headers["jobworker-next-offset"] == str(offset + limit)
    assert headers["jobworker-complete"] == "false"


@pytest_twisted.ensureDeferred
async def test_client_that_stops_reading_pauses_the_answer(
    certs: Path,
    port: IListeningPort,
    manager: JobManager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 16 MiB answer to a client that reads nothing is not read into memory."""
    job_id = await finished_job(manager, "head -c 32M /dev/zero")
    read = OutputLog.read
    served = [0]

    def counting(self: OutputLog, stream: Stream, offset: int, limit: int) -> Any:
        chunk: OutputChunk = read(self, stream, offset, limit)
        served[0] += len(chunk.data)
        return chunk

    monkeypatch.setattr(OutputLog, "read", counting)
    release = threading.Event()
    asking = deferToThread(
        ask_then_stop_reading,
        certs,
        port.getHost().port,  # type: ignore[attr-defined]
        f"/v1/jobs/{job_id}/output?limit={16 * MiB}",
        release,
    )
    try:
        while served[0] == 0:
            await sleep(0.02)
        await sleep(0.3)
        assert 0 < served[0] < 4 * MiB  # socket and TLS buffers, not the answer
    finally:
        release.set()
        await asking
