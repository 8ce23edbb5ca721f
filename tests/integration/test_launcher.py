"""JobProcess: Twisted's process with larger output reads and no early events."""

from __future__ import annotations

import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import process
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from jobworker.linux.launcher import OUTPUT_READ_SIZE, JobProcess

reactor: Any = global_reactor
PYTHON = "/usr/bin/python3"


class Recorder(ProcessProtocol):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.chunks: list[int] = []
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.chunks.append(len(data))

    def processExited(self, reason: Failure) -> None:
        self.events.append("exited")

    def processEnded(self, reason: Failure) -> None:
        self.events.append("ended")
        self.ended.callback(None)


@pytest_twisted.ensureDeferred
async def test_child_gone_before_spawn_returned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child that ended before spawning returned is reported on a later turn."""
    original = process.registerReapProcessHandler

    def reap_late(pid: int, proc: Any) -> None:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        original(pid, proc)

    monkeypatch.setattr(process, "registerReapProcessHandler", reap_late)
    protocol = Recorder()
    transport = JobProcess(
        reactor, "/bin/true", ["true"], {}, None, protocol, childFDs={1: "r"}
    )
    assert transport.pid is not None
    assert protocol.events == []
    await protocol.ended
    assert protocol.events == ["exited", "ended"]
    assert transport.pid is None


@pytest_twisted.ensureDeferred
async def test_output_read_in_large_pieces() -> None:
    """A pipe full of output is read in pieces larger than Twisted's 8 KiB."""
    protocol = Recorder()
    script = "import os, time; time.sleep(0.2); os.write(1, b'x' * (1 << 20))"
    JobProcess(
        reactor, PYTHON, [PYTHON, "-c", script], {}, None, protocol, childFDs={1: "r"}
    )
    await protocol.ended
    assert sum(protocol.chunks) == 1 << 20
    assert max(protocol.chunks) > 8192
    assert max(protocol.chunks) <= OUTPUT_READ_SIZE
