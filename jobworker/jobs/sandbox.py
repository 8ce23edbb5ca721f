"""
How one job's sandbox differs from the server's usual one: the knobs a
caller (through the API, the caller's role) may turn per job. The job
library takes them as they are; who may turn them is the policy's business.
``JobSandbox()`` is the server's usual sandbox.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from jobworker.linux.launcher import under_private_mount


@dataclass(frozen=True)
class JobSandbox:
    """An isolated job's sandbox, where it is not the server's default."""

    # Real host paths (no symlink on the way) the job may write, where the
    # rest of the host is read-only to it.
    writable: tuple[str, ...] = ()
    # The command under the server's system call filter; False: without it.
    seccomp: bool = True
    # Each private tmpfs's size in bytes; None: the server's (--tmpfs-size).
    tmpfs_size: int | None = None

    def __post_init__(self) -> None:
        for path in self.writable:
            problem = writable_problem(path)
            if problem is not None:
                raise ValueError(f"{path!r}: {problem}")
        if self.tmpfs_size is not None and not 0 < self.tmpfs_size < 2**63:
            raise ValueError("tmpfs_size must be positive")


def writable_problem(path: str) -> str | None:
    """Why ``path`` cannot be a job's writable path, or None if it can."""
    if not path.startswith("/") or path.startswith("//") or "\0" in path:
        return "must be an absolute path"
    if ".." in path.split("/") or os.path.normpath(path) != path:
        return "must be a normalized path (no '.', '..', '//' or trailing '/')"
    if path == "/" or under_private_mount(path):
        return "is the job's own (a private mount, or all of /), not the host's"
    return None
