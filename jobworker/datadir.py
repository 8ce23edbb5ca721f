"""
The data directory: the server's private state (job records and output).

Jobs run on this host as other users, and a job's record holds its
environment (secrets, often): nothing here may be theirs to read. The data
directory and the directories in it are 0700, the files 0600, owned by the
server's user. What the server owns and finds looser (an older version made
``data/`` 0755) is tightened, with a log line; what another user owns, or
others may write, is refused: anyone could have put anything there.

Below the data directory nothing is opened through a symlink
(``O_NOFOLLOW``); the data directory itself may be one, as an administrator
may have made it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from twisted.logger import Logger

PRIVATE_DIRECTORY = 0o700
PRIVATE_FILE = 0o600
# Group and other bits: what "looser" means.
SHARED_BITS = 0o077
# Bits that would let another user change what the server reads.
WRITABLE_BY_OTHERS = 0o022
# How files under the data directory are opened, on top of the access mode:
# never through a symlink, never inherited by a job.
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC

log = Logger()


class UnsafeDataDirectory(Exception):
    """The data directory, or something in it, is not the server's alone."""


def prepare_data_directory(path: Path) -> None:
    """
    Make ``path`` (and its parents) if it is missing, 0700; or check the one
    there and tighten it. A directory found looser was made by an older
    version: everything in it is tightened too, once. Raises
    ``UnsafeDataDirectory``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if _make_directory(path):
        return
    info = os.stat(path)  # the path given may be a symlink, the rest not
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDataDirectory(f"data directory {path} is not a directory")
    _refuse_unless_ours(path, info, "data directory")
    if _tighten(path, info):
        _tighten_everything_in(path)


def private_directory(path: Path) -> None:
    """A directory under the data directory: made 0700, or checked."""
    if _make_directory(path):
        return
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDataDirectory(f"{path} is not a directory (a symlink?)")
    _refuse_unless_ours(path, info, "directory")
    _tighten(path, info)


def private_file(path: Path, create: bool = True) -> None:
    """
    A file under the data directory: made empty and 0600 if missing (unless
    ``create`` is false), or checked and tightened. Never through a symlink.
    """
    # O_NONBLOCK: a FIFO planted there must not hang the open.
    flags = os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, PRIVATE_FILE)
    except FileNotFoundError:
        return  # not there, and not to be made
    except OSError as e:
        raise UnsafeDataDirectory(f"cannot open {path}: {e.strerror}") from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeDataDirectory(f"{path} is not a regular file")
        _refuse_unless_ours(path, info, "file")
        if info.st_mode & SHARED_BITS:
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~SHARED_BITS)
            _log_tightened(path, info)
    finally:
        os.close(fd)


def _make_directory(path: Path) -> bool:
    """Make ``path`` 0700; False if something is there already."""
    try:
        os.mkdir(path, PRIVATE_DIRECTORY)  # the umask can only take bits away
    except FileExistsError:
        return False
    return True


def _refuse_unless_ours(path: Path, info: os.stat_result, what: str) -> None:
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid():
        raise UnsafeDataDirectory(
            f"{what} {path} is owned by uid {info.st_uid}, not by this server's"
            f" user (uid {os.geteuid()}): refusing to use it"
        )
    if mode & WRITABLE_BY_OTHERS:
        raise UnsafeDataDirectory(
            f"{what} {path} is writable by others (mode {mode:04o}): refusing to use it"
        )


def _tighten(path: Path, info: os.stat_result) -> bool:
    """Take every group and other bit off ``path``; whether there were any."""
    if not info.st_mode & SHARED_BITS:
        return False
    os.chmod(path, stat.S_IMODE(info.st_mode) & ~SHARED_BITS)
    _log_tightened(path, info)
    return True


def _log_tightened(path: Path, info: os.stat_result) -> None:
    mode = stat.S_IMODE(info.st_mode)
    log.warn(
        "{path} was mode {old}, open to other users: made {new}",
        path=str(path),
        old=f"{mode:04o}",
        new=f"{mode & ~SHARED_BITS:04o}",
    )


def _tighten_everything_in(top: Path) -> None:
    """What an older version left readable under ``top``: symlinks aside."""
    count = 0
    for directory, subdirectories, files in os.walk(top):
        for name in (*subdirectories, *files):
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if info.st_mode & SHARED_BITS and not stat.S_ISLNK(info.st_mode):
                os.chmod(path, stat.S_IMODE(info.st_mode) & ~SHARED_BITS)
                count += 1
    if count:
        log.warn(
            "{top}: {count} more files and directories made private",
            top=str(top),
            count=count,
        )
