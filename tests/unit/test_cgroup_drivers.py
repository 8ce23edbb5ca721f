"""
Both cgroup drivers on a fake cgroupfs: what they write for limits, read for
usage and emptiness, make and remove, and how a kill freezes, signals and
thaws. The fake lists only PIDs no process can have: nothing is signalled.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from jobworker.linux.cgroups import (
    CgroupError,
    CgroupLimits,
    CgroupUsage,
    CgroupV1Driver,
    CgroupV2Driver,
)
from jobworker.linux.cgroups.members import kill_frozen
from tests.fake_cgroupfs import (
    FAKE_PIDS,
    V1_DIRS,
    v1_job_files,
    v2_job_files,
    write_files,
)

pytest_plugins = ["tests.fake_cgroupfs"]
MiB = 1 << 20

# -- the v2 driver --------------------------------------------------------------


def test_v2_prepare_enables_controllers(v2: CgroupV2Driver, v2_own: Path) -> None:
    """prepare() enables the four controllers for the parent and its children."""
    write_files(v2_own, {"cgroup.subtree_control": "memory\n"})
    write_files(v2.base, {"cgroup.subtree_control": ""})
    v2.prepare()
    assert (v2_own / "cgroup.subtree_control").read_text() == "memory\n+cpu +io +pids\n"
    assert (
        v2.base / "cgroup.subtree_control"
    ).read_text() == "+cpu +io +memory +pids\n"


def test_v2_prepare_unreadable(v2: CgroupV2Driver, v2_own: Path) -> None:
    """A parent whose control file cannot be read fails prepare(), naming it."""
    write_files(v2_own, {"cgroup.subtree_control": "cpu io memory pids"})
    v2.base.mkdir()  # without the file the kernel would give it
    with pytest.raises(CgroupError, match=r"^read .*/jobworker/cgroup.subtree_"):
        v2.prepare()


def test_v2_server_leaves_its_cgroup(v2: CgroupV2Driver, v2_own: Path) -> None:
    """A server alone in its cgroup moves into the leaf beside the jobs' parent."""
    (v2_own / "cgroup.procs").write_text(f"{os.getpid()}\n")
    write_files(v2_own / "server", {"cgroup.procs": ""})
    v2._leave_own_cgroup()
    assert (v2_own / "server/cgroup.procs").read_text() == "0\n"


def test_v2_server_not_alone(v2: CgroupV2Driver, v2_own: Path) -> None:
    """A server sharing its cgroup with others is told to get one of its own."""
    (v2_own / "cgroup.procs").write_text(f"{os.getpid()}\n{FAKE_PIDS[0]}\n")
    with pytest.raises(CgroupError) as caught:
        v2._leave_own_cgroup()
    assert str(caught.value) == (
        f"cgroup v2: {v2_own} must hand controllers down to job cgroups, but it"
        " holds processes other than the server (1); run the server in a cgroup"
        " of its own (systemd: a service with Delegate=yes)"
    )
    assert not (v2_own / "server").exists()


def test_v2_limits(v2_own: Path) -> None:
    """Limits become cpu.max, memory.max without swap, OOM as a group, io.max."""
    driver = CgroupV2Driver(v2_own, io_devices=[(8, 0), (259, 0)])
    job = driver.open("j1")
    write_files(job.path, v2_job_files(**{"memory.swap.max": ""}))
    job.set_limits(
        CgroupLimits(
            cpu=0.5, memory=256 * MiB, pids=64, read_bps=20 * MiB, write_iops=500
        )
    )
    assert {f.name: f.read_text() for f in job.path.iterdir()} == {
        "cgroup.procs": "",
        "cgroup.kill": "",
        "cpu.max": "50000 100000\n",
        "memory.max": "268435456\n",
        "memory.oom.group": "1\n",
        "memory.swap.max": "0\n",
        "pids.max": "64\n",
        "io.max": "8:0 rbps=20971520 wiops=500\n259:0 rbps=20971520 wiops=500\n",
    }


def test_v2_limits_unset(v2: CgroupV2Driver) -> None:
    """Unset limits write nothing; without swap accounting no swap file is made."""
    job = v2.open("j1")
    write_files(job.path, v2_job_files())
    job.set_limits(CgroupLimits(memory=MiB))
    written = {f.name: f.read_text() for f in job.path.iterdir() if f.read_text()}
    assert written == {"memory.max": "1048576\n", "memory.oom.group": "1\n"}


def test_v2_create_and_remove(v2: CgroupV2Driver, v2_own: Path) -> None:
    """create() makes <own>/jobworker/<id>, joined through its one procs file."""
    write_files(v2_own, {"cgroup.subtree_control": "cpu io memory pids"})
    write_files(v2.base, {"cgroup.subtree_control": "cpu io memory pids"})
    job = v2.create("j1")
    assert job.path == v2_own / "jobworker/j1"
    assert job.path.is_dir()
    assert job.procs_paths() == [f"{v2_own}/jobworker/j1/cgroup.procs"]
    with pytest.raises(CgroupError, match=r"^create .*/j1: File exists$"):
        v2.create("j1")
    assert v2.leftovers() == ["j1"]
    assert job.remove()
    assert job.remove()  # already gone: nothing to do
    assert v2.leftovers() == []


def test_v2_usage(v2: CgroupV2Driver) -> None:
    """CgroupUsage sums io.stat over devices and sees a group OOM kill."""
    job = v2.open("j1")
    write_files(
        job.path,
        {
            "cpu.stat": "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
            "memory.peak": "9502720\n",
            "io.stat": "8:0 rbytes=4096 wbytes=10 rios=1 wios=1 dbytes=0 dios=0\n"
            "259:0 rbytes=100 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n",
            "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n"
            "oom_group_kill 1\n",
        },
    )
    assert job.usage() == CgroupUsage(1.5, 9502720, 4196, 30, True)


def test_v2_usage_old_kernel(v2: CgroupV2Driver) -> None:
    """Without memory.peak the peak is unknown; no OOM kill counted is False."""
    job = v2.open("j1")
    write_files(
        job.path,
        {
            "cpu.stat": "usage_usec 20\n",
            "io.stat": "",
            "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
        },
    )
    assert job.usage() == CgroupUsage(0.00002, None, 0, 0, False)


def test_v2_kill_and_emptiness(v2: CgroupV2Driver) -> None:
    """kill_all() writes 1 to cgroup.kill; emptiness is cgroup.events' populated."""
    job = v2.open("j1")
    write_files(job.path, {"cgroup.kill": "", "cgroup.events": "populated 1\n"})
    assert job.kill_all() is True  # the kernel's kill misses nothing
    assert (job.path / "cgroup.kill").read_text() == "1\n"
    assert not job.is_empty()
    (job.path / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    assert job.is_empty()


@pytest.mark.parametrize("frozen", [0, 1])
def test_v2_kill_without_cgroup_kill(v2: CgroupV2Driver, frozen: int) -> None:
    """Before cgroup.kill, kill_all() freezes, kills each process and thaws;
    it is sure to have reached all only if cgroup.events said frozen."""
    job = v2.open("j1")
    events = f"populated 1\nfrozen {frozen}\n"
    write_files(
        job.path, {"cgroup.freeze": "", "cgroup.procs": "", "cgroup.events": events}
    )
    assert job.kill_all() is bool(frozen)
    assert (job.path / "cgroup.freeze").read_text() == "1\n0\n"


def test_v2_describe(v2: CgroupV2Driver, v2_own: Path) -> None:
    """The start-up line names the parent and the limits enforced."""
    assert v2.available() == ("cpu", "memory", "pids", "io")
    # The root cgroup has no swap file; the parent made for jobs has.
    write_files(v2.base, {"memory.swap.max": "max\n"})
    assert v2.available() == ("cpu", "memory", "swap", "pids", "io")
    assert v2.describe() == (
        f"cgroup v2: jobs in {v2_own}/jobworker; limits: cpu,"
        " memory (swap included), pids, io on 8:0"
    )


# -- the v1 driver --------------------------------------------------------------


def test_v1_create(v1: CgroupV1Driver, tmp_path: Path) -> None:
    """create() makes the job's directory once in each hierarchy needed."""
    job = v1.create("j1")
    expected = sorted(tmp_path / d / "jobworker/j1" for d in V1_DIRS.values())
    assert job.dirs() == expected
    assert all(d.is_dir() for d in expected)
    # tasks: the single-threaded helper joins without the threadgroup lock
    assert job.procs_paths() == [f"{d}/tasks" for d in expected]
    assert job.paths["cpu"] == job.paths["cpuacct"]
    assert not (tmp_path / "sys/fs/cgroup/cpuset/jobworker").exists()


def test_v1_create_undone(v1: CgroupV1Driver, tmp_path: Path) -> None:
    """A job cgroup that cannot be made in every hierarchy is made in none."""
    v1.prepare()
    (tmp_path / V1_DIRS["pids"] / "jobworker/j1").write_text("in the way")
    with pytest.raises(CgroupError, match=r"^create .*/pids/jobworker/j1: File ex"):
        v1.create("j1")
    assert v1.leftovers() == []


def test_v1_limits(v1: CgroupV1Driver) -> None:
    """Limits become CFS quota, memory and memory+swap, pids.max, throttles."""
    job = v1.create("j1")
    v1_job_files(job)
    job.set_limits(
        CgroupLimits(
            cpu=0.25,
            memory=64 * MiB,
            pids=10,
            read_bps=MiB,
            write_bps=2 * MiB,
            read_iops=100,
            write_iops=50,
        )
    )
    written = {
        f.name: f.read_text() for d in job.dirs() for f in d.iterdir() if f.read_text()
    }
    assert written == {
        "cpu.cfs_period_us": "100000\n",
        "cpu.cfs_quota_us": "25000\n",
        "memory.limit_in_bytes": "67108864\n",
        "memory.memsw.limit_in_bytes": "67108864\n",
        "pids.max": "10\n",
        "blkio.throttle.read_bps_device": "8:0 1048576\n",
        "blkio.throttle.write_bps_device": "8:0 2097152\n",
        "blkio.throttle.read_iops_device": "8:0 100\n",
        "blkio.throttle.write_iops_device": "8:0 50\n",
    }


def test_v1_limits_without_swap_accounting(v1: CgroupV1Driver) -> None:
    """Without memory.memsw files only memory is limited, and swap is not listed."""
    job = v1.create("j1")
    v1_job_files(job)
    for memory in (job.paths["memory"], job.paths["memory"].parent.parent):
        (memory / "memory.memsw.limit_in_bytes").unlink()
    job.set_limits(CgroupLimits(memory=MiB))
    assert (job.paths["memory"] / "memory.limit_in_bytes").read_text() == "1048576\n"
    assert not (job.paths["memory"] / "memory.memsw.limit_in_bytes").exists()
    assert v1.available() == ("cpu", "memory", "pids", "io")


def test_v1_usage(v1: CgroupV1Driver) -> None:
    """CgroupUsage reads cpuacct, the memory high-water mark, blkio bytes, OOM kills."""
    job = v1.open("j1")
    v1_job_files(
        job,
        **{
            "cpuacct.usage": "2500000000\n",
            "memory.max_usage_in_bytes": "33554432\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            "blkio.throttle.io_service_bytes_recursive": "8:0 Read 4096\n"
            "8:0 Write 512\n8:0 Sync 0\n8:0 Async 4608\n8:0 Discard 0\n"
            "8:0 Total 4608\n8:16 Read 1\n8:16 Write 2\nTotal 4611\n",
        },
    )
    assert job.usage() == CgroupUsage(2.5, 33554432, 4097, 514, True)


def test_v1_kill_all_of_an_empty_job_touches_nothing(v1: CgroupV1Driver) -> None:
    """kill_all() of a job with no process left (the usual case once its
    command has ended) reads one file and freezes nothing."""
    job = v1.create("j1")
    v1_job_files(job)
    assert job.kill_all() is True
    assert (job.paths["freezer"] / "freezer.state").read_text() == ""
    assert job.is_empty()


def test_v1_members_are_the_freezers(v1: CgroupV1Driver) -> None:
    """Signalling reads the freezer's list alone; emptiness asks every
    hierarchy."""
    job = v1.create("j1")
    v1_job_files(job)
    (job.paths["pids"] / "cgroup.procs").write_text("4242\n")
    assert job.members() == set()
    assert job.pids() == {4242}
    assert not job.is_empty()


@pytest.mark.parametrize(
    ("states", "passes", "sure"),
    [
        ([True], 1, True),  # frozen at once: one listing is everything
        ([False, True], 2, True),  # frozen after signalling: listed again
        ([False, False], 1, False),  # still freezing: the caller calls again
    ],
)
def test_kill_frozen_checks_the_freezer(
    states: list[bool], passes: int, sure: bool
) -> None:
    """Processes are listed and signalled again once the freezer is seen
    frozen; while it is still freezing the kill says it is not sure. It
    always thaws, and never waits."""
    freezes: list[bool] = []
    listings: list[int] = []

    def list_pids() -> set[int]:
        listings.append(1)
        return set()

    is_frozen = iter(states).__next__
    assert kill_frozen(freezes.append, is_frozen, list_pids) is sure
    assert (len(listings), freezes) == (passes, [True, False])


def test_kill_frozen_thaws_on_error() -> None:
    """A listing that fails still thaws the cgroup."""
    freezes: list[bool] = []

    def list_pids() -> set[int]:
        raise CgroupError("read cgroup.procs: gone")

    with pytest.raises(CgroupError):
        kill_frozen(freezes.append, lambda: False, list_pids)
    assert freezes == [True, False]


def test_v1_pids_of_a_partly_removed_job(v1: CgroupV1Driver) -> None:
    """A job whose removal was cut short, gone from some hierarchies, is
    listed from those left, and is empty if they are."""
    job = v1.create("j1")
    v1_job_files(job)
    for directory in job.dirs():
        if directory != job.paths["memory"]:
            for f in directory.iterdir():
                f.unlink()
            directory.rmdir()
    assert job.is_empty()
    (job.paths["memory"] / "cgroup.procs").write_text(f"{FAKE_PIDS[0]}\n")
    assert job.pids() == {FAKE_PIDS[0]}


def test_v1_pids_across_hierarchies(v1: CgroupV1Driver) -> None:
    """pids() is every process in any of the job's hierarchies."""
    job = v1.create("j1")
    v1_job_files(job)
    (job.paths["memory"] / "cgroup.procs").write_text(f"{FAKE_PIDS[0]}\n")
    (job.paths["pids"] / "cgroup.procs").write_text(f"{FAKE_PIDS[1]}\n")
    assert job.pids() == set(FAKE_PIDS)
    assert not job.is_empty()
    # Such PIDs cannot exist: nothing is signalled.
    assert job.signal_all(signal.SIGTERM) == 0


def test_v1_leftovers_and_remove(v1: CgroupV1Driver, tmp_path: Path) -> None:
    """leftovers() lists job cgroups in any hierarchy; remove() clears them all."""
    v1.create("b")
    (tmp_path / V1_DIRS["memory"] / "jobworker/a").mkdir()
    assert v1.leftovers() == ["a", "b"]
    assert all([v1.open(job_id).remove() for job_id in v1.leftovers()])
    assert v1.leftovers() == []


def test_v1_describe(v1: CgroupV1Driver, tmp_path: Path) -> None:
    """The start-up line names each hierarchy's parent and the limits enforced."""
    sys = tmp_path / "sys/fs/cgroup"
    assert v1.describe() == (
        f"cgroup v1: jobs in cpu,cpuacct={sys}/cpu,cpuacct/jobworker"
        f" memory={sys}/memory/box/7/jobworker blkio={sys}/blkio/jobworker"
        f" pids={sys}/pids/jobworker freezer={sys}/freezer/jobworker; limits:"
        " cpu, memory (swap included), pids, io on 8:0"
    )


def test_describe_without_io(tmp_path: Path, v2_own: Path) -> None:
    """Without a block device, io limits are not offered, and the line says so."""
    driver = CgroupV2Driver(v2_own)
    assert driver.available() == ("cpu", "memory", "pids")
    assert driver.describe().endswith(
        "limits: cpu, memory, pids, no io (no block device)"
    )
