"""
``jobworker``: the server as a command of its own.

Installers such as pipx put a package's own scripts on the PATH, not
twistd. ``jobworker ARGS`` is ``twistd --nodaemon --pidfile= jobworker
ARGS``: the same plugin and options, in the foreground, logging to stdout,
with no pid file.
"""

from __future__ import annotations

import sys

from twisted.scripts import twistd

TWISTD_OPTIONS = ["--nodaemon", "--pidfile=", "jobworker"]


def main() -> None:
    sys.argv[1:] = [*TWISTD_OPTIONS, *sys.argv[1:]]
    twistd.run()  # type: ignore[no-untyped-call]
