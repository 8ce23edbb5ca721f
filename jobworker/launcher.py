"""
How a job's process comes to exist.

Every job is spawned as the small C helper ``jobworker-exec`` (see
``linux/exec.c``), which sets the process up and then execs the command. The
server spawns it with no working directory and no uid change, so Twisted takes
its ``posix_spawnp`` path: the cost of a spawn does not grow with the server's
memory, as a ``fork`` of a large Python process would.

The helper reports on a fourth pipe (child fd 3): a failed setup or exec comes
as an ``error`` line; a successful exec closes the pipe silently.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from twisted.internet.interfaces import (
    IProcessProtocol,
    IProcessTransport,
    IReactorProcess,
)

from jobworker.linux.build import helper_path

STATUS_FD = 3
DEFAULT_JOB_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class LaunchRequest:
    """Everything needed to start one job's process."""

    executable: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None


class Launcher(Protocol):
    """Starts a job's process; the seam where isolation plugs in."""

    def launch(
        self, protocol: IProcessProtocol, request: LaunchRequest
    ) -> IProcessTransport: ...


class HelperLauncher:
    """Launch jobs through the ``jobworker-exec`` helper."""

    def __init__(self, reactor: IReactorProcess, helper: Path | None = None) -> None:
        self._reactor = reactor
        self._helper = str(helper or helper_path())

    def helper_argv(self, request: LaunchRequest) -> list[str]:
        argv = [self._helper, "--status-fd", str(STATUS_FD)]
        if request.cwd is not None:
            argv += ["--cwd", request.cwd]
        return [*argv, "--", request.executable, *request.argv]

    def launch(
        self, protocol: IProcessProtocol, request: LaunchRequest
    ) -> IProcessTransport:
        return self._reactor.spawnProcess(
            protocol,
            self._helper,
            self.helper_argv(request),
            env=dict(request.env),
            path=None,
            childFDs={0: "w", 1: "r", 2: "r", STATUS_FD: "r"},
        )


def resolve_command(command: str, search_path: str | None) -> str:
    """
    The file to execute for ``command``: a name with a slash as it is, a bare
    name looked up on ``search_path``. Raises ``FileNotFoundError``.
    """
    if "/" in command:
        return command
    for directory in (search_path or DEFAULT_JOB_PATH).split(os.pathsep):
        candidate = os.path.join(directory or ".", command)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command)


def describe_launch_error(line: str, request: LaunchRequest) -> str:
    """Turn the helper's ``error <stage> <errno>`` line into a message."""
    parts = line.split()
    try:
        stage, number = parts[1], int(parts[2])
    except (IndexError, ValueError):
        return f"launch failed: {line.strip()}"
    subject = request.cwd if stage == "chdir" and request.cwd else request.argv[0]
    return describe_os_error(stage, subject, number)


def describe_os_error(stage: str, command: str, number: int) -> str:
    """``exec /bin/nope: No such file or directory (ENOENT)``."""
    name = errno.errorcode.get(number, str(number))
    return f"{stage} {command}: {os.strerror(number)} ({name})"
