"""
Uids of a job's own: each isolated job whose role names no user runs as a
uid (and gid) that no other process on the host has, as systemd's
``DynamicUser=`` does.

Several servers may share a host, so a uid is reserved host-wide, by an
``flock`` on a file named after it in a root-only directory. A lock belongs
to the open file description, not to a process: the server opens and locks
the file, passes the descriptor to the job's launch helper, which keeps it
(close-on-exec: the command never has it) for as long as it lives, as the
job's init; and the server closes its own copy. The uid is free again when
both copies are closed: when the job's last process is gone, even if the
server crashed meanwhile; never before.

A free uid is chosen from a rotating point in the range, so that a uid is
not given again at once, and never one the host's ``/etc/passwd`` or
``/etc/group`` names. A lock file is removed by whoever holds its lock and
finds no one else does (``UidReservation.release``), and at start-up those
a crashed server left are removed likewise: the directory holds about as
many files as uids are in use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import stat
from dataclasses import dataclass
from pathlib import Path

# systemd's UIDS-GIDS.md: 0x70000000 and up is unused by everyone it names:
# above its dynamic users (61184-65519), the usual /etc/subuid blocks (from
# 100000, 65536 each, below 524288) and its container range
# (524288-1879048191), below the 32-bit boundary and (uid_t)-1.
DEFAULT_FIRST = 0x70000000
DEFAULT_LAST = 0x7000FFFF
UID_LOCKS = Path("/run/jobworker/uids")
# Never a job's: root and the system users, nobody, the 16-bit -1.
RESERVED = ((0, 999), (65534, 65535))
MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel
HOST_ID_FILES = (Path("/etc/passwd"), Path("/etc/group"))


class InvalidUidRange(ValueError):
    """A uid range that is malformed or holds ids no job may have."""


class NoFreeUid(Exception):
    """Every uid of the range is in use or the host's."""


class UnsafeUidDirectory(Exception):
    """The directory of uid locks is one that another user could change."""


@dataclass(frozen=True)
class UidRange:
    """The uids jobs of their own may get: ``first`` to ``last``, both in."""

    first: int = DEFAULT_FIRST
    last: int = DEFAULT_LAST

    def __post_init__(self) -> None:
        if not 0 <= self.first <= self.last <= MAX_ID:
            raise InvalidUidRange(
                f"{self}: must be FIRST-LAST, FIRST <= LAST <= {MAX_ID}"
            )
        for low, high in RESERVED:
            if self.first <= high and low <= self.last:
                raise InvalidUidRange(
                    f"{self}: overlaps {low}-{high} (root, system users or"
                    " nobody), which no job may run as"
                )

    @classmethod
    def parse(cls, text: str) -> UidRange:
        """``FIRST-LAST`` in decimal, or an ``InvalidUidRange`` saying why."""
        first, dash, last = text.strip().partition("-")
        if not (dash and first.isdigit() and last.isdigit()):
            raise InvalidUidRange(f"{text!r}: must be FIRST-LAST, such as 70000-70999")
        return cls(int(first), int(last))

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self.first <= uid <= self.last

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


def host_ids(files: tuple[Path, ...] = HOST_ID_FILES) -> frozenset[int]:
    """The ids ``/etc/passwd`` and ``/etc/group`` name (their third field)."""
    ids = set()
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(errors="replace").splitlines():
                fields = line.split(":")
                if len(fields) > 2 and fields[2].isdigit():
                    ids.add(int(fields[2]))
    return frozenset(ids)


class UidReservation:
    """One uid, held by an open, locked file: ``fd`` is its descriptor."""

    def __init__(self, uid: int, path: Path, fd: int | None) -> None:
        self.uid = self.gid = uid
        self.path = path
        self.fd: int | None = fd

    def close(self) -> None:
        """Drop the server's hold: the helper that inherited ``fd`` keeps it."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def release(self) -> None:
        """
        The job has ended: drop the server's hold, and remove the lock file
        unless another holds it (a job's init that outlived its server).
        """
        self.close()
        with contextlib.suppress(OSError):  # then the file stays: no harm
            fd = _locked(self.path, create=False)
            if fd is not None:
                try:
                    if os.fstat(fd).st_nlink > 0:  # none removed it meanwhile
                        os.unlink(self.path)
                finally:
                    os.close(fd)


class UidPool:
    """Reserves uids of ``uids`` host-wide, by lock files in ``directory``."""

    def __init__(
        self,
        uids: UidRange | None = None,
        directory: Path = UID_LOCKS,
        id_files: tuple[Path, ...] = HOST_ID_FILES,
    ) -> None:
        self.uids = uids or UidRange()
        self.directory = directory
        self._id_files = id_files
        self._next = random.randrange(len(self.uids))
        self._host_ids: tuple[tuple[object, ...], frozenset[int]] | None = None
        self._ready = False

    def prepare(self) -> None:
        """Make the directory (0700), or raise ``UnsafeUidDirectory``."""
        self.directory.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            self.directory.mkdir(mode=0o700)
        info = os.lstat(self.directory)
        if (
            not stat.S_ISDIR(info.st_mode)
            or info.st_uid != os.geteuid()
            or info.st_mode & 0o077
        ):
            raise UnsafeUidDirectory(
                f"{self.directory}: the uid locks' directory must be a directory"
                f" of uid {os.geteuid()} that only it may use (mode 0700)"
            )
        self._ready = True
        for name in os.listdir(self.directory):  # left by servers that died
            if name.isdigit():
                UidReservation(int(name), self.directory / name, None).release()

    def reserve(self) -> UidReservation:
        """A uid no one else holds, or ``NoFreeUid``."""
        if not self._ready:
            self.prepare()
        taken = self.host_ids()
        size = len(self.uids)
        for step in range(size):
            uid = self.uids.first + (self._next + step) % size
            if uid in taken:
                continue
            path = self.directory / str(uid)
            fd = _locked(path, create=True)
            if fd is not None:
                self._next = (self._next + step + 1) % size
                return UidReservation(uid, path, fd)
        raise NoFreeUid(
            f"all {size} uids of the job uid range {self.uids} are in use or the host's"
        )

    def host_ids(self) -> frozenset[int]:
        """The host's ids, read again whenever its files have changed."""
        key = tuple(_identity(path) for path in self._id_files)
        if self._host_ids is None or self._host_ids[0] != key:
            self._host_ids = (key, host_ids(self._id_files))
        return self._host_ids[1]


def _identity(path: Path) -> object:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def _locked(path: Path, create: bool) -> int | None:
    """
    A descriptor of ``path`` with its lock held, or None if another holds it
    (or, with ``create`` false, there is no such file). A file found removed
    once locked was its holder's last: try again with the one now there.
    """
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    while True:
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        if os.fstat(fd).st_nlink > 0:
            return fd
        os.close(fd)
