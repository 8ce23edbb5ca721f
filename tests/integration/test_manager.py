"""The job library end to end: real processes, real files, a real SQLite file."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, DeferredList

from jobworker.jobs.errors import (
    JobConflict,
    JobNotFound,
    OutOfDescriptors,
    TooManyJobs,
)
from jobworker.jobs.output import OffsetOutOfRange
from jobworker.jobs.service import JobManager, Settings
from jobworker.jobs.spec import InvalidSpec, JobSpec, Limits, parse_job_spec
from jobworker.wire import JobStatus, Stream
from tests.host_dirs import visible_tempdir

reactor: Any = global_reactor
ROOT = os.geteuid() == 0
# Not sys.executable: the checkout may lie where an isolated job does not see
# it (its private /tmp).
PYTHON = "/usr/bin/python3"
ALL_BYTES = bytes(range(256))
WRITE_LINES = """
import sys
for i in range(2000):
    sys.stdout.write(f"line {i}\\n")
    sys.stdout.flush()
"""


def spec(command: str, *args: str, **fields: Any) -> JobSpec:
    return parse_job_spec({"command": command, "args": list(args), **fields})


def sh(script: str, **fields: Any) -> JobSpec:
    return spec("/bin/sh", "-c", script, **fields)


def make_manager(data_dir: Path, **settings: Any) -> JobManager:
    # Isolated where it can be (as root, and so in CI), else plain: the
    # library behaves the same either way.
    settings.setdefault("isolate", ROOT)
    settings.setdefault("allow_unisolated_root", True)
    manager = JobManager(reactor, data_dir, Settings(**settings))
    manager.open()
    return manager


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[JobManager]:
    m = make_manager(tmp_path / "data", default_grace=2)
    yield m
    pytest_twisted.blockon(Deferred.fromCoroutine(m.shutdown()))


@pytest.fixture
def shared_path() -> Iterator[Path]:
    """A directory jobs see as the test does (isolated, they have their own /tmp)."""
    path = visible_tempdir("jobworker-test-")
    yield path
    shutil.rmtree(path)


def session_members(pid: int) -> list[psutil.Process]:
    """Processes still in the session the job's leader made."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == pid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return found


def no_session_left(pid: int | None) -> bool:
    """True once every process of the session is gone (a SIGKILLed process
    may take a moment to finish dying after the job's record says ended)."""
    _, alive = psutil.wait_procs(session_members(pid or 0), timeout=5)
    return not alive


@pytest_twisted.ensureDeferred
async def test_echo_output_and_exit_code(manager: JobManager) -> None:
    """A job runs, its output is read from the first byte, its exit code recorded."""
    job = await manager.start(spec("/bin/echo", "hi"), "alice")
    assert job.status is JobStatus.RUNNING
    assert job.started_at is not None
    ended = await manager.wait(job.id)
    assert (ended.status, ended.exit_code, ended.signal) == (JobStatus.EXITED, 0, None)
    chunk = await manager.read_output(job.id)
    assert (chunk.data, chunk.next_offset, chunk.complete) == (b"hi\n", 3, True)
    assert manager.describe(ended)["output_bytes"] == {"stdout": 3, "stderr": 0}


@pytest_twisted.ensureDeferred
async def test_bare_name_resolved_and_exit_code(manager: JobManager) -> None:
    """A bare command name is found on PATH; a non-zero exit code is kept."""
    job = await manager.start(sh("echo out; echo err >&2; exit 7"), "alice")
    ended = await manager.wait(job.id)
    assert (ended.status, ended.exit_code) == (JobStatus.EXITED, 7)
    out = await manager.read_output(job.id, Stream.STDOUT)
    err = await manager.read_output(job.id, Stream.STDERR)
    assert (out.data, err.data) == (b"out\n", b"err\n")


@pytest_twisted.ensureDeferred
async def test_job_killing_itself_reports_signal(manager: JobManager) -> None:
    """A job ended by a signal records the signal, not an exit code."""
    job = await manager.start(sh("kill -TERM $$"), "alice")
    ended = await manager.wait(job.id)
    assert (ended.status, ended.exit_code, ended.signal) == (
        JobStatus.EXITED,
        None,
        signal.SIGTERM,
    )


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (
            {"command": "no-such-command-anywhere"},
            "exec no-such-command-anywhere: No such file or directory (ENOENT)",
        ),
        (
            {"command": "/no/such/file"},
            "exec /no/such/file: No such file or directory (ENOENT)",
        ),
        ({"command": "/etc"}, "exec /etc: Permission denied (EACCES)"),
        (
            {"command": "/proc/self/status"},
            "exec /proc/self/status: Permission denied (EACCES)",
        ),
        (
            {"command": "true", "cwd": "/no/such/dir"},
            "chdir /no/such/dir: No such file or directory (ENOENT)",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_failed_to_start(
    manager: JobManager, fields: dict[str, Any], error: str
) -> None:
    """A command that cannot run is a failed_to_start job carrying the OS error."""
    job = await manager.start(parse_job_spec(fields), "alice")
    assert job.status is JobStatus.FAILED_TO_START
    assert job.error == error
    assert job.ended_at is not None
    assert manager.get(job.id) == job
    assert manager.running_count() == 0


@pytest.mark.parametrize(
    ("made", "field"),
    [
        (JobSpec(command="/bin/echo\x00"), "command"),
        (JobSpec(command="/bin/echo", env={"X": "a\x00b"}), "env.X"),
        (JobSpec(command="/bin/echo", args=("x" * (1 << 20),)), "args[0]"),
    ],
    ids=["nul-command", "nul-env", "long-arg"],
)
@pytest_twisted.ensureDeferred
async def test_spec_made_by_hand_is_checked(
    manager: JobManager, made: JobSpec, field: str
) -> None:
    """A JobSpec built directly, not parsed, is checked as a request would
    be: InvalidSpec naming the field, and nothing started or recorded."""
    with pytest.raises(InvalidSpec) as raised:
        await manager.start(made, "alice")
    assert raised.value.field == field
    assert manager.list() == []


@pytest_twisted.ensureDeferred
async def test_not_root_nor_isolating_runs_jobs_as_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without isolation, a server that is not root runs every job as its own
    user, whatever run_as says (it could not change users)."""
    manager = make_manager(tmp_path / "data", isolate=False)
    monkeypatch.setattr("jobworker.jobs.service.os.geteuid", lambda: 4242)
    try:
        job = await manager.start(spec("/bin/sh", "-c", "id -u"), "alice", "nobody")
        ended = await manager.wait(job.id)
        assert (ended.status, ended.exit_code, ended.run_as) == (
            JobStatus.EXITED, 0, None,
        )  # fmt: skip
        output = await manager.read_output(job.id, Stream.STDOUT)
        assert output.data == b"%d\n" % os.getuid()
    finally:
        monkeypatch.undo()
        await manager.shutdown()


@pytest_twisted.ensureDeferred
async def test_job_inherits_no_descriptor_of_the_server(manager: JobManager) -> None:
    """A descriptor the server left inheritable does not reach the job: it
    has only stdin, stdout and stderr (and the one ls opens to list them)."""
    kept, other = os.pipe()
    os.set_inheritable(kept, True)
    os.set_inheritable(other, True)
    try:
        job = await manager.start(spec("/bin/ls", "/proc/self/fd"), "alice")
        ended = await manager.wait(job.id)
    finally:
        os.close(kept)
        os.close(other)
    output = await manager.read_output(job.id, Stream.STDOUT)
    assert (ended.exit_code, sorted(output.data.split())) == (
        0, [b"0", b"1", b"2", b"3"],
    )  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_out_of_descriptors_keeps_nothing_of_the_job(
    manager: JobManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that finds no descriptors for the job's pipes raises
    OutOfDescriptors (the API's 503) and keeps no record, directory or
    cgroup of it: the server was busy, not the job wrong."""

    def no_descriptors(*args: Any) -> None:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    made: list[Any] = []
    create = manager.confinement.create

    def remember(job_id: str, limits: Any) -> Any:
        made.append(create(job_id, limits))
        return made[-1]

    assert manager._launcher is not None
    monkeypatch.setattr(manager._launcher, "launch", no_descriptors)
    monkeypatch.setattr(manager.confinement, "create", remember)
    with pytest.raises(OutOfDescriptors):
        await manager.start(spec("/bin/true"), "alice")
    assert (manager.list(), manager.running_count()) == ([], 0)
    assert list((manager.data_dir / "jobs").iterdir()) == []
    for confinement in made:
        if confinement is not None:  # where there are cgroups
            dirs = [Path(p).parent for p in confinement.procs_paths()]
            assert dirs and [d for d in dirs if d.exists()] == []


@pytest_twisted.ensureDeferred
async def test_just_ended_records_are_read_from_memory(
    manager: JobManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record of a job that just ended is served without asking the
    database (its waiters all read it at once); a purge forgets it."""
    job = await manager.start(spec("/bin/true"), "alice")
    ended = await manager.wait(job.id)

    def no_database(job_id: str) -> None:
        raise AssertionError("asked the database")

    monkeypatch.setattr(manager.store, "get", no_database)
    assert manager.get(job.id) == ended
    monkeypatch.undo()
    manager.purge(job.id)
    with pytest.raises(JobNotFound):
        manager.get(job.id)


@pytest_twisted.ensureDeferred
async def test_environment_is_explicit(manager: JobManager) -> None:
    """Jobs see only a default PATH and what they asked for, nothing of the server."""
    os.environ["JOBWORKER_TEST_SECRET"] = "leak"
    try:
        job = await manager.start(spec("/usr/bin/env", env={"GREETING": "hi"}), "alice")
    finally:
        del os.environ["JOBWORKER_TEST_SECRET"]
    await manager.wait(job.id)
    lines = sorted((await manager.read_output(job.id)).data.decode().splitlines())
    assert lines == ["GREETING=hi", f"PATH={manager.settings.job_path}"]


@pytest_twisted.ensureDeferred
async def test_cwd(manager: JobManager, shared_path: Path) -> None:
    """A job runs in the directory it asked for."""
    job = await manager.start(spec("/bin/pwd", cwd=str(shared_path)), "alice")
    await manager.wait(job.id)
    assert (await manager.read_output(job.id)).data == f"{shared_path}\n".encode()


@pytest_twisted.ensureDeferred
async def test_stdin_is_empty(manager: JobManager) -> None:
    """A job reading stdin sees end of file at once, not a hang."""
    job = await manager.start(spec("/bin/cat"), "alice")
    ended = await manager.wait(job.id)
    assert (ended.status, ended.exit_code) == (JobStatus.EXITED, 0)


@pytest_twisted.ensureDeferred
async def test_binary_output_round_trips(manager: JobManager) -> None:
    """All 256 byte values and invalid UTF-8 arrive byte for byte."""
    payload = ALL_BYTES + b"\xff\xfe\xc3\x28"
    script = (
        "import sys; "
        "sys.stdout.buffer.write(bytes(range(256)) + b'\\xff\\xfe\\xc3\\x28')"
    )
    job = await manager.start(spec(PYTHON, "-c", script), "alice")
    await manager.wait(job.id)
    assert (await manager.read_output(job.id, Stream.STDOUT)).data == payload


@pytest_twisted.ensureDeferred
async def test_stop_leaves_no_process(manager: JobManager) -> None:
    """Stop ends every process of the job, background children included."""
    job = await manager.start(sh("sleep 1000 & sleep 1000 & echo ready; wait"), "alice")
    assert job.pid is not None
    await manager.read_output(job.id, wait=10)  # both children exist
    members = session_members(job.pid)
    # sh and both sleeps, and the isolated job's init
    assert len(members) == (4 if manager.settings.isolate else 3)
    stopping = manager.stop(job.id, grace=5)
    assert stopping.status is JobStatus.STOPPING
    ended = await manager.wait(job.id)
    assert (ended.status, ended.signal) == (JobStatus.STOPPED, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=5)
    assert alive == []


@pytest_twisted.ensureDeferred
async def test_stop_kills_what_ignores_sigterm(manager: JobManager) -> None:
    """A job that ignores SIGTERM is SIGKILLed when the grace period ends."""
    job = await manager.start(
        sh("trap '' TERM; echo ready; sleep 1000 & wait"), "alice"
    )
    await manager.read_output(job.id, wait=10)  # the trap is set
    manager.stop(job.id, grace=0.2)
    ended = await manager.wait(job.id)
    assert (ended.status, ended.signal) == (JobStatus.STOPPED, signal.SIGKILL)
    assert no_session_left(job.pid)


@pytest_twisted.ensureDeferred
async def test_leftover_children_end_with_the_command(manager: JobManager) -> None:
    """A command that exits leaving a child holding its pipes still ends the job."""
    job = await manager.start(sh("sleep 1000 & echo started"), "alice")
    ended = await manager.wait(job.id)
    assert (ended.status, ended.exit_code) == (JobStatus.EXITED, 0)
    assert no_session_left(job.pid)


@pytest_twisted.ensureDeferred
async def test_stop_ended_job_is_conflict(manager: JobManager) -> None:
    """Stopping a job that has ended is refused as a conflict."""
    job = await manager.start(spec("true"), "alice")
    await manager.wait(job.id)
    with pytest.raises(JobConflict):
        manager.stop(job.id)


@pytest_twisted.ensureDeferred
async def test_timeout(manager: JobManager) -> None:
    """A job running past its timeout ends timed_out."""
    job = await manager.start(spec("sleep", "1000", timeout=0.3), "alice")
    ended = await manager.wait(job.id)
    assert (ended.status, ended.signal) == (JobStatus.TIMED_OUT, signal.SIGTERM)


@pytest_twisted.ensureDeferred
async def test_unknown_job(manager: JobManager) -> None:
    """Every call on an unknown id says not found."""
    for call in (
        lambda: manager.get("f" * 32),
        lambda: manager.get("../etc"),
        lambda: manager.stop("f" * 32),
        lambda: manager.purge("f" * 32),
        lambda: manager.output_log("f" * 32),
    ):
        with pytest.raises(JobNotFound):
            call()
    with pytest.raises(JobNotFound):
        await manager.read_output("f" * 32)


@pytest_twisted.ensureDeferred
async def test_long_poll_gets_later_bytes(
    manager: JobManager, shared_path: Path
) -> None:
    """A reader waiting at the end receives bytes written after it began waiting."""
    flag = shared_path / "go"
    job = await manager.start(
        sh(f"echo one; while [ ! -e {flag} ]; do sleep 0.01; done; echo two"), "alice"
    )
    first = await manager.read_output(job.id, Stream.STDOUT, wait=10)
    assert first.data == b"one\n"
    reading = Deferred.fromCoroutine(
        manager.read_output(job.id, Stream.STDOUT, first.next_offset, wait=10)
    )
    assert manager.output_log(job.id).waiter_count() == 1
    flag.touch()
    second = await reading
    assert (second.offset, second.data) == (4, b"two\n")
    await manager.wait(job.id)
    last = await manager.read_output(job.id, Stream.STDOUT, second.next_offset)
    assert (last.data, last.complete) == (b"", True)


@pytest_twisted.ensureDeferred
async def test_long_poll_times_out_empty(manager: JobManager) -> None:
    """A wait with nothing to read returns empty when its time is up."""
    job = await manager.start(spec("sleep", "1000"), "alice")
    chunk = await manager.read_output(job.id, offset=0, wait=0.1)
    assert (chunk.data, chunk.next_offset, chunk.complete) == (b"", 0, False)
    assert manager.output_log(job.id).waiter_count() == 0


@pytest_twisted.ensureDeferred
async def test_concurrent_followers_see_identical_bytes(manager: JobManager) -> None:
    """Several readers following from offset 0 each get every byte, in order."""
    job = await manager.start(
        spec(PYTHON, "-c", WRITE_LINES),
        "alice",
    )

    async def follow() -> bytes:
        got, offset = b"", 0
        while True:
            chunk = await manager.read_output(
                job.id, offset=offset, limit=4096, wait=10
            )
            got += chunk.data
            offset = chunk.next_offset
            if chunk.complete:
                return got

    results = await DeferredList([Deferred.fromCoroutine(follow()) for _ in range(5)])
    expected = "".join(f"line {i}\n" for i in range(2000)).encode()
    assert [ok for ok, _ in results] == [True] * 5
    assert all(data == expected for _, data in results)


@pytest_twisted.ensureDeferred
async def test_offset_past_end_of_ended_job(manager: JobManager) -> None:
    """Reading past the end of an ended job's output is out of range."""
    job = await manager.start(spec("/bin/echo", "hi"), "alice")
    await manager.wait(job.id)
    with pytest.raises(OffsetOutOfRange):
        await manager.read_output(job.id, offset=4)


@pytest_twisted.ensureDeferred
async def test_output_limit(tmp_path: Path) -> None:
    """A job writing past the output limit is stopped and its record says why."""
    m = make_manager(tmp_path, output_limit=100_000)
    try:
        job = await m.start(spec("/bin/cat", "/dev/zero"), "alice")
        ended = await m.wait(job.id)
        assert ended.status is JobStatus.STOPPED
        assert ended.error == "output limit of 100000 bytes reached"
        assert m.output_sizes(job.id) == {"stdout": 100_000, "stderr": 0}
    finally:
        await m.shutdown()


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_default_memory_limit_is_in_the_record_and_enforced(
    tmp_path: Path,
) -> None:
    """A job that sets no memory limit gets the server's: in its record, enforced."""
    m = make_manager(tmp_path, default_limits=Limits(memory=32 << 20))
    try:
        assert m.confinement.driver is not None, m.confinement.reason
        allocate = "b = bytearray(256 << 20); print(len(b))"
        job = await m.start(spec(PYTHON, "-c", allocate), "alice")
        assert job.spec.limits == Limits(memory=32 << 20)
        ended = await m.wait(job.id)
        record: Any = m.describe(ended)
        assert record["limits"] == Limits(memory=32 << 20).to_json()
        assert ended.oom_killed is True
    finally:
        await m.shutdown()


@pytest_twisted.ensureDeferred
async def test_too_many_jobs(tmp_path: Path) -> None:
    """Past the running-job maximum, start is refused and nothing is started."""
    m = make_manager(tmp_path, max_running_jobs=2, default_grace=1)
    try:
        for _ in range(2):
            await m.start(spec("sleep", "1000"), "alice")
        with pytest.raises(TooManyJobs):
            await m.start(spec("sleep", "1000"), "alice")
        assert len(m.list()) == 2
    finally:
        await m.shutdown()


@pytest_twisted.ensureDeferred
async def test_list_filters(manager: JobManager) -> None:
    """Listing filters by owner and status, oldest first."""
    a = await manager.start(spec("true"), "alice")
    await manager.wait(a.id)
    b = await manager.start(spec("sleep", "1000"), "bob")
    c = await manager.start(spec("true"), "alice")
    await manager.wait(c.id)
    assert [j.id for j in manager.list()] == [a.id, b.id, c.id]
    assert [j.id for j in manager.list(owner="alice")] == [a.id, c.id]
    assert [j.id for j in manager.list(statuses={JobStatus.RUNNING})] == [b.id]
    assert manager.list(owner="bob", statuses={JobStatus.EXITED}) == []


@pytest_twisted.ensureDeferred
async def test_purge(manager: JobManager) -> None:
    """Purging removes an ended job and its files; a running one is a conflict."""
    running = await manager.start(spec("sleep", "1000"), "alice")
    with pytest.raises(JobConflict):
        manager.purge(running.id)
    done = await manager.start(spec("/bin/echo", "hi"), "alice")
    await manager.wait(done.id)
    manager.purge(done.id)
    with pytest.raises(JobNotFound):
        manager.get(done.id)
    assert not (manager.data_dir / "jobs" / done.id).exists()


@pytest_twisted.ensureDeferred
async def test_shutdown_stops_jobs_and_wakes_readers(tmp_path: Path) -> None:
    """Shutdown stops every job, answers waiting readers and refuses new jobs."""
    m = make_manager(tmp_path, default_grace=5)
    job = await m.start(spec("sleep", "1000"), "alice")
    reading = Deferred.fromCoroutine(m.read_output(job.id, wait=60))
    await m.shutdown()
    chunk = await reading
    assert chunk.complete
    again = make_manager(tmp_path)
    try:
        assert again.get(job.id).status is JobStatus.STOPPED
    finally:
        await again.shutdown()


@pytest_twisted.ensureDeferred
async def test_records_and_output_survive_restart(tmp_path: Path) -> None:
    """After a clean restart, records and output read back the same."""
    m = make_manager(tmp_path)
    job = await m.start(spec("/bin/echo", "kept"), "alice")
    ended = await m.wait(job.id)
    await m.shutdown()
    again = make_manager(tmp_path)
    try:
        assert again.get(job.id) == ended
        assert (await again.read_output(job.id)).data == b"kept\n"
    finally:
        await again.shutdown()


def test_crash_mid_job_marks_lost_and_kills(tmp_path: Path) -> None:
    """A server killed mid-job: at next start the job is lost, its processes gone,
    its output before the crash kept."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.helpers.crashing_server",
            str(tmp_path),
            "/bin/sh",
            "-c",
            "echo before-crash; sleep 1000 & sleep 1000",
        ],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert server.stdout is not None
        job_id = server.stdout.readline().decode().strip()
        assert len(job_id) == 32, job_id
    finally:
        server.kill()
        server.wait()
    crashed = make_manager_sync_peek(tmp_path, job_id)
    assert crashed["status"] == "running"
    survivors = session_members(crashed["pid"])
    assert len(survivors) >= 2  # the job outlived its server

    again = JobManager(reactor, tmp_path)
    again.open()
    try:
        record = again.get(job_id)
        assert record.status is JobStatus.LOST
        assert record.error == "the server stopped while the job was running"
        psutil.wait_procs(survivors, timeout=5)
        assert session_members(crashed["pid"]) == []
        chunk = again.output_log(job_id).read(Stream.COMBINED, 0, 100)
        assert (chunk.data, chunk.complete) == (b"before-crash\n", True)
    finally:
        again.store.close()


def make_manager_sync_peek(data_dir: Path, job_id: str) -> dict[str, Any]:
    """Read a job's stored row straight from SQLite, as the crash left it."""
    import sqlite3

    db = sqlite3.connect(data_dir / "jobworker.sqlite3")
    db.row_factory = sqlite3.Row
    try:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        db.close()
    return dict(row)
