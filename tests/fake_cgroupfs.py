"""
A fake cgroupfs for tests: a host's ``/proc/self/mountinfo`` and
``/proc/self/cgroup`` as text, and directories holding the control files the
kernel would make, so that detection and both drivers run anywhere, fast,
without root. A test module uses its fixtures (``v2_own``, ``v2``, ``v1``) by
naming this module as a plugin::

    pytest_plugins = ["tests.fake_cgroupfs"]

(PYTEST_DONT_REWRITE: those modules import it before pytest loads it as a
plugin, too late for pytest to rewrite its asserts, which are plain checks.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from jobworker.linux.cgroups import (
    CgroupDriver,
    CgroupV1Driver,
    CgroupV1Job,
    CgroupV2Driver,
    Device,
    detect,
)

# PIDs above the kernel's maximum (2**22): no process can have them, so a
# fake tree listing them can never make a test signal a real process.
FAKE_PIDS = (1 << 30, (1 << 30) + 1)

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
    io_devices: Sequence[Device] = (),
) -> CgroupDriver:
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
