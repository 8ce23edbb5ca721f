"""
Job cgroups on a fake host: mountinfo and /proc/self/cgroup parsed, limits
checked, the driver detected from what is mounted, and the disks IO limits
apply to found in a fake /sys.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobworker.linux.cgroups import (
    CgroupLimits,
    CgroupUnavailable,
    CgroupV1Driver,
    CgroupV2Driver,
    Mount,
    cpu_max,
    default_io_devices,
    parse_mountinfo,
    parse_proc_cgroup,
    whole_disk,
)
from tests.fake_cgroupfs import (
    V1_DIRS,
    V1_MOUNTINFO,
    V1_PROC_CGROUP,
    fake_host,
    write_files,
)

pytest_plugins = ["tests.fake_cgroupfs"]

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
