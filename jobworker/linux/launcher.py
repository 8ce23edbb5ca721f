"""
How a job's process comes to exist.

Every job is spawned as the small C helper ``jobworker-exec`` (see
``linux/exec.c``), which sets the process up and then execs the command. The
server spawns it with no working directory and no uid change, so Twisted takes
its ``posix_spawnp`` path: the cost of a spawn does not grow with the server's
memory, as a ``fork`` of a large Python process would.

The helper starts as root, so it is spawned with an empty environment, never
the job's: a job's ``LD_PRELOAD`` would otherwise run as root before any
cgroup, namespace or privilege drop. The job's environment reaches the helper
as data, in the go-ahead on its stdin (``LaunchRequest.go_ahead``), and only
the command is executed with it, once privileges are gone; a bare command
name is looked up there too, on the job's ``PATH``, as the job's user.

The helper reports on a fourth pipe (child fd 3): a failed setup or exec comes
as an ``error`` line. A plain job's successful exec closes the pipe silently.
An isolated job's helper is PID 1 of the job's PID namespace (made here, just
around the spawn) and stays as its init: it says ``running`` once the command
is exec'd, and ``exit N`` or ``signal N`` when the command ends. It also
builds the job's view of the filesystem ("View" in exec.c): the host's files
read-only, private ``/tmp``, ``/var/tmp``, ``/run`` and ``/dev/shm``, a
minimal ``/dev``, and the request's ``masks`` hidden, its ``writable``
paths writable.

An isolated job's system calls are filtered (``jobworker.linux.seccomp``):
the launcher is given the server's compiled filter, whose memfd each helper
inherits as child fd 4; the command's process loads it just before its exec.
A job with a uid of its own (``jobworker.linux.uids``) has its lock's
descriptor as child fd 5, which its init holds until it exits.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import process
from twisted.internet.interfaces import (
    IProcessProtocol,
    IProcessTransport,
    IReactorProcess,
)
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST

from jobworker.linux.build import helper_path
from jobworker.linux.pidns import new_pid_namespace
from jobworker.linux.seccomp import SyscallFilter
from jobworker.linux.users import PasswdEntry
from jobworker.linux.users import UnknownUser as UnknownUser  # their old home
from jobworker.linux.users import User as User
from jobworker.linux.users import resolve_user as resolve_user

STATUS_FD = 3
# Where the helper finds the system call filter (its --seccomp-fd).
SECCOMP_FD = 4
# What an isolated job's init holds until it exits (its --hold-fd): the lock
# of a uid of the job's own (jobworker.linux.uids).
HOLD_FD = 5
# The helper's --network options for an isolated job: "none" is a network
# namespace of its own with only loopback, "host" keeps the host's network.
NETWORK_MODES = ("none", "host")
# The whole environment the root helper runs with: nothing, whatever the job
# asked for (its variables are data in the go-ahead) or the server has.
HELPER_ENVIRONMENT: dict[str, str] = {}
DEFAULT_JOB_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Each private tmpfs of an isolated job, at most: its pages are charged to
# the job's memory cgroup whatever this says.
DEFAULT_TMPFS_SIZE = 256 * 1024 * 1024
DEFAULT_TMPFS_INODES = 65536
# What an isolated job's helper mounts anew: the host's paths under these
# are out of the job's sight anyway.
PRIVATE_MOUNTS = ("/tmp", "/var/tmp", "/run", "/dev", "/proc", "/sys")
# The most one read() of a job's output pipe takes, and the capacity the
# pipes are given (the most an unprivileged process could ask for, by
# default: /proc/sys/fs/pipe-max-size). Twisted's process reader takes 8 KiB
# a read, and a default pipe holds 64 KiB: a job writing fast then cost the
# reactor a read, a callback and a file write per 8 or 64 KiB. Capturing
# 1 GiB took ~2.5 CPU seconds with 8 KiB, ~1.2 s with 64 KiB and ~0.6 s with
# 1 MiB; the pipe's memory is the kernel's, and only while it is full.
OUTPUT_READ_SIZE = 1024 * 1024
PIPE_SIZE = 1024 * 1024


@dataclass(frozen=True)
class LaunchRequest:
    """Everything needed to start one job's process."""

    # The file to run: with a slash, as it is; a bare name is looked up on
    # the PATH in ``env`` by the helper, as the job's user.
    executable: str
    argv: tuple[str, ...]
    # The command's environment, and nothing but the command's.
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    # cgroup.procs files the process joins before anything else: one per
    # hierarchy on cgroup v1, a single one on v2.
    cgroup_procs: tuple[str, ...] = ()
    # New PID, mount, UTS, IPC and (network "none") network namespaces.
    isolate: bool = False
    network: str = "none"
    hostname: str = "jobworker"
    # With isolate: the command's system calls filtered (the launcher's
    # filter: see jobworker.linux.seccomp). A role may go without.
    seccomp: bool = True
    # The user the command runs as (ids, resolved beforehand: see
    # ``resolve_user``); None keeps the server's.
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()
    # With isolate and a uid: the name the job's view gives it, in its
    # /etc/passwd and /etc/group; and a descriptor its init keeps open for
    # as long as it lives (a uid's lock), never the command's.
    passwd_entry: PasswdEntry | None = None
    hold_fd: int | None = None
    # An isolated job's view of the filesystem: each private tmpfs's size in
    # bytes and inodes; real paths (no symlink on the way) it must not see,
    # a directory shown empty and a file unreadable (one that does not
    # exist is skipped, one under PRIVATE_MOUNTS is hidden anyway); and real
    # paths it may write, where all else is read-only.
    tmpfs_size: int = DEFAULT_TMPFS_SIZE
    tmpfs_inodes: int = DEFAULT_TMPFS_INODES
    masks: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()
    # What the helper waits for before it runs the command: the job's
    # environment, each ``NAME=VALUE`` ended by a NUL, and one NUL more. Made
    # here, so that an environment that cannot be sent fails before a spawn.
    go_ahead: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.network not in NETWORK_MODES:
            raise ValueError(
                f"network must be one of {NETWORK_MODES}: {self.network!r}"
            )
        if (self.uid is None) != (self.gid is None):
            raise ValueError("uid and gid go together")
        if self.groups and self.uid is None:
            raise ValueError("groups need a uid and gid")
        if self.passwd_entry is not None and (self.uid is None or not self.isolate):
            raise ValueError("a passwd entry needs a uid and isolation")
        if self.hold_fd is not None and not self.isolate:
            raise ValueError("only an isolated job's init can hold a descriptor")
        _check_view(self)
        entries = []
        for name, value in self.env.items():
            if not name or "=" in name or "\0" in name or "\0" in value:
                raise ValueError(f"not an environment variable: {name!r}")
            entries.append(f"{name}={value}\0".encode())  # or UnicodeEncodeError
        object.__setattr__(self, "go_ahead", b"".join(entries) + b"\0")


def _check_view(request: LaunchRequest) -> None:
    if not 0 < request.tmpfs_size < 2**64 or not 0 < request.tmpfs_inodes < 2**32:
        raise ValueError("tmpfs_size and tmpfs_inodes must be positive")
    for path in (*request.masks, *request.writable):
        if not path.startswith("/") or os.path.normpath(path) != path or "\0" in path:
            raise ValueError(f"not a normalized absolute path: {path!r}")
    for path in request.writable:
        if path == "/" or under_private_mount(path):
            raise ValueError(f"cannot be made writable (the job's own): {path!r}")


def under_private_mount(path: str) -> bool:
    """Whether ``path`` is one an isolated job's helper mounts anew, or in one."""
    return any(path == top or path.startswith(top + "/") for top in PRIVATE_MOUNTS)


class Launcher(Protocol):
    """Starts a job's process; the seam where isolation plugs in."""

    def launch(
        self, protocol: IProcessProtocol, request: LaunchRequest
    ) -> IProcessTransport: ...


class HelperLauncher:
    """
    Launch jobs through the ``jobworker-exec`` helper. With a
    ``syscall_filter``, an isolated job's command runs under it, unless its
    request says ``seccomp=False``; without one, no job's is filtered.
    """

    def __init__(
        self,
        reactor: IReactorProcess,
        helper: Path | None = None,
        syscall_filter: SyscallFilter | None = None,
    ) -> None:
        self._reactor = reactor
        self._helper = str(helper or helper_path())
        self._filter = syscall_filter

    def _filter_for(self, request: LaunchRequest) -> SyscallFilter | None:
        return self._filter if request.isolate and request.seccomp else None

    def helper_argv(self, request: LaunchRequest) -> list[str]:
        """The helper's command line for ``request`` (flags: see exec.c)."""
        argv = [self._helper, "--status-fd", str(STATUS_FD)]
        for procs in request.cgroup_procs:
            argv += ["--cgroup-procs", procs]
        if request.isolate:
            argv += ["--isolate", "--network", request.network]
            argv += ["--hostname", request.hostname]
            argv += ["--tmpfs-size", str(request.tmpfs_size)]
            argv += ["--tmpfs-inodes", str(request.tmpfs_inodes)]
            for path in request.masks:  # each mask is a mount: skip needless ones
                if not under_private_mount(path):
                    argv += ["--mask", path]
            for path in request.writable:
                argv += ["--writable", path]
            if request.passwd_entry is not None:
                argv += ["--passwd-entry", request.passwd_entry.option()]
            if request.hold_fd is not None:
                argv += ["--hold-fd", str(HOLD_FD)]
        if request.uid is not None and request.gid is not None:
            argv += ["--uid", str(request.uid), "--gid", str(request.gid)]
            argv += ["--groups", ",".join(str(g) for g in request.groups)]
        if request.cwd is not None:
            argv += ["--cwd", request.cwd]
        if self._filter_for(request) is not None:
            argv += ["--seccomp-fd", str(SECCOMP_FD)]
        return [*argv, "--", request.executable, *request.argv]

    def launch(
        self, protocol: IProcessProtocol, request: LaunchRequest
    ) -> IProcessTransport:
        """
        Spawn the helper for ``request``. An isolated job's PID namespace is
        made here rather than by the helper, so that the helper is its PID 1
        with no process left outside to relay signals and statuses. Raises
        ``OSError`` if the process or its namespace cannot be made.
        """
        birthplace = (
            new_pid_namespace() if request.isolate else contextlib.nullcontext()
        )
        child_fds: dict[int, str | int] = {0: "w", 1: "r", 2: "r", STATUS_FD: "r"}
        syscall_filter = self._filter_for(request)
        if syscall_filter is not None:
            child_fds[SECCOMP_FD] = syscall_filter.fd
        if request.hold_fd is not None:
            child_fds[HOLD_FD] = request.hold_fd
        with birthplace:
            # What the reactor's spawnProcess does on POSIX, with our Process.
            transport: IProcessTransport = JobProcess(
                self._reactor,
                self._helper,
                self.helper_argv(request),
                HELPER_ENVIRONMENT,
                None,
                protocol,
                childFDs=child_fds,
            )
            return transport


class _OutputPipeReader(process.ProcessReader):
    """Twisted's reader of a child's pipe, taking OUTPUT_READ_SIZE a read."""

    def doRead(self) -> object:
        # As twisted.internet.fdesc.readFromFD, but for the size.
        try:
            data = os.read(self.fd, OUTPUT_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return CONNECTION_LOST
        if not data:
            return CONNECTION_DONE
        self.dataReceived(data)  # type: ignore[no-untyped-call]
        return None


class JobProcess(process.Process):
    """
    Twisted's POSIX process, with larger reads of the output pipes, and no
    event before the constructor has returned.

    Twisted reaps the child once right after spawning it; a child that has
    already exited by then (an isolated ``/bin/true`` may) is reported
    ended from inside the constructor: its protocol hears of the end before
    the launcher has the transport, whose ``pid`` is already None. Here that
    report waits for the next reactor turn, like every other process event.
    Until then ``pid`` names a reaped process: the kernel hands out numbers
    in sequence, so it is not reused within one turn.
    """

    processReaderFactory = _OutputPipeReader
    _spawning = False

    def __init__(self, reactor: Any, *args: Any, **kwargs: Any) -> None:
        self._spawning = True
        try:
            super().__init__(reactor, *args, **kwargs)  # type: ignore[no-untyped-call]
        finally:
            self._spawning = False
        for child_fd in (1, 2):  # see PIPE_SIZE; a refusal leaves the default
            reader = self.pipes.get(child_fd)
            if reader is not None:
                with contextlib.suppress(OSError):
                    fcntl.fcntl(reader.fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)

    def _trySpawnInsteadOfFork(
        self,
        path: str | None,
        uid: int | None,
        gid: int | None,
        executable: str,
        args: list[str],
        environment: dict[str, str],
        kwargs: dict[str, Any],
    ) -> bool:
        """
        ``posix_spawn`` the helper, as Twisted does, but without asking about
        every descriptor the server has open. Twisted lists /proc/self/fd and
        checks each for close-on-exec, to close those the child would keep:
        with a thousand jobs running that is thousands of system calls per
        spawn, half the server's time. The helper closes every descriptor it
        was not given itself (``close_inherited`` in exec.c); here only the
        descriptors being mapped into the child need looking at.
        """
        if path is not None or uid is not None or gid is not None:
            return False  # the helper does these itself; Twisted would fork
        fdmap: dict[int, int] = kwargs["fdmap"]
        mapped = {0, 1, 2, *fdmap, *fdmap.values()}
        fd_state: list[tuple[int, bool]] = []
        for fd in sorted(mapped):
            with contextlib.suppress(OSError):  # not open here
                flags = fcntl.fcntl(fd, fcntl.F_GETFD)
                fd_state.append((fd, bool(flags & fcntl.FD_CLOEXEC)))
        actions = process._getFileActions(
            fd_state, fdmap, doClose=os.POSIX_SPAWN_CLOSE, doDup2=os.POSIX_SPAWN_DUP2
        )
        ignored = [
            number
            for number in range(1, signal.NSIG)
            if signal.getsignal(number) == signal.SIG_IGN
        ]
        self.pid = os.posix_spawn(
            executable, args, environment, file_actions=actions, setsigdef=ignored
        )
        self.status = -1
        return True

    def processEnded(self, status: int) -> None:
        if self._spawning:
            self._reactor.callLater(0, super().processEnded, status)
        else:
            super().processEnded(status)


# What the helper's stages of an isolated job's setup concern, for messages;
# another stage is about the command.
STAGE_SUBJECTS = {
    "oom": "oom_score_adj",
    "readonly": "/",
    "tmpfs": "/tmp /var/tmp /run /run/lock",
    "dev": "/dev",
    "passwd": "/etc/passwd /etc/group",
    "rlimit": "RLIMIT_NOFILE RLIMIT_CORE RLIMIT_NPROC",
    "caps": "capabilities",
}


def describe_launch_error(line: str, request: LaunchRequest) -> str:
    """Turn the helper's ``error <stage> <errno>`` line into a message."""
    parts = line.split()
    try:
        stage, number = parts[1], int(parts[2])
    except (IndexError, ValueError):
        return f"launch failed: {line.strip()}"
    subject = STAGE_SUBJECTS.get(stage, request.argv[0])
    if stage == "chdir":
        subject = request.cwd or ("/tmp" if request.isolate else "/")
    elif stage == "cgroup" and request.cgroup_procs:
        subject = " ".join(request.cgroup_procs)
    elif stage == "seccomp":
        subject = "system call filter"
    elif stage == "mask" and request.masks:
        subject = " ".join(request.masks)
    elif stage == "writable" and request.writable:
        subject = " ".join(request.writable)
    return describe_os_error(stage, subject, number)


def describe_os_error(stage: str, command: str, number: int) -> str:
    """``exec /bin/nope: No such file or directory (ENOENT)``."""
    name = errno.errorcode.get(number, str(number))
    return f"{stage} {command}: {os.strerror(number)} ({name})"
