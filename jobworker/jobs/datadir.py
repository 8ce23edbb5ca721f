"""
The data directory: the server's private state (job records and output).

Jobs run on this host as other users, and a job's record holds its
environment (secrets, often): nothing here may be theirs to read. The data
directory and the directories in it are 0700, the files 0600, owned by the
server's user. What the server owns and finds looser (an older version made
``data/`` 0755) is tightened, with a log line; what another user owns, or
others may write, is refused: anyone could have put anything there.

The path to the data directory is walked once, at start-up, one name at a
time: every directory on the way must be root's or the server's user's, and
writable by others only if sticky (``/tmp``, where no one may move what is
not theirs), and every symlink on the way root's or the server's user's;
otherwise another user could swap a piece of the path for their own, and
root would write job output where they chose. What is missing is made on
the way. From then on the server uses the real path the walk found, with
no symlink in it, and opens nothing under it through one (``O_NOFOLLOW``).

Layout: ``jobworker.sqlite3`` (with ``-wal`` and ``-shm``), and ``jobs/``
with a directory of files per job.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from twisted.logger import Logger

DATABASE = "jobworker.sqlite3"
JOBS = "jobs"
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


def prepare_data_directory(path: Path) -> Path:
    """
    Make the data directory ``path`` (and its parents, and ``jobs/`` in it)
    if missing, 0700; or check the one there and tighten it. A data
    directory found looser was made by an older version: its jobs are
    tightened too, once. Returns its real path, which is the one to use.
    Raises ``UnsafeDataDirectory``.
    """
    real, made = _walk(path)
    if not made:
        info = os.stat(real)
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafeDataDirectory(f"data directory {path} is not a directory")
        _refuse_unless_ours(path, info, "data directory")
        if info.st_mode & SHARED_BITS:
            _refuse_unless_a_data_directory(real)
            _tighten(real, info, say=True)
            _tighten_jobs(real / JOBS)
    private_directory(real / JOBS)
    return real


def private_directory(path: Path) -> None:
    """A directory under the data directory: made 0700, or checked."""
    if not _make_directory(path):
        _tighten_directory(path, say=True)


def _make_directory(path: Path, mode: int = PRIVATE_DIRECTORY) -> bool:
    """Make ``path`` (0700); False if something is there already."""
    try:
        os.mkdir(path, mode)  # the umask can only take bits away
    except FileExistsError:
        return False
    return True


def _tighten_directory(path: Path, say: bool) -> bool:
    """Check a directory under the data directory, and take every group and
    other bit off it; whether there were any."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDataDirectory(f"{path} is not a directory (a symlink?)")
    _refuse_unless_ours(path, info, "directory")
    return _tighten(path, info, say)


def private_file(path: Path, create: bool = True, say: bool = True) -> bool:
    """
    A file under the data directory: made empty and 0600 if missing (unless
    ``create`` is false), or checked and tightened, through a descriptor,
    never through a symlink. Whether it was looser.
    """
    # O_NONBLOCK: a FIFO planted there must not hang the open.
    flags = os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, PRIVATE_FILE)
    except FileNotFoundError:
        return False  # not there, and not to be made
    except OSError as e:
        raise UnsafeDataDirectory(f"cannot open {path}: {e.strerror}") from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeDataDirectory(f"{path} is not a regular file")
        _refuse_unless_ours(path, info, "file")
        return _tighten(path, info, say, fd)
    finally:
        os.close(fd)


def _refuse_unless_ours(
    path: Path, info: os.stat_result, what: str, on_the_way: bool = False
) -> None:
    """
    Refuse what another user owns or may write. On the way to the data
    directory, root's is as good as ours, and a sticky directory may be
    writable by all: no one may move what is ours out of it.
    """
    mode = stat.S_IMODE(info.st_mode)
    owners = (0, os.geteuid()) if on_the_way else (os.geteuid(),)
    if info.st_uid not in owners:
        whose = "root or this server's user" if on_the_way else "this server's user"
        raise UnsafeDataDirectory(
            f"{what} {path} is owned by uid {info.st_uid}, not by {whose}"
            f" (uid {os.geteuid()}): refusing to use it"
        )
    if mode & WRITABLE_BY_OTHERS and not (on_the_way and mode & stat.S_ISVTX):
        raise UnsafeDataDirectory(
            f"{what} {path} is writable by others (mode {mode:04o}): refusing to use it"
        )


def _tighten(
    path: Path, info: os.stat_result, say: bool, fd: int | None = None
) -> bool:
    """Take every group and other bit off ``path``; whether there were any."""
    mode = stat.S_IMODE(info.st_mode)
    if not mode & SHARED_BITS:
        return False
    os.chmod(path if fd is None else fd, mode & ~SHARED_BITS)
    if say:
        log.warn(
            "{path} was mode {old}, open to other users: made {new}",
            path=str(path),
            old=f"{mode:04o}",
            new=f"{mode & ~SHARED_BITS:04o}",
        )
    return True


# More symlinks than this on one path is a loop (as the kernel's limit).
MAX_SYMLINKS = 40


def _walk(path: Path) -> tuple[Path, bool]:
    """
    Resolve ``path`` a name at a time, checking each directory looked into
    and each symlink followed, and making each missing directory (0755 on
    the way, the last 0700). The real path, and whether its last directory
    was made now (by us: nothing more to check).
    """
    pending = list(Path(os.getcwd(), path).parts[1:])
    real = Path("/")
    followed = 0
    made: Path | None = None
    while pending:
        name = pending.pop(0)
        if name == "..":
            real = real.parent
            continue
        what = f"on the way to the data directory {path}, directory"
        _refuse_unless_ours(real, os.stat(real), what, on_the_way=True)
        candidate = real / name
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            mode = 0o755 if pending else PRIVATE_DIRECTORY
            if _make_directory(candidate, mode):
                made = candidate
            pending.insert(0, name)  # look again: made by us, or by another
            continue
        if stat.S_ISLNK(info.st_mode):
            followed += 1
            _refuse_symlink(candidate, info, followed, path)
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                real = Path("/")
            pending[:0] = target.parts[1:] if target.is_absolute() else target.parts
            continue
        real = candidate
    return real, real == made


def _refuse_symlink(link: Path, info: os.stat_result, count: int, path: Path) -> None:
    """A symlink on the way to the data directory: root's or ours."""
    if info.st_uid not in (0, os.geteuid()):
        raise UnsafeDataDirectory(
            f"{link}, on the way to the data directory {path}, is a symlink made"
            f" by uid {info.st_uid}: refusing to follow it"
        )
    if count > MAX_SYMLINKS:
        raise UnsafeDataDirectory(
            f"too many symlinks on the way to the data directory {path}"
        )


def _refuse_unless_a_data_directory(path: Path) -> None:
    """A loose directory is tightened only if it is empty or ours (it holds
    the database): not /var/lib, given by mistake."""
    entries = os.listdir(path)
    if entries and DATABASE not in entries:
        raise UnsafeDataDirectory(
            f"data directory {path} holds other files and no {DATABASE}, and is"
            " open to other users: refusing to change it (give a new or empty"
            " directory)"
        )


def _tighten_jobs(jobs: Path) -> None:
    """What an older version left readable in ``jobs/``: each job's directory
    and the files in it, never through a symlink; one log line for all."""
    if not os.path.lexists(jobs):
        return
    count = int(_tighten_directory(jobs, say=False))
    with os.scandir(jobs) as each_job:
        for job in each_job:
            count += _tighten_directory(Path(job.path), say=False)
            with os.scandir(job.path) as files:
                for entry in files:
                    count += private_file(Path(entry.path), False, say=False)
    if count:
        log.warn(
            "{jobs}: {count} more directories and files were open to other users:"
            " made private",
            jobs=str(jobs),
            count=count,
        )
