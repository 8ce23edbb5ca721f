"""
The launch helper's own setup, timed without a server: from its spawn until
it reports ``running`` (the command exec'd), for an isolated job launched as
the server launches one (the same argv, a PID namespace of its own, the
system call filter). The sandbox's cost shows here without the noise of TLS
and HTTP: compare it with the floor's isolated spawn, and with an older
helper run the same way.
"""

from __future__ import annotations

import fcntl
import os
import time
from typing import TYPE_CHECKING, Any, cast

from benchmarks.report import Figure
from jobworker.linux.launcher import (
    SECCOMP_FD,
    STATUS_FD,
    HelperLauncher,
    LaunchRequest,
)
from jobworker.linux.pidns import new_pid_namespace
from jobworker.linux.seccomp import job_syscall_filter

if TYPE_CHECKING:
    from benchmarks.scenarios import Bench

NOBODY = 65534


def isolated_true() -> LaunchRequest:
    """``/bin/true`` as an isolated job, with the masks a server gives."""
    masks = ("/etc/ssl/private", "/var/lib/jobworker", "/etc/jobworker/policy.toml")
    return LaunchRequest(
        executable="/bin/true",
        argv=("true",),
        isolate=True,
        uid=NOBODY,
        gid=NOBODY,
        masks=masks,
    )


def high(fd: int) -> int:
    """``fd`` renumbered 10 or more: no dup2 of a spawn then overwrites it."""
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return copy


def launch_until_running(argv: list[str], go_ahead: bytes, filter_fd: int) -> float:
    """Seconds from the helper's spawn to its ``running`` line."""
    status_r, status_w = os.pipe()
    stdin_r, stdin_w = os.pipe()
    # Above the child's numbers, so that no dup2 below overwrites another's.
    stdin_r, status_w = high(stdin_r), high(status_w)
    actions = [
        (os.POSIX_SPAWN_DUP2, stdin_r, 0),
        (os.POSIX_SPAWN_DUP2, status_w, STATUS_FD),
        (os.POSIX_SPAWN_DUP2, filter_fd, SECCOMP_FD),
    ]
    start = time.perf_counter()
    with new_pid_namespace():
        pid = os.posix_spawn(argv[0], argv, {}, file_actions=actions)
    os.close(stdin_r)
    os.close(status_w)
    os.write(stdin_w, go_ahead)
    os.close(stdin_w)
    said = b""
    while b"running\n" not in said:
        chunk = os.read(status_r, 256)
        if not chunk:
            break
        said += chunk
    elapsed = time.perf_counter() - start
    os.close(status_r)
    os.waitpid(pid, 0)
    if b"running\n" not in said:
        raise RuntimeError(f"helper: {said!r}")
    return elapsed


def helper_setup(bench: Bench) -> list[Figure]:
    syscall_filter = job_syscall_filter()
    launcher = HelperLauncher(cast(Any, None), syscall_filter=syscall_filter)
    request = isolated_true()
    argv = launcher.helper_argv(request)
    filter_fd = fcntl.fcntl(syscall_filter.fd, fcntl.F_DUPFD_CLOEXEC, 10)
    samples: list[float] = []
    deadline = time.monotonic() + 30
    for _ in range(bench.size(1000, 200)):
        if time.monotonic() > deadline:
            break
        samples.append(launch_until_running(argv, request.go_ahead, filter_fd) * 1000)
    os.close(filter_fd)
    name = "isolated helper: spawn until running"
    figure = Figure.of("helper setup", name, "ms", samples)
    figure.note = "namespaces, view, seccomp, no cgroups; /bin/true as nobody"
    return [figure]
