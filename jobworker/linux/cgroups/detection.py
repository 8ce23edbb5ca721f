"""
Which driver this host gets: v2 where the server's own v2 cgroup offers every
controller needed, else v1 where every v1 hierarchy needed is mounted and
writable; else a ``CgroupUnavailable`` saying why neither will do.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from jobworker.linux.cgroups import files
from jobworker.linux.cgroups.interface import (
    JOBS_DIR,
    CgroupDriver,
    CgroupError,
    CgroupUnavailable,
    Device,
)
from jobworker.linux.cgroups.mounts import (
    Mount,
    own_dir,
    parse_mountinfo,
    parse_proc_cgroup,
)
from jobworker.linux.cgroups.v1 import V1_CONTROLLERS, CgroupV1Driver, V1Hierarchy
from jobworker.linux.cgroups.v2 import V2_CONTROLLERS, CgroupV2Driver


def detect(
    *,
    mountinfo: str = "/proc/self/mountinfo",
    proc_self_cgroup: str = "/proc/self/cgroup",
    fs_root: str = "/",
    io_devices: Sequence[Device] = (),
    parent: str = JOBS_DIR,
) -> CgroupDriver:
    """
    The driver for this host: v2 if the server's own v2 cgroup offers cpu,
    io, memory and pids, else v1 if the v1 hierarchies of cpu, cpuacct,
    memory, blkio, pids and freezer are mounted and writable. Raises
    ``CgroupUnavailable`` saying why neither is usable. Reads only: nothing
    is created until ``prepare``. Job cgroups go in ``parent`` under the
    server's own cgroup. ``fs_root`` prefixes the mount points read (for
    tests on a fake tree).
    """
    files.check_job_id(parent)
    mounts = parse_mountinfo(Path(mountinfo).read_text())
    own = parse_proc_cgroup(Path(proc_self_cgroup).read_text())
    root = Path(fs_root)
    v2 = _detect_v2(mounts, own, root)
    if isinstance(v2, Path):
        return CgroupV2Driver(v2, io_devices, parent)
    v1 = _detect_v1(mounts, own, root)
    if not isinstance(v1, str):
        hierarchies = [dataclasses.replace(h, parent=parent) for h in v1]
        return CgroupV1Driver(hierarchies, io_devices)
    raise CgroupUnavailable(f"no usable cgroups: {v2}; {v1}")


def _detect_v2(
    mounts: Sequence[Mount], own: Mapping[frozenset[str], str], root: Path
) -> Path | str:
    """The server's own v2 cgroup directory, or why it will not do."""
    if frozenset() not in own:
        return "cgroup v2: the server is in no v2 hierarchy"
    places = [
        path
        for m in mounts
        if m.fstype == "cgroup2"
        and (path := own_dir(m, own[frozenset()], root)) is not None
    ]
    if not places:
        return "cgroup v2: not mounted where the server's cgroup is visible"
    path = places[0]
    try:
        available = set(files.read(path / "cgroup.controllers").split())
    except CgroupError as e:
        return f"cgroup v2: {e}"
    missing = [c for c in V2_CONTROLLERS if c not in available]
    if missing:
        return (
            f"cgroup v2 at {path}: no {' '.join(missing)} controller"
            f" (available: {' '.join(sorted(available)) or 'none'})"
        )
    return path


def _detect_v1(
    mounts: Sequence[Mount], own: Mapping[frozenset[str], str], root: Path
) -> list[V1Hierarchy] | str:
    """The v1 hierarchies of the controllers needed, or why they will not do."""
    hierarchies: dict[frozenset[str], V1Hierarchy] = {}
    for controller in V1_CONTROLLERS:
        found = _v1_hierarchy(controller, mounts, own, root)
        if isinstance(found, str):
            return f"cgroup v1: {found}"
        hierarchies.setdefault(found.controllers, found)
    return list(hierarchies.values())


def _v1_hierarchy(
    controller: str,
    mounts: Sequence[Mount],
    own: Mapping[frozenset[str], str],
    root: Path,
) -> V1Hierarchy | str:
    candidates = [
        m for m in mounts if m.fstype == "cgroup" and controller in m.super_options
    ]
    if not candidates:
        return f"no {controller} hierarchy mounted"
    controllers = next((k for k in own if controller in k), None)
    if controllers is None:
        return f"the server is in no {controller} hierarchy"
    for mount in candidates:
        path = own_dir(mount, own[controllers], root)
        if path is None:
            continue
        if not path.is_dir():
            return f"{controller} hierarchy has no {path}"
        if "ro" in mount.options or not os.access(path, os.W_OK):
            return f"{controller} hierarchy at {path} is not writable"
        return V1Hierarchy(controllers, path)
    return f"the server's {controller} cgroup is not visible where it is mounted"
