"""
Job cgroups with real processes: signals reach what a (fake) cgroup lists
and nothing else; then, as root, the operations on this host's real
hierarchies: limits enforced, usage counted, every process killed, nothing
left behind. The same operations on a fake cgroupfs alone are unit tests
(``tests/unit/test_cgroup_*.py``).
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from twisted.internet.task import Clock

from jobworker.jobs.confinement import (
    KILL_RETRIES,
    Confinement,
    JobConfinement,
)
from jobworker.linux.cgroups import (
    CgroupDriver,
    CgroupLimits,
    CgroupUnavailable,
    CgroupV1Driver,
    CgroupV1Job,
    CgroupV2Driver,
    CgroupV2Job,
    JobCgroup,
    default_io_devices,
    detect,
)
from jobworker.linux.cgroups.members import signal_members
from tests.conftest import skip_or_fail
from tests.fake_cgroupfs import v1_job_files

MiB = 1 << 20
PYTHON = "/usr/bin/python3"
pytest_plugins = ["tests.fake_cgroupfs"]

# -- real processes in a fake cgroup, the host's /proc ---------------------------


def test_v1_kill_all_freezes(v1: CgroupV1Driver) -> None:
    """kill_all() freezes the job, signals what it holds, then thaws it."""
    job = v1.create("j1")
    v1_job_files(job)
    member = subprocess.Popen(["sleep", "60"])
    try:
        (job.paths["freezer"] / "cgroup.procs").write_text(f"{member.pid}\n")
        assert job.kill_all() is True  # the fake reads FROZEN once written
        assert member.wait(10) == -signal.SIGKILL
    finally:
        member.kill()
        member.wait()
    state = (job.paths["freezer"] / "freezer.state").read_text()
    assert state == "FROZEN\nTHAWED\n"


def test_default_io_devices_none() -> None:
    """A filesystem without a block device (proc) has no device to throttle."""
    assert default_io_devices("/proc/self") == []


# -- signalling only what is still there ----------------------------------------


def test_signal_only_listed_processes() -> None:
    """A process gone from the cgroup by the time it is pinned is not signalled."""
    stays = subprocess.Popen(["sleep", "30"])
    leaves = subprocess.Popen(["sleep", "30"])
    calls: list[set[int]] = []

    def listed() -> set[int]:
        # Both at first; once pinned, only one is still "in the cgroup".
        calls.append({stays.pid, leaves.pid} if not calls else {stays.pid})
        return calls[-1]

    try:
        assert signal_members(listed, signal.SIGTERM) == 1
        assert stays.wait(5) == -signal.SIGTERM
        assert leaves.poll() is None
    finally:
        for p in (stays, leaves):
            p.kill()
            p.wait()


# -- the real thing -------------------------------------------------------------


class RealCgroups:
    """A driver on this host's cgroups with a throwaway parent, and its jobs."""

    def __init__(self, driver: CgroupDriver) -> None:
        self.driver = driver
        self.jobs: list[JobCgroup] = []
        self.processes: list[subprocess.Popen[str]] = []

    def create(self, limits: CgroupLimits | None = None) -> JobCgroup:
        job = self.driver.create(f"test-{secrets.token_hex(4)}")
        self.jobs.append(job)
        if limits is not None:
            job.set_limits(limits)
        return job

    def spawn(self, job: JobCgroup, *argv: str) -> subprocess.Popen[str]:
        """Run ``argv`` in ``job``: it joins before exec, as the helper does."""
        paths = job.procs_paths()

        def join() -> None:
            for path in paths:
                with open(path, "w") as f:
                    f.write("0")

        process = subprocess.Popen(
            argv, preexec_fn=join, stdout=subprocess.PIPE, text=True
        )
        self.processes.append(process)
        return process

    def cleanup(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        left = self.driver.leftovers()
        for job in (job for job in self.jobs if job.job_id in left):
            wait_for(functools.partial(emptied, job))
            assert job.remove()
        for directory in self.parents():
            directory.rmdir()

    def parents(self) -> list[Path]:
        if isinstance(self.driver, CgroupV2Driver):
            return [self.driver.base]
        assert isinstance(self.driver, CgroupV1Driver)
        return [h.base for h in self.driver.hierarchies]


def emptied(job: JobCgroup) -> bool:
    """Whether ``job`` is empty; if not, kill what is there (again)."""
    if job.is_empty():
        return True
    job.kill_all()
    return False


def run_retries(clock: Clock, pause: float = 0.0) -> None:
    """Run the confinement's retries, each when its time comes on ``clock``,
    after ``pause`` seconds of real time (for processes to do their part)."""
    while calls := clock.getDelayedCalls():
        time.sleep(pause)
        clock.advance(min(c.getTime() for c in calls) - clock.seconds())


def job_dirs(job: JobCgroup) -> list[Path]:
    """The job's directory in each hierarchy."""
    if isinstance(job, CgroupV2Job):
        return [job.path]
    assert isinstance(job, CgroupV1Job)
    return job.dirs()


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        time.sleep(0.01)


@pytest.fixture
def real(tmp_path: Path) -> Iterator[RealCgroups]:
    try:
        driver = detect(
            io_devices=default_io_devices(str(tmp_path)),
            parent=f"jobworker-test-{secrets.token_hex(4)}",
        )
    except CgroupUnavailable as e:
        skip_or_fail(str(e))
    driver.prepare()
    cgs = RealCgroups(driver)
    yield cgs
    cgs.cleanup()


def control(job: JobCgroup, controller: str, name: str) -> str:
    """A control file of ``job`` as the kernel shows it."""
    if isinstance(job, CgroupV2Job):
        return (job.path / name).read_text()
    assert isinstance(job, CgroupV1Job)
    return (job.paths[controller] / name).read_text()


def is_gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@pytest.mark.root
def test_real_limits_read_back(real: RealCgroups) -> None:
    """The limits written are what the kernel then shows in the control files."""
    if not real.driver.io_devices:
        skip_or_fail("no block device under the test directory")
    (major, minor), *_ = real.driver.io_devices
    job = real.create(
        CgroupLimits(cpu=0.5, memory=48 * MiB, pids=12, read_bps=3 * MiB, write_iops=70)
    )
    if real.driver.version == 2:
        assert control(job, "cpu", "cpu.max") == "50000 100000\n"
        assert control(job, "memory", "memory.max") == "50331648\n"
        assert control(job, "memory", "memory.oom.group") == "1\n"
        assert control(job, "io", "io.max") == (
            f"{major}:{minor} rbps=3145728 wbps=max riops=max wiops=70\n"
        )
    else:
        assert control(job, "cpu", "cpu.cfs_quota_us") == "50000\n"
        assert control(job, "cpu", "cpu.cfs_period_us") == "100000\n"
        assert control(job, "memory", "memory.limit_in_bytes") == "50331648\n"
        if "swap" in real.driver.available():
            memsw = control(job, "memory", "memory.memsw.limit_in_bytes")
            assert memsw == "50331648\n"
        read_bps = control(job, "blkio", "blkio.throttle.read_bps_device")
        assert read_bps == f"{major}:{minor} 3145728\n"
        write_iops = control(job, "blkio", "blkio.throttle.write_iops_device")
        assert write_iops == f"{major}:{minor} 70\n"
        assert control(job, "blkio", "blkio.throttle.write_bps_device") == ""
    assert control(job, "pids", "pids.max") == "12\n"


@pytest.mark.root
def test_real_join_signal_and_remove(real: RealCgroups) -> None:
    """A child joins every hierarchy; SIGTERM reaches all of its processes."""
    job = real.create()
    assert job.is_empty()
    sh = real.spawn(job, "/bin/sh", "-c", "sleep 30 & sleep 30 & echo ready; wait")
    assert sh.stdout is not None and sh.stdout.readline() == "ready\n"
    pids = job.pids()
    assert len(pids) == 3 and sh.pid in pids
    assert not job.is_empty()
    assert not job.remove()  # busy: processes inside
    assert job.signal_all(signal.SIGTERM) == 3
    assert sh.wait(5) == -signal.SIGTERM
    wait_for(job.is_empty)
    assert all(is_gone(pid) for pid in pids)
    assert job.remove()
    assert real.driver.leftovers() == []


@pytest.mark.root
def test_real_kill_all_escapees(real: RealCgroups) -> None:
    """kill_all() also kills a double-forked child that left the session."""
    job = real.create()
    script = """if 1:
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        os.wait()
        print("ready", flush=True)
        time.sleep(60)
    """
    parent = real.spawn(job, PYTHON, "-c", script)
    assert parent.stdout is not None and parent.stdout.readline() == "ready\n"
    pids = job.pids()
    (escapee,) = pids - {parent.pid}
    assert os.getsid(escapee) != os.getsid(parent.pid)
    job.kill_all()
    assert parent.wait(5) == -signal.SIGKILL
    wait_for(job.is_empty)
    wait_for(lambda: is_gone(escapee))
    if isinstance(job, CgroupV1Job):
        assert control(job, "freezer", "freezer.state") == "THAWED\n"


@pytest.mark.root
def test_real_cpu_quota(real: RealCgroups) -> None:
    """0.2 cores hold a busy loop near 20% of one CPU; usage counts it."""
    job = real.create(CgroupLimits(cpu=0.2))
    started = time.monotonic()
    loop = real.spawn(job, "/bin/sh", "-c", "while :; do :; done")
    time.sleep(1.0)
    used = job.usage().cpu_seconds
    share = used / (time.monotonic() - started)
    job.kill_all()
    assert loop.wait(5) == -signal.SIGKILL
    assert 0.1 < share < 0.4, share


@pytest.mark.root
def test_real_oom_kill(real: RealCgroups) -> None:
    """Allocating past a 32 MiB limit is an OOM kill, seen in usage()."""
    limit = 32 * MiB
    job = real.create(CgroupLimits(memory=limit))
    assert job.usage().oom_killed is False
    hog = real.spawn(job, PYTHON, "-c", "b = bytearray(200 * 1024 * 1024)")
    assert hog.wait(10) == -signal.SIGKILL
    usage = job.usage()
    assert usage.oom_killed is True
    peak = usage.memory_peak
    assert peak is not None and 0.75 * limit < peak <= limit


@pytest.mark.root
def test_real_pids_limit(real: RealCgroups) -> None:
    """pids.max 4 lets a process fork three children, then refuses with EAGAIN."""
    job = real.create(CgroupLimits(pids=4))
    script = """if 1:
        import os, signal
        forked = 0
        try:
            while forked < 10:
                if os.fork() == 0:
                    signal.pause()
                forked += 1
        except BlockingIOError as e:
            print(forked, e.strerror, flush=True)
        signal.pause()
    """
    forker = real.spawn(job, PYTHON, "-c", script)
    assert forker.stdout is not None
    assert forker.stdout.readline() == "3 Resource temporarily unavailable\n"
    assert len(job.pids()) == 4
    job.kill_all()
    wait_for(job.is_empty)


def timed_dd(real: RealCgroups, job: JobCgroup, *args: str) -> float:
    started = time.monotonic()
    dd = real.spawn(job, "dd", *args, "bs=64k", "status=none")
    assert dd.wait(10) == 0
    return time.monotonic() - started


@pytest.mark.root
def test_real_io_bps(real: RealCgroups, tmp_path: Path) -> None:
    """4 MiB/s read and write limits make 2 MiB of direct IO take 0.5 s each."""
    if not real.driver.io_devices:
        skip_or_fail("no block device under the test directory")
    job = real.create(CgroupLimits(read_bps=4 * MiB, write_bps=4 * MiB))
    data = tmp_path / "data"
    write = timed_dd(
        real, job, "if=/dev/zero", f"of={data}", "count=32", "oflag=direct"
    )
    read = timed_dd(real, job, f"if={data}", "of=/dev/null", "iflag=direct")
    assert data.stat().st_size == 2 * MiB
    assert 0.4 < write < 2.0, write
    assert 0.4 < read < 2.0, read
    usage = job.usage()
    assert usage.io_read_bytes >= 2 * MiB
    assert usage.io_write_bytes >= 2 * MiB


@pytest.mark.root
def test_real_io_iops(real: RealCgroups, tmp_path: Path) -> None:
    """A 40 IO/s read limit makes 40 direct reads take a second."""
    if not real.driver.io_devices:
        skip_or_fail("no block device under the test directory")
    data = tmp_path / "data"
    data.write_bytes(b"x" * 40 * 65536)
    job = real.create(CgroupLimits(read_iops=40))
    read = timed_dd(real, job, f"if={data}", "of=/dev/null", "iflag=direct")
    assert 0.75 < read < 3.0, read


@pytest.mark.root
def test_real_leftovers(real: RealCgroups) -> None:
    """leftovers() finds job cgroups left from before; open() then removes them."""
    first, second = real.create(), real.create()
    assert real.driver.leftovers() == sorted([first.job_id, second.job_id])
    again = real.driver.open(first.job_id)
    assert again.is_empty()
    assert again.remove()
    assert real.driver.leftovers() == [second.job_id]


@pytest.mark.root
def test_real_reclaim_leftover_of_ended_job(real: RealCgroups) -> None:
    """At start-up, the cgroup of a job that ended (not lost) but stayed busy
    is emptied and removed in every hierarchy; one of a job the server does
    not know (another server's, sharing the parent) is left alone."""
    ended, theirs = real.create(), real.create()
    sleeper = real.spawn(ended, "sleep", "1000")
    other = real.spawn(theirs, "sleep", "1000")
    assert ended.pids() == {sleeper.pid}
    assert all((parent / ended.job_id).is_dir() for parent in real.parents())
    clock = Clock()
    # What the manager passes: its store's job ids; none of them is lost.
    reclaimed = Confinement(real.driver, "", clock).reclaim({ended.job_id, "gone"})
    assert reclaimed == 1
    assert sleeper.wait(5) == -signal.SIGKILL
    assert is_gone(sleeper.pid)
    wait_for(ended.is_empty)
    run_retries(clock)
    assert [p for p in real.parents() if (p / ended.job_id).exists()] == []
    assert real.driver.leftovers() == [theirs.job_id]
    assert other.poll() is None
    assert theirs.pids() == {other.pid}


@pytest.mark.root
def test_real_reclaim_partly_removed_leftover(real: RealCgroups) -> None:
    """A leftover whose removal was cut short (on v1, gone from some
    hierarchies only) is found empty and removed from the others."""
    job = real.create()
    dirs = job_dirs(job)
    for directory in dirs[1:]:
        directory.rmdir()
    clock = Clock()
    assert Confinement(real.driver, "", clock).reclaim({job.job_id}) == 1
    assert clock.getDelayedCalls() == []
    assert [d for d in dirs if d.exists()] == []
    assert real.driver.leftovers() == []


@pytest.mark.root
def test_real_kill_reaches_a_fork_storm(real: RealCgroups) -> None:
    """SIGKILL through the confinement ends processes that fork and exit as
    fast as they can, however slowly the freezer then freezes them: a kill
    not sure to have reached them all is done again, never waited for."""
    job = real.create(CgroupLimits(pids=64))
    script = """if 1:
        import os
        for _ in range(3):
            os.fork()
        while True:
            try:
                if os.fork():
                    os._exit(0)
            except OSError:
                pass
    """
    real.spawn(job, PYTHON, "-c", script)
    wait_for(lambda: len(job.pids()) >= 4)
    clock = Clock()
    confinement = JobConfinement(job, clock)
    confinement.signal(signal.SIGKILL)
    run_retries(clock, pause=KILL_RETRIES[0])
    wait_for(job.is_empty)
    if isinstance(job, CgroupV1Job):
        assert control(job, "freezer", "freezer.state") == "THAWED\n"
    confinement.finish()
    run_retries(clock)
    assert real.driver.leftovers() == []
