"""
The data directory's disk filling up, on a real 8 MiB tmpfs made per test.

Job output and the SQLite database share that disk. Output may use it only
down to a reserve (``Settings.disk_reserve``) kept for the records, so a job
that floods it is stopped and its record still written. When something else
fills the disk to the last byte, a job whose output cannot be written is
stopped all the same; its record, which SQLite cannot write then ("database
or disk is full"), is kept in memory, served from there, and written once
there is room again. Meanwhile the server answers, refuses new jobs with
``StorageFull``, and earlier output stays as it was.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.web.iweb import IRequest

from jobworker.auth.policy import Identity, Policy
from jobworker.http.site import Api
from jobworker.jobs.diskspace import DiskSpace
from jobworker.jobs.errors import StorageFull
from jobworker.jobs.output import OutputLog
from jobworker.jobs.record import Job
from jobworker.jobs.running import JobBounds, RunningJob
from jobworker.jobs.service import JobManager, Settings
from jobworker.jobs.spec import JobSpec, parse_job_spec
from jobworker.linux.launcher import LaunchRequest
from jobworker.wire import JobStatus, Stream

reactor: Any = global_reactor
EXAMPLE_POLICY = Path(__file__).parents[2] / "examples" / "policy.toml"
PYTHON = "/usr/bin/python3"
KiB, MiB = 1 << 10, 1 << 20
RESERVE = MiB
DISK_FULL = (
    "writing output failed: no space left on the data directory's disk"
    f" (the last {RESERVE} bytes are kept for job records)"
)

# A known byte sequence, written in 4 KiB pieces, each after a pause: on
# disk, a job's output must be exactly its first N bytes for some N.
PATTERN = "bytes(((i * 131 + i // 256) & 0xFF) for i in range({n}))"
WRITE_SLOWLY = f"""
import os, time
data = {PATTERN.format(n=8 * MiB)}
for start in range(0, len(data), 4096):
    os.write(1, data[start:start + 4096])
    time.sleep(0.002)
"""
WRITE_AT_ONCE = f"""
import sys
sys.stdout.buffer.write({PATTERN.format(n=MiB)})
"""


def pattern(n: int) -> bytes:
    return bytes(((i * 131 + i // 256) & 0xFF) for i in range(n))


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted at the end."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs"]
    subprocess.run([*mount, str(mountpoint)], check=True)
    yield mountpoint
    subprocess.run(["umount", str(mountpoint)], check=True)


@pytest.fixture
def manager(disk: Path) -> Iterator[JobManager]:
    settings = Settings(default_grace=1, disk_reserve=RESERVE, save_retry=0.1)
    manager = JobManager(reactor, disk / "data", settings)
    manager.open()
    yield manager
    pytest_twisted.blockon(Deferred.fromCoroutine(manager.shutdown()))


async def start(manager: JobManager, command: str, *args: str) -> Job:
    spec = parse_job_spec({"command": command, "args": list(args)})
    return await manager.start(spec, "alice", run_as="nobody")


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def earlier_job(manager: JobManager) -> Job:
    """A job that wrote 1 MiB and ended, before the disk filled."""
    job = await start(manager, PYTHON, "-c", WRITE_AT_ONCE)
    ended = await manager.wait(job.id)
    assert (ended.status, ended.exit_code) == (JobStatus.EXITED, 0)
    return ended


async def assert_earlier_output_intact(manager: JobManager, job: Job) -> None:
    chunk = await manager.read_output(job.id, Stream.STDOUT, limit=2 * MiB)
    assert (chunk.data == pattern(MiB), chunk.complete) == (True, True)


def stored(manager: JobManager, job_id: str) -> dict[str, Any]:
    """The job's row as the database holds it, read by another connection."""
    path = manager.data_dir / "jobworker.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        db.close()
    return dict(row)


def fill(directory: Path) -> Path:
    """Take every free byte of the disk ``directory`` is on."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(64 * KiB))
        except OSError as e:
            assert e.errno == 28  # ENOSPC
        try:
            while True:  # the last partial block
                f.write(b"\0")
        except OSError as e:
            assert e.errno == 28
    assert os.statvfs(directory).f_bavail == 0
    return filler


class FakeDisk:
    """statvfs of a disk with ``free`` bytes in 1 KiB blocks; counts calls."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.calls = 0

    def statvfs(self, path: Path) -> os.statvfs_result:
        self.calls += 1
        blocks = self.free // KiB
        return os.statvfs_result((KiB, KiB, 0, 0, blocks, 0, 0, 0, 0, 255))


def test_budget_measures_the_disk_once_per_budget() -> None:
    """Output draws on a budget; the disk is asked again only when it runs out."""
    disk = FakeDisk(free=100 * KiB)
    space = DiskSpace(
        Path("/data"), reserve=10 * KiB, recheck=40 * KiB, statvfs=disk.statvfs
    )
    assert [space.claim(10 * KiB) for _ in range(4)] == [10 * KiB] * 4
    assert disk.calls == 1  # one budget of 40 KiB, the cap
    disk.free -= 40 * KiB
    assert space.claim(KiB) == KiB
    assert disk.calls == 2  # spent: measured again, 50 KiB of room, capped


def test_budget_grants_part_then_nothing_at_the_reserve() -> None:
    """A write larger than the room left gets the part that fits, then none."""
    disk = FakeDisk(free=30 * KiB)
    space = DiskSpace(Path("/data"), reserve=10 * KiB, statvfs=disk.statvfs)
    assert space.claim(25 * KiB) == 20 * KiB
    disk.free = 10 * KiB
    assert (space.claim(1), space.room(), space.free()) == (0, 0, 10 * KiB)
    disk.free = 5 * KiB  # others ate into the reserve
    assert (space.claim(1), space.room()) == (0, 0)


def running_job(directory: Path, space: DiskSpace | None = None) -> RunningJob:
    """A job that is running, with no process behind it."""
    record = Job(
        id="a" * 32,
        owner="alice",
        spec=JobSpec(command="cat"),
        status=JobStatus.RUNNING,
        created_at="2026-11-22T10:00:00.000Z",
    )
    log = OutputLog.create(directory, Clock())
    request = LaunchRequest("/bin/cat", ("cat",))
    bounds = JobBounds(output_limit=MiB, default_grace=10.0)
    return RunningJob(
        record, log, Clock(), lambda job: None, bounds, request, space=space
    )


def test_no_output_kept_after_a_gap_for_want_of_room(tmp_path: Path) -> None:
    """Once output is dropped for want of room, later output is dropped too,
    even when room comes back: the output kept is the start of what was written."""
    disk = FakeDisk(free=11 * KiB)
    space = DiskSpace(tmp_path, reserve=10 * KiB, statvfs=disk.statvfs)
    job = running_job(tmp_path / "out", space)
    job.output_received(Stream.STDOUT, b"a" * 1000)
    disk.free = 10 * KiB  # others took the rest
    job.output_received(Stream.STDOUT, b"b" * 100)
    disk.free = 100 * KiB
    job.output_received(Stream.STDOUT, b"c" * 10)
    assert (job.record.status, job.output.total) == (JobStatus.STOPPING, 1000)
    assert job.output.read(Stream.STDOUT, 0, MiB).data == b"a" * 1000
    assert job._ending.error == (
        "writing output failed: no space left on the data directory's disk"
        " (the last 10240 bytes are kept for job records)"
    )


def test_no_output_kept_after_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a write the disk refused, later output is dropped, even if the
    disk would take it: no gap in the middle of a job's output."""
    job = running_job(tmp_path / "out")
    job.output_received(Stream.STDOUT, b"first ")
    write = job.output.write

    def refuse(stream: Stream, data: bytes) -> None:
        monkeypatch.setattr(job.output, "write", write)  # room again after this
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(job.output, "write", refuse)
    job.output_received(Stream.STDOUT, b"lost ")
    job.output_received(Stream.STDOUT, b"later")
    assert job.output.read(Stream.COMBINED, 0, MiB).data == b"first "
    assert (job.record.status, job._ending.error) == (
        JobStatus.STOPPING,
        "writing output failed: No space left on device",
    )


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_flood_stops_at_reserve_and_its_record_is_written(
    manager: JobManager,
) -> None:
    """A job flooding the disk is stopped where the reserve begins, its record
    written, new jobs refused until space is freed; earlier output intact."""
    earlier = await earlier_job(manager)
    flood = await start(manager, "/bin/cat", "/dev/zero")
    ended = await manager.wait(flood.id)
    assert (ended.status, ended.exit_code, ended.error) == (
        JobStatus.STOPPED,
        None,
        DISK_FULL,
    )
    # Stopped with no grace: SIGTERM, then at once SIGKILL; which ended cat
    # is a race, and either is right.
    assert ended.signal in (signal.SIGTERM, signal.SIGKILL)
    record = stored(manager, flood.id)
    assert (record["status"], record["error"]) == ("stopped", DISK_FULL)
    size = manager.output_sizes(flood.id)["stdout"]
    assert size > 4 * MiB
    chunk = await manager.read_output(flood.id, limit=8 * MiB)
    assert (chunk.data == bytes(size), chunk.complete) == (True, True)
    assert 0 < os.statvfs(manager.data_dir).f_bavail * 4096 <= RESERVE

    with pytest.raises(StorageFull) as refused:
        await start(manager, "/bin/echo", "no room")
    assert str(refused.value).startswith("no room for a new job: the data directory")
    assert [j.id for j in manager.list()] == [earlier.id, flood.id]
    await assert_earlier_output_intact(manager, earlier)

    manager.purge(flood.id)
    job = await start(manager, "/bin/echo", "room again")
    again = await manager.wait(job.id)
    assert (again.status, again.exit_code) == (JobStatus.EXITED, 0)
    assert (await manager.read_output(job.id)).data == b"room again\n"


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_disk_filled_by_another(manager: JobManager) -> None:
    """When something else takes the last byte, the writing job is stopped, its
    record served from memory until the database can take it; the server
    answers throughout; output before the disk filled is kept exactly."""
    earlier = await earlier_job(manager)
    writer = await start(manager, PYTHON, "-c", WRITE_SLOWLY)
    deadline = time.monotonic() + 10
    while (written := manager.output_log(writer.id).total) < 64 * KiB:
        assert time.monotonic() < deadline, f"only {written} bytes written"
        await manager.read_output(writer.id, offset=written, wait=1)
    filler = fill(manager.data_dir)

    ended = await manager.wait(writer.id)
    assert (ended.status, ended.exit_code, ended.error) == (
        JobStatus.STOPPED,
        None,
        "writing output failed: No space left on device",
    )
    assert ended.signal in (signal.SIGTERM, signal.SIGKILL)
    # The database could not take the record: it still says running.
    assert stored(manager, writer.id)["status"] == "running"
    assert manager.get(writer.id) == ended
    assert manager.list(statuses={JobStatus.STOPPED}) == [ended]
    assert manager.list(statuses={JobStatus.RUNNING}) == []
    size = manager.output_sizes(writer.id)["stdout"]
    assert size >= 64 * KiB
    chunk = await manager.read_output(writer.id, Stream.STDOUT, limit=8 * MiB)
    assert (chunk.data == pattern(size), chunk.complete) == (True, True)
    await assert_earlier_output_intact(manager, earlier)
    with pytest.raises(StorageFull):
        await start(manager, "/bin/echo", "no room")
    await assert_api_answers(manager, writer.id)

    filler.unlink()
    deadline = time.monotonic() + 5
    while stored(manager, writer.id)["status"] != "stopped":
        assert time.monotonic() < deadline, "the record never reached the database"
        await sleep(0.05)
    assert stored(manager, writer.id)["error"] == ended.error
    assert manager.get(writer.id) == ended
    job = await start(manager, "/bin/echo", "room again")
    assert (await manager.wait(job.id)).exit_code == 0


async def assert_api_answers(manager: JobManager, job_id: str) -> None:
    """Health and the job's record over HTTP, from an in-memory client."""

    def alice(request: IRequest) -> Identity:
        return Identity("alice")

    api = Api(manager, Policy.from_toml(EXAMPLE_POLICY), identify=alice)
    client: Any = StubTreq(api.root())
    health = await client.get("https://jobworker/v1/healthz")
    assert health.code == 200
    response = await client.get(f"https://jobworker/v1/jobs/{job_id}")
    record = await response.json()
    assert (response.code, record["status"]) == (200, "stopped")
