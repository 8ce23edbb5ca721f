"""
Room on the data directory's disk, and the reserve of it kept for records.

Job output and the SQLite database share one filesystem. Were output allowed
to fill it, the records saying how jobs ended could not be written: SQLite
answers "database or disk is full" to every write, the final status of the
very job that filled the disk included. So output may use the disk only down
to a reserve, which is left to the database (its write-ahead log alone grows
to about 4 MiB between checkpoints): a job whose output would eat into it is
stopped, and no job starts while the disk is below it.

Asking the filesystem before every write would cost a system call per chunk
of output. Instead the room is measured once and handed out as a budget that
every job draws on, and measured again when the budget runs out. The budget
is capped, so that space others take on a shared disk is noticed after at
most that much output of ours.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

MiB = 1 << 20


class DiskSpace:
    """The room output may use on the disk holding ``directory``."""

    def __init__(
        self,
        directory: Path,
        reserve: int,
        recheck: int = 16 * MiB,
        statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
    ) -> None:
        self.directory = directory
        self.reserve = reserve
        self._recheck = recheck
        self._statvfs = statvfs
        self._budget = 0

    def free(self) -> int:
        """Bytes free on the disk now, as an unprivileged writer sees them."""
        st = self._statvfs(self.directory)
        return st.f_bavail * st.f_frsize

    def room(self) -> int:
        """Bytes output may still use now: what is free beyond the reserve."""
        return max(self.free() - self.reserve, 0)

    def claim(self, wanted: int) -> int:
        """How many of ``wanted`` bytes of output may be written: all, some or
        none. What is granted counts as used."""
        if wanted > self._budget:
            self._budget = min(self.room(), max(self._recheck, wanted))
        granted = min(wanted, self._budget)
        self._budget -= granted
        return granted
