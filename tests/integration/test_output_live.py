"""
Output read while the job still runs, over real mutual TLS: a follower gets
bytes as they are written, and a long-poll wakes on a write, not at the end.

The jobs here block on a FIFO until the test releases them, so "the bytes
came before the job ended" is something the test knows, not a race it won.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred

from tests.host_dirs import visible_tempdir
from tests.integration import test_api
from tests.integration.test_api import Server, call, reactor, sleep, start

# The server the API tests run (real TLS on 127.0.0.1, examples/policy.toml):
# alice's jobs run as nobody.
certs = test_api.certs
manager = test_api.manager
api = test_api.api
server = test_api.server

# Long enough for a loaded machine; far shorter than the server-side wait, so
# a long-poll that answers only when its wait is over fails here.
PROMPT = 10.0
SERVER_WAIT = 60


class Gates:
    """FIFOs a job blocks on (``read x < gate``) until the test opens them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        gate = self.directory / name
        if not gate.exists():
            os.mkfifo(gate)
            gate.chmod(0o644)  # the job's user reads it
        return gate

    async def release(self, name: str) -> None:
        """Let the job's ``read`` on the gate return, once it has opened it."""
        gate = self.path(name)
        for _ in range(int(PROMPT / 0.01)):
            try:
                fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                await sleep(0.01)
                continue
            try:
                os.write(fd, b"go\n")
            finally:
                os.close(fd)
            return
        pytest.fail(f"the job never opened {name}")


@pytest.fixture
def gates() -> Iterator[Gates]:
    # Jobs run as nobody: not under pytest's tmp_path, which only root may
    # enter, nor under /tmp, which an isolated job has its own of.
    directory = visible_tempdir("gates-")
    yield Gates(directory)
    shutil.rmtree(directory)


@pytest_twisted.ensureDeferred
async def test_follow_delivers_bytes_while_the_job_runs(
    server: Server, gates: Gates
) -> None:
    """A follower gets the first bytes while the job still runs (blocked on a
    gate), then the rest, then the end of the stream once the job ends."""
    script = f"printf first; read x < {gates.path('go')}; printf second"
    job = await start(server, "alice", "/bin/sh", "-c", script)
    received = bytearray()
    first: Deferred[None] = Deferred()

    def collect(data: bytes) -> None:
        received.extend(data)
        if len(received) >= len(b"first") and not first.called:
            first.callback(None)

    async def follow() -> int:
        client = server.client("alice")
        url = f"{server.url}/v1/jobs/{job['id']}/output?follow=true"
        response = await client.get(url)
        await treq.collect(response, collect)
        return response.code  # type: ignore[no-any-return]

    following = Deferred.fromCoroutine(follow())
    try:
        await first.addTimeout(PROMPT, reactor)
        assert bytes(received) == b"first"
        assert server.manager.get(job["id"]).status.value == "running"
        assert not server.manager.output_log(job["id"]).closed
        await gates.release("go")
        code = await following.addTimeout(PROMPT, reactor)
    finally:
        following.cancel()
    assert (code, bytes(received)) == (200, b"firstsecond")
    ended = await server.manager.wait(job["id"])
    assert (ended.status.value, ended.exit_code) == ("exited", 0)


@pytest_twisted.ensureDeferred
async def test_long_poll_wakes_on_a_write_while_the_job_runs(
    server: Server, gates: Gates
) -> None:
    """A long-poll begun before the job writes answers with the bytes as soon
    as they are written, while the job keeps running: not complete."""
    go, end = gates.path("go"), gates.path("end")
    script = f"read x < {go}; printf late; read y < {end}"
    job = await start(server, "alice", "/bin/sh", "-c", script)
    path = f"/v1/jobs/{job['id']}/output?wait={SERVER_WAIT}"
    polling: Deferred[tuple[int, Any, Any]] = Deferred.fromCoroutine(
        call(server, "alice", "GET", path)
    )
    log = server.manager.output_log(job["id"])
    while log.waiter_count() == 0:
        await sleep(0.01)
    await gates.release("go")
    try:
        code, data, headers = await polling.addTimeout(PROMPT, reactor)
    finally:
        polling.cancel()
    assert (code, data) == (200, b"late")
    assert headers.getRawHeaders(b"jobworker-next-offset") == [b"4"]
    assert headers.getRawHeaders(b"jobworker-complete") == [b"false"]
    assert server.manager.get(job["id"]).status.value == "running"
    await gates.release("end")
    ended = await server.manager.wait(job["id"])
    assert (ended.status.value, ended.exit_code) == ("exited", 0)
    code, data, headers = await call(server, "alice", "GET", path)
    assert (code, data) == (200, b"late")
    assert headers.getRawHeaders(b"jobworker-complete") == [b"true"]
