"""
What a restarted server kills of a job it finds lost, tried as the accident
it must not turn into: a record naming a PID that is someone else's by now.

A decoy, a process of this test's leading a session of its own as any
user's shell does, takes the place of the unrelated process that was given
the job's old PID: named with another start time it must survive the
restart; named with its own, it is the job's, and its whole session dies. A
job really lost with its server is killed through its cgroup, even when the
record's PID is the decoy's.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
from twisted.internet import reactor as global_reactor
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import implementer

from jobworker.jobs.confinement import Confinement
from jobworker.jobs.datadir import DATABASE, prepare_data_directory
from jobworker.jobs.record import Job, new_job_id, utc_now
from jobworker.jobs.service import JobManager, Settings
from jobworker.jobs.spec import JobSpec
from jobworker.jobs.store import JobStore
from jobworker.linux.proc import process_start_time, session_of
from jobworker.wire import JobStatus
from tests.conftest import skip_or_fail

reactor: Any = global_reactor
ROOT = os.geteuid() == 0
CHECKOUT = Path(__file__).parents[2]


@pytest.fixture
def decoy() -> Iterator[subprocess.Popen[bytes]]:
    """A shell of this test's with two children, leading its own session."""
    shell = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 1000 & sleep 1000 & echo ready; wait"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert shell.stdout is not None and shell.stdout.readline() == b"ready\n"
    yield shell
    for member in session_members(shell.pid):
        member.kill()
    shell.kill()
    shell.wait()


def session_members(sid: int) -> list[psutil.Process]:
    """The live processes, zombies aside, of session ``sid``."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return found


def gone(processes: list[psutil.Process]) -> bool:
    """Whether every one of ``processes`` is dead (or a zombie) within 5 s: a
    SIGKILLed process takes a moment to finish dying."""
    _, alive = psutil.wait_procs(processes, timeout=5)
    return all(is_zombie(p) for p in alive)


def is_zombie(process: psutil.Process) -> bool:
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@contextmanager
def recovery_lines() -> Iterator[list[str]]:
    """The lines a restarted manager logs of the lost jobs it found."""
    lines: list[str] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        if "marked lost" in (event.get("log_format") or ""):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)


def write_running_record(data: Path, pid: int, start_time: int | None) -> str:
    """A record as a server that died mid-job left it: running, naming
    ``pid`` started at ``start_time``."""
    data = prepare_data_directory(data)
    store = JobStore(data / DATABASE)
    job = Job(
        id=new_job_id(),
        owner="alice",
        spec=JobSpec(command="/bin/sleep", args=("1000",)),
        status=JobStatus.RUNNING,
        created_at=utc_now(),
        started_at=utc_now(),
        pid=pid,
        pid_start_time=start_time,
    )
    try:
        store.save(job)
    finally:
        store.close()
    return job.id


def restart(data: Path) -> JobManager:
    """Open ``data`` as the next server does; close the store afterwards."""
    manager = JobManager(reactor, data, Settings(isolate=ROOT))
    manager.open()
    return manager


def recover(data: Path) -> tuple[Job, list[str]]:
    """Restart on ``data`` (one job on record): the job after, and the log."""
    with recovery_lines() as lines:
        manager = restart(data)
        try:
            [job] = manager.list()
        finally:
            manager.store.close()
    return job, lines


def test_a_reused_pid_leading_another_session_survives(
    tmp_path: Path, decoy: subprocess.Popen[bytes]
) -> None:
    """The job's old PID now leads an unrelated session (started later, or
    earlier, than the job's leader): nothing of that session is killed, and
    the log says why."""
    started = process_start_time(decoy.pid)
    assert started is not None
    for other in (started - 1, started + 1):
        data = tmp_path / f"data{other - started}"
        job_id = write_running_record(data, decoy.pid, other)
        job, lines = recover(data)
        assert (job.id, job.status) == (job_id, JobStatus.LOST)
        assert decoy.poll() is None
        assert len(session_members(decoy.pid)) == 3
        [line] = lines
        assert f"pid {decoy.pid} is another process now" in line, line
        assert "nothing killed" in line, line


def test_a_record_without_a_start_time_kills_nothing(
    tmp_path: Path, decoy: subprocess.Popen[bytes]
) -> None:
    """A PID alone, with no start time to tell the job's process from a later
    one, is not enough to kill by."""
    write_running_record(tmp_path / "data", decoy.pid, None)
    job, [line] = recover(tmp_path / "data")
    assert job.status is JobStatus.LOST
    assert len(session_members(decoy.pid)) == 3
    assert f"pid {decoy.pid} has no start time on record" in line, line


def test_the_job_s_own_leader_takes_its_whole_session(
    tmp_path: Path, decoy: subprocess.Popen[bytes]
) -> None:
    """The PID with the very start time on record is the job's leader, alive:
    it and every process of its session are killed, and the log counts them."""
    members = session_members(decoy.pid)
    assert len(members) == 3
    write_running_record(tmp_path / "data", decoy.pid, process_start_time(decoy.pid))
    job, [line] = recover(tmp_path / "data")
    assert job.status is JobStatus.LOST
    assert decoy.wait(5) == -signal.SIGKILL
    assert gone(members)
    assert f"3 processes of the session of pid {decoy.pid} killed" in line, line


@pytest.mark.root
def test_a_lost_job_is_killed_through_its_cgroup_whatever_its_record_says(
    tmp_path: Path, decoy: subprocess.Popen[bytes]
) -> None:
    """A real job outlives its SIGKILLed server with a process that left the
    job's session; the record's PID is then made the decoy's. The restart
    kills every process of the job through its cgroup, the one in another
    session too, and leaves the decoy alone."""
    data = tmp_path / "data"
    escape = "setsid /bin/sh -c 'echo escaped; exec sleep 1000' & exec sleep 1000"
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.helpers.crashing_server", str(data)),
            *("/bin/sh", "-c", escape),
        ],
        stdout=subprocess.PIPE,
        cwd=CHECKOUT,
    )
    try:
        assert server.stdout is not None
        job_id = server.stdout.readline().decode().strip()
        assert len(job_id) == 32, job_id
    finally:
        server.kill()
        server.wait()
    job = job_processes(data, job_id)
    leader = read_pid(data, job_id)
    # The escaped process ("escaped" was the job's first output) is in a
    # session of its own: no sweep of the leader's session would find it.
    assert any(session_of(p.pid) not in (leader, None) for p in job), job
    started = process_start_time(decoy.pid)
    assert started is not None
    set_pid(data, job_id, decoy.pid, started + 1)

    lost, [line] = recover(data)
    assert (lost.id, lost.status) == (job_id, JobStatus.LOST)
    assert gone(job)
    assert len(session_members(decoy.pid)) == 3
    assert f"{len(job)} processes killed through its cgroup" in line, line


def job_processes(data: Path, job_id: str) -> list[psutil.Process]:
    """The processes in ``job_id``'s cgroup, as the crash left them."""
    confinement = Confinement.detect(str(data.resolve()), reactor)
    if confinement.driver is None:
        skip_or_fail(f"no cgroups: {confinement.reason}")
    assert confinement.driver is not None
    pids = confinement.driver.open(job_id).pids()
    # The job's init, its command (sleep by now), the escaped sleep.
    assert len(pids) == 3, pids
    return [psutil.Process(pid) for pid in pids]


def read_pid(data: Path, job_id: str) -> int:
    db = sqlite3.connect(data / DATABASE)
    try:
        row = db.execute("SELECT pid FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        db.close()
    return int(row[0])


def set_pid(data: Path, job_id: str, pid: int, start_time: int) -> None:
    """Make the record name ``pid``, started at ``start_time``."""
    db = sqlite3.connect(data / DATABASE)
    try:
        db.execute(
            "UPDATE jobs SET pid = ?, pid_start_time = ? WHERE id = ?",
            (pid, start_time, job_id),
        )
        db.commit()
    finally:
        db.close()
