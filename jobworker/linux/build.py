"""
Build, find and vet the C helper that every job is launched through.

A wheel carries the helper, compiled when the wheel was built (``setup.py``).
In a checkout, ``python -m jobworker.linux.build`` compiles ``exec.c``
beside this file into ``jobworker-exec`` unless an up-to-date binary is
already there; an editable install does the same.

A root server runs the helper as root: whoever can change the file, or
any directory on its way from ``/``, can have root run their code. A root
server therefore refuses a helper that a user other than root owns or may
write (a user's own virtualenv, say); ``helper_path`` checks, and names the
culprit in one line. The check reads stdlib only, for ``setup.py`` loads
this module on its own, before the package's dependencies are installed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("exec.c")
HELPER = Path(__file__).with_name("jobworker-exec")
# Group and other write: another user could change what root runs.
WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


class HelperMissing(Exception):
    """The launch helper is not built, and cannot be used."""


class UnsafeHelper(Exception):
    """A user other than root could change the helper a root server runs."""


def helper_path() -> Path:
    """
    The built helper's real path, or ``HelperMissing`` saying how to build
    it; for a root server, only if no one but root can change it
    (``UnsafeHelper``).
    """
    if not os.access(HELPER, os.X_OK):
        raise HelperMissing(
            f"the job launch helper {HELPER} is not built: "
            f"run `{sys.executable} -m jobworker.linux.build`"
        )
    real = Path(os.path.realpath(HELPER))
    if os.geteuid() == 0:
        check_root_only(real)
    return real


def check_root_only(path: Path) -> None:
    """
    Raise ``UnsafeHelper`` unless root alone can change ``path`` (a real
    path: no symlink in it): it and every directory above it are root's and
    writable by no group or other user, except a sticky directory (``/tmp``),
    where no one may move what is not theirs.
    """
    for place in (path, *path.parents):
        problem = _not_root_only(os.lstat(place), above=place != path)
        if problem:
            culprit = "it" if place == path else str(place)
            raise UnsafeHelper(
                f"the job launch helper {path} is not safe to run as root:"
                f" {culprit} is {problem}; install jobworker where only root"
                " can write"
            )


def _not_root_only(info: os.stat_result, above: bool) -> str | None:
    """What lets a user other than root change this file or directory."""
    if info.st_uid != 0:
        return f"owned by uid {info.st_uid}, not root"
    if not info.st_mode & WRITABLE_BY_OTHERS:
        return None
    if above and stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX:
        return None
    if info.st_mode & stat.S_IWGRP:
        return "writable by its group"
    return "writable by others"


def build(force: bool = False) -> Path:
    """Compile the helper beside its source if missing or older than it."""
    if (
        not force
        and HELPER.exists()
        and HELPER.stat().st_mtime >= SOURCE.stat().st_mtime
    ):
        return HELPER
    return compile_helper(SOURCE, HELPER)


def compile_helper(source: Path, target: Path) -> Path:
    """Compile ``source`` into ``target`` (0755) with the system's C compiler."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise HelperMissing("no C compiler (cc) found to build the job launch helper")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    subprocess.run(
        [cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp), str(source)],
        check=True,
    )
    tmp.chmod(0o755)
    tmp.replace(target)
    return target


def main() -> None:
    try:
        path = build(force="--force" in sys.argv)
    except (HelperMissing, subprocess.CalledProcessError) as e:
        sys.exit(f"jobworker: {e}")
    print(f"jobworker: launch helper ready: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
