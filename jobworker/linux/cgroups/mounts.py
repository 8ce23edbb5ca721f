"""
Where the cgroup hierarchies are: ``/proc/self/mountinfo`` says where each is
mounted (hierarchies are found there, not assumed at fixed paths), and
``/proc/self/cgroup`` says which cgroup of each the server is in.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from jobworker.linux.cgroups.interface import Device


@dataclasses.dataclass(frozen=True)
class Mount:
    """One line of ``/proc/self/mountinfo``."""

    device: Device
    root: str
    mount_point: str
    options: frozenset[str]
    fstype: str
    source: str
    super_options: frozenset[str]


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts ``/proc/self/mountinfo`` lists, in its order."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-", 6)
        major, minor = fields[2].split(":")
        mounts.append(
            Mount(
                device=(int(major), int(minor)),
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                options=frozenset(fields[5].split(",")),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]),
                super_options=frozenset(fields[sep + 3].split(",")),
            )
        )
    return mounts


def parse_proc_cgroup(text: str) -> dict[frozenset[str], str]:
    """
    ``/proc/self/cgroup`` as {controllers of a hierarchy: own path}; the v2
    hierarchy's key is the empty set, named v1 hierarchies keep their
    ``name=...`` entry.
    """
    own = {}
    for line in text.splitlines():
        if line:
            _, controllers, path = line.split(":", 2)
            own[frozenset(filter(None, controllers.split(",")))] = path
    return own


def own_dir(mount: Mount, own: str, fs_root: Path) -> Path | None:
    """Where the cgroup ``own`` lies under ``mount``, if it is visible there."""
    if "/.." in own or not own.startswith("/"):
        return None
    root = mount.root.rstrip("/")
    if own != root and not own.startswith(root + "/"):
        return None
    relative = own[len(root) :].strip("/")
    return fs_root / mount.mount_point.lstrip("/") / relative
