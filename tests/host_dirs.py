"""
Where a test keeps files an isolated job must see as the host does: outside
the job's private ``/tmp``, ``/var/tmp``, ``/run`` and ``/dev``, which hide
the host's. The first of a few root-owned directories that this user may
write (as root, on a writable root filesystem); else the temporary
directory, which is as good where jobs cannot be isolated (no root) and the
only choice where the root filesystem is read-only (the cgroup v2 VM).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from jobworker.linux.launcher import under_private_mount

CANDIDATES = ("/srv", "/var/lib", "/opt")


def visible_base() -> str:
    """A directory isolated jobs see, if this host has one we may write."""
    for base in CANDIDATES:
        real = os.path.realpath(base)
        writable = os.path.isdir(real) and os.access(real, os.W_OK)
        if writable and not under_private_mount(real):
            return real
    return tempfile.gettempdir()


def visible_tempdir(prefix: str) -> Path:
    """A new directory every user may enter, where isolated jobs see it."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=visible_base()))
    path.chmod(0o755)
    return path
