"""
The block devices IO limits apply to: the kernel throttles whole disks, so a
path's filesystem is traced to the disk it lies on, through ``/sys``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from jobworker.linux.cgroups.interface import Device
from jobworker.linux.cgroups.mounts import parse_mountinfo


def whole_disk(device: Device, sys_root: str = "/sys") -> Device | None:
    """The disk ``device`` is or is a partition of; None if no block device."""
    entry = Path(sys_root, "dev", "block", f"{device[0]}:{device[1]}")
    if not entry.exists():
        return None
    real = entry.resolve()
    if not (real / "partition").exists():
        return device
    major, minor = (real.parent / "dev").read_text().strip().split(":")
    return int(major), int(minor)


def default_io_devices(
    path: str,
    *,
    sys_root: str = "/sys",
    mountinfo: str = "/proc/self/mountinfo",
) -> list[Device]:
    """
    The whole disk holding the filesystem of ``path``, as IO limits need
    it: a partition resolves to its disk (the kernel throttles whole disks
    only, so the limit covers the disk's other partitions too). A
    filesystem whose device number is not a block device (btrfs, for one)
    is looked up by its mount's source; one with no block device at all
    (tmpfs, NFS) gives an empty list.
    """
    st_dev = os.stat(path).st_dev
    disk = whole_disk((os.major(st_dev), os.minor(st_dev)), sys_root)
    if disk is None:
        disk = _mount_source_disk(path, sys_root, mountinfo)
    return [] if disk is None else [disk]


def _mount_source_disk(path: str, sys_root: str, mountinfo: str) -> Device | None:
    real = os.path.realpath(path)
    mounts = parse_mountinfo(Path(mountinfo).read_text())
    covering = [m for m in mounts if _covers(m.mount_point, real)]
    if not covering:
        return None
    # The deepest mount point holds the path; of mounts stacked on one
    # point, the last listed is the one on top.
    deepest = max(len(m.mount_point) for m in covering)
    source = [m for m in covering if len(m.mount_point) == deepest][-1].source
    try:
        st = os.stat(source)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return whole_disk((os.major(st.st_rdev), os.minor(st.st_rdev)), sys_root)


def _covers(mount_point: str, path: str) -> bool:
    return (
        mount_point == "/" or path == mount_point or path.startswith(mount_point + "/")
    )
