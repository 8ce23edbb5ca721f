"""
Reading and writing cgroupfs: every control file goes through here, so that
each failure becomes a ``CgroupError`` naming the file and keeping its errno.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from jobworker.linux.cgroups.interface import CgroupError

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def read(path: Path) -> str:
    """The text of a control file."""
    try:
        return path.read_text()
    except OSError as e:
        raise CgroupError(f"read {path}: {e.strerror}", e.errno) from e


def write(path: Path, text: str) -> None:
    """
    ``text`` as one line in one ``write()``: files such as ``io.max`` take
    one entry per write. No ``O_CREAT``: a missing control file is an error,
    not a new file. ``O_APPEND`` changes nothing for cgroupfs, and lets a
    fake tree in the tests keep every line written.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            os.write(fd, f"{text}\n".encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise CgroupError(f"write {text!r} to {path}: {e.strerror}", e.errno) from e


def read_keyed(path: Path) -> dict[str, int]:
    """A file of ``key value`` lines (``cpu.stat``, ``memory.events``...)."""
    pairs = (line.split() for line in read(path).splitlines())
    return {pair[0]: int(pair[1]) for pair in pairs if len(pair) == 2}


def procs(path: Path) -> set[int]:
    """The processes the cgroup directory ``path`` lists."""
    return {int(line) for line in read(path / "cgroup.procs").split()}


def rmdir(path: Path) -> bool:
    """Remove a cgroup directory; False while it is busy, True if it is gone."""
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno == errno.EBUSY:
            return False
        raise CgroupError(f"remove {path}: {e.strerror}", e.errno) from e
    return True


def mkdir(path: Path) -> None:
    """Make one cgroup directory; the kernel fills it with control files."""
    try:
        path.mkdir()
    except OSError as e:
        raise CgroupError(f"create {path}: {e.strerror}", e.errno) from e


def check_job_id(job_id: str) -> str:
    # It becomes a directory name: nothing that could leave the parent.
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return job_id


def children(parent: Path) -> set[str]:
    """The names of the cgroups directly under ``parent``; none if it is gone."""
    try:
        return {p.name for p in parent.iterdir() if p.is_dir()}
    except FileNotFoundError:
        return set()
