"""
Build the C helper that every job is launched through.

``python -m jobworker.linux.build`` compiles ``exec.c`` beside this file into
``jobworker-exec`` unless an up-to-date binary is already there. The project's
scripts run it after installing; the server refuses to start without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("exec.c")
HELPER = Path(__file__).with_name("jobworker-exec")


class HelperMissing(Exception):
    """The launch helper is not built, and cannot be used."""


def helper_path() -> Path:
    """Return the built helper, or explain how to build it."""
    if not os.access(HELPER, os.X_OK):
        raise HelperMissing(
            f"the job launch helper {HELPER} is not built: "
            f"run `{sys.executable} -m jobworker.linux.build`"
        )
    return HELPER


def build(force: bool = False) -> Path:
    """Compile the helper if it is missing or older than its source."""
    if (
        not force
        and HELPER.exists()
        and HELPER.stat().st_mtime >= SOURCE.stat().st_mtime
    ):
        return HELPER
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise HelperMissing("no C compiler (cc) found to build the job launch helper")
    tmp = HELPER.with_suffix(".tmp")
    subprocess.run(
        [cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp), str(SOURCE)],
        check=True,
    )
    tmp.chmod(0o755)
    tmp.replace(HELPER)
    return HELPER


def main() -> None:
    try:
        path = build(force="--force" in sys.argv)
    except (HelperMissing, subprocess.CalledProcessError) as e:
        sys.exit(f"jobworker: {e}")
    print(f"jobworker: launch helper ready: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
