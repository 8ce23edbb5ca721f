"""
Reading real processes' ``/proc/PID/stat``, and ending a lost job's session:
every process of it, and nothing where its leader is not exactly the job's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from jobworker.linux.proc import (
    NotTheLeader,
    kill_session,
    process_start_time,
    session_of,
)

# Above the kernel's maximum PID (2**22): no process can have it.
NO_SUCH_PID = 1 << 30


@pytest.fixture
def session() -> Iterator[subprocess.Popen[bytes]]:
    """A shell leading a session of its own, with two children in it."""
    shell = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 30 & sleep 30 & echo ready; wait"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert shell.stdout is not None and shell.stdout.readline() == b"ready\n"
    yield shell
    for member in members(shell.pid):
        member.kill()
    shell.kill()
    shell.wait()


def members(sid: int) -> list[psutil.Process]:
    """The live processes of session ``sid``."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return found


def test_session_and_start_time(session: subprocess.Popen[bytes]) -> None:
    """A session leader's session is its PID; it started after this process."""
    assert session_of(session.pid) == session.pid
    assert session_of(os.getpid()) == os.getsid(0)
    started = process_start_time(session.pid)
    ours = process_start_time(os.getpid())
    assert started is not None and ours is not None and ours <= started


def test_no_such_process() -> None:
    """A process that is not there has no session and no start time."""
    assert session_of(NO_SUCH_PID) is None
    assert process_start_time(NO_SUCH_PID) is None


def test_name_with_spaces_and_parentheses(tmp_path: Path) -> None:
    """A command named to confuse a parser of the stat line does not."""
    sleep = tmp_path / ") 1 2 (x y"
    sleep.symlink_to("/bin/sleep")
    process = subprocess.Popen([str(sleep), "30"], start_new_session=True)
    try:
        with open(f"/proc/{process.pid}/stat", "rb") as f:
            assert b"(" + sleep.name.encode()[:15] + b")" in f.read()
        assert session_of(process.pid) == process.pid
        assert process_start_time(process.pid) is not None
    finally:
        process.kill()
        process.wait()


def test_kill_session(session: subprocess.Popen[bytes]) -> None:
    """Every process of the job's session is killed, its leader too."""
    assert len(members(session.pid)) == 3
    started = process_start_time(session.pid)
    assert started is not None
    assert kill_session(session.pid, started) == 3
    assert session.wait(5) == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while members(session.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert members(session.pid) == []


def test_kill_session_spares_a_reused_pid(
    session: subprocess.Popen[bytes],
) -> None:
    """A leader whose start time is not the one on record, by a tick either
    way, is another process that took the number: its session is left alone."""
    started = process_start_time(session.pid)
    assert started is not None
    for other in (started - 1, started + 1):
        with pytest.raises(NotTheLeader, match="is another process now"):
            kill_session(session.pid, other)
    assert session.poll() is None
    assert len(members(session.pid)) == 3


def test_kill_session_of_a_process_that_leads_none() -> None:
    """A process in this test's session, named with its own start time, leads
    no session: nothing is killed, this test's session least of all."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        started = process_start_time(child.pid)
        assert started is not None
        with pytest.raises(NotTheLeader, match="leads no session"):
            kill_session(child.pid, started)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_kill_session_of_a_gone_process() -> None:
    """A leader that is gone leaves nothing to tell its session by."""
    with pytest.raises(NotTheLeader, match="is gone"):
        kill_session(NO_SUCH_PID, 1)
