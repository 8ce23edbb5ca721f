"""
Job cgroups: parsing, detection, limits and usage on a fake cgroupfs tree
(fast, anywhere), then the same operations on this host's real hierarchies
as root, with real processes: limits enforced, usage counted, every process
killed, nothing left behind.
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil
import pytest
from twisted.internet.task import Clock

from jobworker.jobs.confinement import (
    KILL_RETRIES,
    Confinement,
    JobConfinement,
)
from jobworker.linux import cgroups
from jobworker.linux.cgroups import (
    CgroupError,
    CgroupLimits,
    CgroupUnavailable,
    CgroupUsage,
    CgroupV1Driver,
    CgroupV1Job,
    CgroupV2Driver,
    CgroupV2Job,
    JobCgroup,
    Mount,
    cpu_max,
    default_io_devices,
    detect,
    parse_mountinfo,
    parse_proc_cgroup,
    whole_disk,
)
from jobworker.linux.cgroups.members import kill_frozen, signal_members
from tests.conftest import skip_or_fail

MiB = 1 << 20
PYTHON = "/usr/bin/python3"
# PIDs above the kernel's maximum (2**22): no process can have them, so a
# fake tree listing them can never make a test signal a real process.
FAKE_PIDS = (1 << 30, (1 << 30) + 1)

# -- a fake cgroupfs ----------------------------------------------------------

V2_MOUNTINFO = """\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
27 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw
31 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 \
cgroup2 rw,nsdelegate,memory_recursiveprot
"""

# Like a hybrid systemd host: controllers on v1 (cpu and cpuacct together),
# an empty v2 hierarchy, the server nested in the memory hierarchy.
V1_MOUNTINFO = """\
27 1 8:2 / / rw,relatime - ext4 /dev/sda2 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

V1_PROC_CGROUP = """\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
4:memory:/box/7
3:cpuset:/
2:cpu,cpuacct:/
0::/
"""

V1_DIRS = {
    "cpu,cpuacct": "sys/fs/cgroup/cpu,cpuacct",
    "memory": "sys/fs/cgroup/memory/box/7",
    "freezer": "sys/fs/cgroup/freezer",
    "blkio": "sys/fs/cgroup/blkio",
    "pids": "sys/fs/cgroup/pids",
}


def write_files(directory: Path, files: dict[str, str]) -> None:
    """Make ``directory`` with ``files``, as the kernel would make them."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def fake_host(
    root: Path,
    mountinfo: str,
    proc_cgroup: str,
    io_devices: Sequence[cgroups.Device] = (),
) -> cgroups.CgroupDriver:
    """detect() on a host whose /proc files read as given, its tree in ``root``."""
    (root / "mountinfo").write_text(mountinfo)
    (root / "cgroup").write_text(proc_cgroup)
    return detect(
        mountinfo=str(root / "mountinfo"),
        proc_self_cgroup=str(root / "cgroup"),
        fs_root=str(root),
        io_devices=io_devices,
    )


@pytest.fixture
def v2_own(tmp_path: Path) -> Path:
    """A v2 tree with the server in /system.slice/jw.service."""
    own = tmp_path / "sys/fs/cgroup/system.slice/jw.service"
    controllers = "cpuset cpu io memory hugetlb pids rdma misc\n"
    write_files(own, {"cgroup.controllers": controllers, "cgroup.procs": ""})
    return own


@pytest.fixture
def v2(tmp_path: Path, v2_own: Path) -> CgroupV2Driver:
    driver = fake_host(
        tmp_path, V2_MOUNTINFO, "0::/system.slice/jw.service\n", io_devices=[(8, 0)]
    )
    assert isinstance(driver, CgroupV2Driver)
    return driver


def v2_job_files(**extra: str) -> dict[str, str]:
    files = {
        name: ""
        for name in (
            "cgroup.procs",
            "cgroup.kill",
            "cpu.max",
            "memory.max",
            "memory.oom.group",
            "pids.max",
            "io.max",
        )
    }
    return files | extra


@pytest.fixture
def v1(tmp_path: Path) -> CgroupV1Driver:
    for directory in V1_DIRS.values():
        write_files(tmp_path / directory, {"cgroup.procs": ""})
    (tmp_path / V1_DIRS["memory"] / "memory.memsw.limit_in_bytes").write_text("")
    write_files(tmp_path / "sys/fs/cgroup/unified", {"cgroup.controllers": ""})
    driver = fake_host(tmp_path, V1_MOUNTINFO, V1_PROC_CGROUP, io_devices=[(8, 0)])
    assert isinstance(driver, CgroupV1Driver)
    return driver


def v1_job_files(job: CgroupV1Job, **extra: str) -> None:
    """The control files the kernel would give ``job``'s new directories."""
    files = {
        "cpu": ["cpu.cfs_period_us", "cpu.cfs_quota_us"],
        "memory": ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"],
        "pids": ["pids.max"],
        "freezer": ["freezer.state"],
        "blkio": [
            f"blkio.throttle.{kind}_{unit}_device"
            for kind in ("read", "write")
            for unit in ("bps", "iops")
        ],
    }
    for controller, names in files.items():
        write_files(job.paths[controller], dict.fromkeys(names, ""))
    for directory in job.dirs():
        write_files(directory, {"cgroup.procs": ""})
    for name, text in extra.items():
        controller = name.split(".")[0]
        (job.paths[controller] / name).write_text(text)


# -- parsing ------------------------------------------------------------------


def test_parse_mountinfo() -> None:
    """Mountinfo lines give device, root, mount point, options and type."""
    line = (
        "40 31 0:37 /docker/ab /sys/fs/cgroup/my\\040dir rw,relatime shared:9"
        " master:2 - cgroup cgroup rw,cpu,cpuacct\n"
    )
    assert parse_mountinfo(line) == [
        Mount(
            device=(0, 37),
            root="/docker/ab",
            mount_point="/sys/fs/cgroup/my dir",
            options=frozenset({"rw", "relatime"}),
            fstype="cgroup",
            source="cgroup",
            super_options=frozenset({"rw", "cpu", "cpuacct"}),
        )
    ]


def test_parse_proc_cgroup() -> None:
    """/proc/self/cgroup maps each hierarchy's controllers to its path."""
    assert parse_proc_cgroup("2:cpu,cpuacct:/a\n1:name=systemd:/b\n0::/c:d\n") == {
        frozenset({"cpu", "cpuacct"}): "/a",
        frozenset({"name=systemd"}): "/b",
        frozenset(): "/c:d",
    }


def test_cpu_max() -> None:
    """Cores become a quota over a 100 ms period, never below the 1 ms minimum."""
    assert [cpu_max(c) for c in (0.5, 2.5, 0.001)] == [
        (50_000, 100_000),
        (250_000, 100_000),
        (1_000, 100_000),
    ]


@pytest.mark.parametrize("field", ["cpu", "memory", "pids", "read_bps", "write_iops"])
def test_limits_must_be_positive(field: str) -> None:
    """A zero or negative limit is refused, naming the field."""
    with pytest.raises(ValueError, match=f"^{field} must be positive: 0$"):
        CgroupLimits(**{field: 0})


@pytest.mark.parametrize("job_id", ["", "..", "a/b", "../x", "a b"])
def test_job_id_checked(v2: CgroupV2Driver, job_id: str) -> None:
    """A job id that is not a plain name cannot become a directory."""
    with pytest.raises(ValueError, match=r"^not a job id: "):
        v2.open(job_id)


# -- detection ------------------------------------------------------------------


def test_detect_v2(v2: CgroupV2Driver, v2_own: Path) -> None:
    """v2 is chosen where the server's own cgroup offers cpu, io, memory, pids."""
    assert (v2.version, v2.own, v2.base) == (2, v2_own, v2_own / "jobworker")


def test_detect_v2_mount_root(tmp_path: Path) -> None:
    """A hierarchy mounted from a sub-cgroup (a container's) is found below it."""
    write_files(tmp_path / "cg/app", {"cgroup.controllers": "cpu io memory pids"})
    mountinfo = "31 1 0:26 /docker/ab /cg rw - cgroup2 cgroup2 rw\n"
    driver = fake_host(tmp_path, mountinfo, "0::/docker/ab/app\n")
    assert isinstance(driver, CgroupV2Driver)
    assert driver.own == tmp_path / "cg/app"


def test_detect_v1(v1: CgroupV1Driver, tmp_path: Path) -> None:
    """Without v2 controllers, v1 is chosen: one entry per hierarchy needed."""
    assert v1.version == 1
    assert {h.controllers: h.own for h in v1.hierarchies} == {
        frozenset({"cpu", "cpuacct"}): tmp_path / V1_DIRS["cpu,cpuacct"],
        frozenset({"memory"}): tmp_path / V1_DIRS["memory"],
        frozenset({"blkio"}): tmp_path / V1_DIRS["blkio"],
        frozenset({"pids"}): tmp_path / V1_DIRS["pids"],
        frozenset({"freezer"}): tmp_path / V1_DIRS["freezer"],
    }


def test_detect_neither(tmp_path: Path) -> None:
    """With no usable hierarchy, detection says why for v2 and for v1."""
    for directory in V1_DIRS.values():
        (tmp_path / directory).mkdir(parents=True)
    write_files(tmp_path / "sys/fs/cgroup/unified", {"cgroup.controllers": ""})
    mountinfo = V1_MOUNTINFO.replace("rw,pids", "rw,net_cls")
    with pytest.raises(CgroupUnavailable) as caught:
        fake_host(tmp_path, mountinfo, V1_PROC_CGROUP)
    assert str(caught.value) == (
        f"no usable cgroups: cgroup v2 at {tmp_path}/sys/fs/cgroup/unified:"
        " no cpu io memory pids controller (available: none);"
        " cgroup v1: no pids hierarchy mounted"
    )


def test_detect_read_only_v1(tmp_path: Path) -> None:
    """A v1 hierarchy mounted read-only is not usable, and the reason says so."""
    for directory in V1_DIRS.values():
        (tmp_path / directory).mkdir(parents=True)
    mountinfo = V1_MOUNTINFO.replace("/memory rw,", "/memory ro,")
    with pytest.raises(CgroupUnavailable, match=r"memory hierarchy at .* is not wri"):
        fake_host(tmp_path, mountinfo, V1_PROC_CGROUP)


def test_detect_reads_only(v1: CgroupV1Driver) -> None:
    """Detection creates nothing; the jobworker parents come with prepare()."""
    assert not any(h.base.exists() for h in v1.hierarchies)
    v1.prepare()
    assert all(h.base.is_dir() for h in v1.hierarchies)


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


# -- a job's confinement --------------------------------------------------------


class KillCounter:
    """A job cgroup that only counts kills; each says whether it was sure."""

    job_id = "j1"

    def __init__(self, sure: list[bool], members: int = 1) -> None:
        self.sure = sure
        self.members = members
        self.kills = 0

    def procs_paths(self) -> list[str]:
        return []

    def set_limits(self, limits: CgroupLimits) -> None:
        pass

    def pids(self) -> set[int]:
        return set(FAKE_PIDS[: self.members])

    def signal_all(self, sig: int) -> int:
        return 0

    def kill_all(self) -> bool:
        self.kills += 1
        return self.sure.pop(0)

    def is_empty(self) -> bool:
        return self.members == 0

    def usage(self) -> CgroupUsage:
        return CgroupUsage(0.0, None, 0, 0, False)

    def remove(self) -> bool:
        return self.members == 0


def test_kill_not_sure_is_done_again() -> None:
    """A SIGKILL whose freezer was still freezing is sent again, a little
    later, until one is sure; another SIGKILL meanwhile adds no retry."""
    cgroup = KillCounter([False, False, False, True])
    clock = Clock()
    confinement = JobConfinement(cgroup, clock)
    confinement.signal(signal.SIGKILL)
    confinement.signal(signal.SIGKILL)
    assert (cgroup.kills, len(clock.getDelayedCalls())) == (2, 1)
    clock.advance(KILL_RETRIES[0])
    clock.advance(KILL_RETRIES[1])
    assert (cgroup.kills, clock.getDelayedCalls()) == (4, [])


def test_kill_again_bounded_and_stops_when_empty() -> None:
    """Kills are retried a bounded number of times, and not once the job is
    empty or has ended (its removal then kills what it finds)."""
    cgroup = KillCounter([False] * 10)
    clock = Clock()
    JobConfinement(cgroup, clock).signal(signal.SIGKILL)
    clock.pump(KILL_RETRIES)
    assert (cgroup.kills, clock.getDelayedCalls()) == (1 + len(KILL_RETRIES), [])

    cgroup = KillCounter([False] * 10)
    JobConfinement(cgroup, clock).signal(signal.SIGKILL)
    cgroup.members = 0
    clock.pump(KILL_RETRIES)
    assert (cgroup.kills, clock.getDelayedCalls()) == (1, [])

    cgroup = KillCounter([False] * 10, members=0)
    confinement = JobConfinement(cgroup, clock)
    confinement.signal(signal.SIGKILL)
    confinement.finish()
    assert (cgroup.kills, clock.getDelayedCalls()) == (1, [])


def test_reclaim_only_this_servers_jobs(v1: CgroupV1Driver) -> None:
    """Reclaim removes the leftovers of the jobs it is given, whatever their
    end, and leaves the others (another server's) alone."""
    for job_id in ("ended", "lost", "theirs"):
        v1.create(job_id)
    confinement = Confinement(v1, "", Clock())
    assert confinement.reclaim({"ended", "lost", "unknown"}) == 2
    assert v1.leftovers() == ["theirs"]


# -- block devices ------------------------------------------------------------


def fake_sys(root: Path, disk: str, device: str, partition: str | None) -> Path:
    """A /sys with ``disk`` (and ``partition`` of it) under /sys/dev/block."""
    devices = root / "sys/devices/pci0/block" / disk
    write_files(devices, {"dev": f"{device}\n"})
    links = root / "sys/dev/block"
    links.mkdir(parents=True)
    major = device.split(":")[0]
    (links / device).symlink_to(devices)
    if partition is not None:
        write_files(devices / partition, {"dev": f"{major}:1\n", "partition": "1\n"})
        (links / f"{major}:1").symlink_to(devices / partition)
    return root / "sys"


def test_whole_disk(tmp_path: Path) -> None:
    """A partition resolves to its disk, a disk to itself, a non-device to None."""
    sys = str(fake_sys(tmp_path, "sda", "8:0", "sda1"))
    assert [whole_disk(d, sys) for d in [(8, 1), (8, 0), (0, 42)]] == [
        (8, 0),
        (8, 0),
        None,
    ]


def test_default_io_devices(tmp_path: Path) -> None:
    """The disk of a path's filesystem, found from the path's device number."""
    st_dev = os.stat(tmp_path).st_dev
    device = f"{os.major(st_dev)}:{os.minor(st_dev)}"
    sys = fake_sys(tmp_path / "fake", "disk", device, None)
    assert default_io_devices(str(tmp_path), sys_root=str(sys)) == [
        (os.major(st_dev), os.minor(st_dev))
    ]


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

    def __init__(self, driver: cgroups.CgroupDriver) -> None:
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
