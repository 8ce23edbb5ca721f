"""
The system call filter of isolated jobs, against real jobs.

Each attack is written as the attacker's attempt, and fails. Most run as
root inside the job (a job whose role runs it as root, capabilities and
all): there the filter is all that stands between the attempt and the
kernel. The ordinary programs keep working, as nobody: threads, pipelines,
subprocesses, shared memory, tracing, /proc.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.interfaces import IProcessProtocol, IProcessTransport

from jobworker.jobs.record import Job
from jobworker.jobs.service import JobManager, Settings
from jobworker.jobs.spec import JobSpec, parse_job_spec
from jobworker.linux.build import build, helper_path
from jobworker.linux.launcher import HelperLauncher, LaunchRequest
from jobworker.linux.libseccomp import Libseccomp
from jobworker.linux.seccomp import SyscallFilter, job_syscall_filter
from jobworker.pki import write_dev_pki
from jobworker.wire import JobStatus, Stream
from tests.integration.test_tap import twistd

reactor: Any = global_reactor
PYTHON = "/usr/bin/python3"  # Debian's, which every user may run

# Each attempt in a child of its own (one that gets through cannot change
# what the next one tries from); prints {name: "ok" or the errno's name}.
# An argument that is a string is passed as bytes; {"buffer": N}, as N zeros.
ATTEMPTS = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def value(a):
    if isinstance(a, str):
        return ctypes.c_char_p(a.encode())
    if isinstance(a, dict):
        return ctypes.create_string_buffer(a["buffer"])
    return ctypes.c_long(a)

def attempt(number, args):
    read, write = os.pipe()
    if os.fork() == 0:
        result = libc.syscall(ctypes.c_long(number), *map(value, args))
        said = "ok" if result != -1 else errno.errorcode[ctypes.get_errno()]
        os.write(write, said.encode())
        os._exit(0)
    os.close(write)
    said = os.read(read, 64).decode()
    os.wait()
    return said

calls = json.loads(sys.argv[1])
print(json.dumps({name: attempt(*call) for name, call in calls.items()}))
"""
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
CLONE_NEWNS, CLONE_NEWTIME = 0x20000, 0x80
AT_FDCWD = -100
# x86_64 numbers, and arguments that would do nothing harmful (if anything)
# were the filter not there; each must fail with EPERM.
REFUSED = {
    "unshare(CLONE_NEWUSER)": (272, [CLONE_NEWUSER]),
    "unshare(CLONE_NEWNS)": (272, [CLONE_NEWNS]),
    "unshare(CLONE_NEWNET)": (272, [CLONE_NEWNET]),
    "unshare(CLONE_NEWTIME)": (272, [CLONE_NEWTIME]),
    "clone(CLONE_NEWUSER)": (56, [CLONE_NEWUSER | signal.SIGCHLD, 0, 0, 0, 0]),
    "setns": (308, [-1, 0]),
    "mount tmpfs": (165, ["none", "/mnt", "tmpfs", 0, 0]),
    "umount2 /proc": (166, ["/proc", 2]),
    "pivot_root": (155, [".", "."]),
    "chroot": (161, ["/"]),
    "open_tree": (428, [AT_FDCWD, "/", 0]),
    "move_mount": (429, [-1, "", -1, "", 0]),
    "fsopen": (430, ["tmpfs", 0]),
    "fsconfig": (431, [-1, 0, 0, 0, 0]),
    "fsmount": (432, [-1, 0, 0]),
    "fspick": (433, [AT_FDCWD, "/", 0]),
    "mount_setattr": (442, [-1, "", 0, 0, 0]),
    "keyctl": (250, [0, -3, 0]),  # KEYCTL_GET_KEYRING_ID of the session's
    "add_key": (248, ["user", "jobworker", "x", 1, -2]),
    "request_key": (249, ["user", "jobworker", 0, 0]),
    "bpf": (321, [0, 0, 0]),
    "perf_event_open": (298, [0, 0, -1, -1, 0]),
    "userfaultfd": (323, [1]),  # UFFD_USER_MODE_ONLY: allowed to anyone
    "io_uring_setup": (425, [1, {"buffer": 120}]),
    "io_uring_enter": (426, [-1, 0, 0, 0, 0, 0]),
    "io_uring_register": (427, [-1, 0, 0, 0]),
    "init_module": (175, [0, 0, ""]),
    "finit_module": (313, [-1, "", 0]),
    "delete_module": (176, ["jobworker_no_such_module", 0]),
    "kexec_file_load": (320, [-1, -1, 0, 0, 0]),
    "open_by_handle_at": (304, [AT_FDCWD, 0, 0]),
    "name_to_handle_at": (303, [AT_FDCWD, "/", 0, 0, 0]),
    "personality(READ_IMPLIES_EXEC)": (135, [0x0400000]),
    "reboot (bad magic)": (169, [0, 0, 0, 0]),
    "swapon": (167, ["/no/such/swap", 0]),
    "settimeofday": (164, [0, 0]),
    "clock_settime": (227, [0, 0]),
    "adjtimex": (159, [0]),
    "syslog": (103, [10, 0, 0]),  # SYSLOG_ACTION_SIZE_BUFFER
    "iopl": (172, [0]),
    "ioperm": (173, [0, 0, 0]),
    "quotactl": (179, [0, 0, 0, 0]),
    "lookup_dcookie": (212, [0, 0, 0]),
    "socket(AF_NETLINK, NETLINK_AUDIT)": (41, [16, 3, 9]),
    "socket(AF_NETLINK, NETLINK_KOBJECT_UEVENT)": (41, [16, 3, 15]),
    "socket(AF_PACKET)": (41, [17, 3, 0]),
    "socket(AF_VSOCK)": (41, [40, 1, 0]),
    "socket(AF_ALG)": (41, [38, 5, 0]),
    "socketpair(AF_TIPC)": (53, [30, 5, 0, {"buffer": 8}]),
}
# What ordinary programs do, and must keep doing.
ALLOWED = {
    "socket(AF_UNIX)": (41, [1, 1, 0]),
    "socket(AF_INET6)": (41, [10, 2, 0]),
    "socket(AF_NETLINK, NETLINK_ROUTE)": (41, [16, 3, 0]),
    "socket(AF_NETLINK, NETLINK_SOCK_DIAG)": (41, [16, 3, 4]),
    "personality(query)": (135, [0xFFFFFFFF]),
    "personality(ADDR_NO_RANDOMIZE)": (135, [0x40000]),
    "unshare(CLONE_FS)": (272, [0x200]),
}
# Makes no thread: glibc falls back to clone, on exactly this error.
CLONE3 = {"clone3": (435, [0, 0])}

# A call of another ABI: i386's getpid through int 0x80, from a page of
# machine code; x32's, through the x32 bit of the system call number.
I386_GETPID = r"""
import ctypes, mmap, resource
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
code = b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"  # mov eax, 20; int 0x80; ret
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
address = ctypes.addressof(ctypes.c_char.from_buffer(page))
print(ctypes.CFUNCTYPE(ctypes.c_int)(address)())
"""
X32_GETPID = r"""
import ctypes, resource
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
print(ctypes.CDLL(None).syscall(0x40000000 | 39))
"""


@pytest.fixture(scope="module", autouse=True)
def helper() -> None:
    """The helper as its source is now, not as it was last built."""
    build()


@pytest.fixture
def manager(tmp_path: Path, managers: list[JobManager]) -> JobManager:
    """Isolated jobs, filtered as a server's are: its own launcher."""
    m = JobManager(reactor, tmp_path / "data", Settings(default_grace=2))
    m.open()
    managers.append(m)
    return m


class Unfiltered:
    """A launcher that sends every isolated job without the filter, as a
    role that turns it off would."""

    def __init__(self) -> None:
        self._launcher = HelperLauncher(reactor, syscall_filter=job_syscall_filter())

    def launch(
        self, protocol: IProcessProtocol, request: LaunchRequest
    ) -> IProcessTransport:
        return self._launcher.launch(protocol, replace(request, seccomp=False))


def spec(command: str, *args: str) -> JobSpec:
    return parse_job_spec({"command": command, "args": list(args), "cwd": "/tmp"})


async def run(
    manager: JobManager, job_spec: JobSpec, run_as: str | None = "nobody"
) -> tuple[Job, str, str]:
    """Run a job to its end (as ``run_as``, "root" too): record, out, err."""
    job = await manager.start(job_spec, "alice", run_as=run_as)
    ended = await manager.wait(job.id)
    out = await manager.read_output(job.id, Stream.STDOUT)
    err = await manager.read_output(job.id, Stream.STDERR)
    return ended, out.data.decode(), err.data.decode()


async def attempts(
    manager: JobManager, calls: dict[str, Any], run_as: str | None = "root"
) -> dict[str, str]:
    ended, out, err = await run(
        manager, spec(PYTHON, "-c", ATTEMPTS, json.dumps(calls)), run_as
    )
    assert (ended.status, ended.exit_code) == (JobStatus.EXITED, 0), err
    result: dict[str, str] = json.loads(out)
    return result


# Attacks


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_job_runs_filtered_and_its_init_not(manager: JobManager) -> None:
    """The command (and what it runs) has the filter; its init, which must
    go on reporting, has none."""
    ended, out, _ = await run(
        manager,
        spec(
            "/bin/sh",
            "-c",
            "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status /proc/1/status",
        ),
    )
    assert ended.exit_code == 0
    assert out.split() == [
        *("/proc/self/status:NoNewPrivs:", "1", "/proc/self/status:Seccomp:", "2"),
        *("/proc/1/status:NoNewPrivs:", "0", "/proc/1/status:Seccomp:", "0"),
    ]


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_root_in_a_job_cannot_reach_the_kernels_doors(
    manager: JobManager,
) -> None:
    """A job running as root, with every capability, gets EPERM for each
    refused call: namespaces, mounts, keys, bpf, perf, userfaultfd, io_uring,
    modules, kexec, file handles, clocks, and the unusual socket families."""
    assert await attempts(manager, REFUSED) == dict.fromkeys(REFUSED, "EPERM")


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_nobody_in_a_job_is_refused_as_well(manager: JobManager) -> None:
    """The same calls fail the same way for an unprivileged job."""
    result = await attempts(manager, REFUSED, run_as="nobody")
    assert result == dict.fromkeys(REFUSED, "EPERM")


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_without_the_filter_the_attempts_get_further(
    tmp_path: Path, managers: list[JobManager]
) -> None:
    """The control: with the filter off (as a role may ask), the kernel
    itself answers; clone3 fails for its arguments, not with ENOSYS."""
    m = JobManager(reactor, tmp_path / "data", Settings(), launcher=Unfiltered())
    m.open()
    managers.append(m)
    names = ("keyctl", "add_key", "unshare(CLONE_NEWUSER)")
    calls = {name: REFUSED[name] for name in names} | CLONE3
    result = await attempts(m, calls, run_as="nobody")
    assert result == {**dict.fromkeys(names, "ok"), "clone3": "EINVAL"}
    ended, out, _ = await run(m, spec("grep", "^Seccomp:", "/proc/self/status"))
    assert (ended.exit_code, out.split()) == (0, ["Seccomp:", "0"])


@pytest.mark.root
@pytest.mark.parametrize(
    "command",
    [("unshare", "-U", "true"), ("unshare", "-r", "true"), ("unshare", "-m", "true")],
    ids=" ".join,
)
@pytest_twisted.ensureDeferred
async def test_unshare_fails(manager: JobManager, command: tuple[str, ...]) -> None:
    """No new user (or any other) namespace, even as root in the job."""
    for run_as in ("root", "nobody"):
        ended, _, err = await run(manager, spec(*command), run_as)
        assert ended.exit_code == 1
        assert "unshare failed: Operation not permitted" in err


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_mount_fails_even_as_root(manager: JobManager) -> None:
    """mount(8) as root in the job: refused, and nothing is mounted."""
    ended, _, err = await run(
        manager,
        spec(
            "/bin/sh",
            "-c",
            "mount -t tmpfs none /mnt; grep -c ' /mnt ' /proc/self/mounts",
        ),
        run_as="root",
    )
    assert "permission denied" in err.lower()
    assert ended.exit_code == 1  # grep found no /mnt mount


@pytest.mark.root
@pytest.mark.parametrize("script", [I386_GETPID, X32_GETPID], ids=["i386", "x32"])
@pytest_twisted.ensureDeferred
async def test_other_abis_kill_the_job(manager: JobManager, script: str) -> None:
    """A 32-bit or x32 system call is of a "bad architecture": SIGSYS."""
    ended, out, _ = await run(manager, spec(PYTHON, "-c", script))
    assert (ended.status, ended.signal, out) == (JobStatus.EXITED, signal.SIGSYS, "")


# Ordinary programs


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_ordinary_calls_are_allowed(manager: JobManager) -> None:
    """Sockets of the usual families, netlink for routes and diagnostics,
    harmless personalities, unsharing what is no namespace; clone3 ENOSYS."""
    result = await attempts(manager, ALLOWED | CLONE3, run_as="nobody")
    assert result == {**dict.fromkeys(ALLOWED, "ok"), "clone3": "ENOSYS"}


THREADS = """
import threading
seen = []
threads = [threading.Thread(target=seen.append, args=(n,)) for n in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(sorted(seen) == list(range(8)), threading.active_count())
"""
SUBPROCESSES = """
import os, subprocess
echo = subprocess.run(["/bin/echo", "child"], capture_output=True, text=True)
print(echo.stdout.strip())
pid = os.posix_spawn("/bin/true", ["true"], {})
print(os.waitpid(pid, 0)[1])
"""
SHARED_MEMORY = """
from multiprocessing import shared_memory
block = shared_memory.SharedMemory(create=True, size=4096)
block.buf[:5] = b"hello"
other = shared_memory.SharedMemory(name=block.name)
print(bytes(other.buf[:5]).decode())
other.close()
block.close()
block.unlink()
"""
PIPELINE = "echo c a b | tr ' ' '\\n' | sort | head -n 2"
BACKGROUND = "(sleep 0.01 &); wait; echo done"
PS = ("ps", "-e", "-o", "pid=,comm=")
STRACE = ("strace", "-f", "-qq", "-e", "trace=none", "/bin/true")
NETWORK = """
import socket
print(socket.if_nameindex()[0][1], socket.getaddrinfo("localhost", 80)[0][4][1])
"""


@pytest.mark.root
@pytest.mark.parametrize(
    ("command", "expected"),
    [
        pytest.param((PYTHON, "-c", THREADS), "True 1", id="threads"),
        pytest.param((PYTHON, "-c", SUBPROCESSES), "child 0", id="subprocesses"),
        pytest.param((PYTHON, "-c", SHARED_MEMORY), "hello", id="dev-shm"),
        pytest.param((PYTHON, "-c", NETWORK), "lo 80", id="netlink"),
        pytest.param(("/bin/sh", "-c", PIPELINE), "a b", id="pipeline"),
        pytest.param(("/bin/sh", "-c", BACKGROUND), "done", id="background"),
        pytest.param(("/bin/ls", "-d", "/"), "/", id="ls"),
        pytest.param(PS, "1 jobworker-exec 2 ps", id="ps"),
        pytest.param(("ip", "-o", "link", "show", "lo"), None, id="ip"),
        pytest.param(("git", "--version"), None, id="git"),
        pytest.param(("setarch", "x86_64", "-R", "true"), "", id="setarch"),
        pytest.param(STRACE, "", id="strace"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_ordinary_programs_work(
    manager: JobManager, command: tuple[str, ...], expected: str | None
) -> None:
    """Threads (clone3 refused, glibc falls back), subprocesses, shared
    memory in /dev/shm, pipelines, /proc, netlink, git, tracing."""
    ended, out, err = await run(manager, spec(*command))
    assert (ended.status, ended.exit_code) == (JobStatus.EXITED, 0), err
    if expected is not None:
        assert out.split() == expected.split()


# Loading


def run_helper(syscall_filter: SyscallFilter, *command: str) -> tuple[str, bytes]:
    """The helper itself, given ``syscall_filter``: its status, stdout."""
    status_read, status_write = os.pipe()
    argv = [str(helper_path()), "--status-fd", str(status_write)]
    argv += ["--seccomp-fd", str(syscall_filter.fd)]
    try:
        result = subprocess.run(
            [*argv, "--", *command],
            input=b"\0",  # the go-ahead: no environment
            capture_output=True,
            pass_fds=(status_write, syscall_filter.fd),
            timeout=30,
        )
    finally:
        os.close(status_write)
    with os.fdopen(status_read, "rb") as status:
        return status.read().decode(), result.stdout


@pytest.fixture
def filters() -> Iterator[list[SyscallFilter]]:
    made: list[SyscallFilter] = []
    yield made
    for made_filter in made:
        os.close(made_filter.fd)


@pytest.mark.root
@pytest.mark.parametrize(
    "program",
    [b"\0" * 5, b"", b"\x06\0\0\0\0\0\0\0" * 4097, b"\0" * 8],  # ld #0: no ret
    ids=["partial", "empty", "too-long", "invalid"],
)
def test_a_bad_program_runs_nothing(
    program: bytes, filters: list[SyscallFilter]
) -> None:
    """A program that cannot be read or loaded is an error, and nothing runs."""
    filters.append(SyscallFilter.holding(program))
    status, out = run_helper(filters[-1], "/bin/sh", "sh", "-c", "echo ran")
    assert (status, out) == (f"error seccomp {errno.EINVAL}\n", b"")


@pytest.mark.root
def test_the_helper_runs_the_command_under_the_program() -> None:
    """Given the server's program, the command runs, filtered."""
    grep = ("/bin/grep", "grep", "^Seccomp:", "/proc/self/status")
    status, out = run_helper(job_syscall_filter(), *grep)
    assert (status, out.split()) == ("", [b"Seccomp:", b"2"])


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_a_load_failure_fails_the_start(
    tmp_path: Path, managers: list[JobManager], filters: list[SyscallFilter]
) -> None:
    """The job fails to start, saying the filter could not be loaded."""
    filters.append(SyscallFilter.holding(b"\0" * 8))
    launcher = HelperLauncher(reactor, syscall_filter=filters[-1])
    m = JobManager(reactor, tmp_path / "data", Settings(), launcher=launcher)
    m.open()
    managers.append(m)
    marker = tmp_path / "ran"
    job = await m.start(spec("/bin/sh", "-c", f"touch {marker}"), "alice")
    assert (job.status, job.error) == (
        JobStatus.FAILED_TO_START,
        "seccomp system call filter: Invalid argument (EINVAL)",
    )
    assert not marker.exists()


# The launcher's orders


def test_only_isolated_jobs_get_the_filter(filters: list[SyscallFilter]) -> None:
    """--seccomp-fd for an isolated request, unless it goes without, and
    only from a launcher that has a filter."""
    filters.append(SyscallFilter.holding(b"\x06\0\0\0\0\0\xff\x7f"))  # allow
    filtered = HelperLauncher(reactor, Path("/h"), syscall_filter=filters[-1])
    plain = HelperLauncher(reactor, Path("/h"))
    isolated = LaunchRequest("/bin/true", ("true",), isolate=True)
    cases = [
        (filtered, isolated, True),
        (filtered, replace(isolated, seccomp=False), False),
        (filtered, replace(isolated, isolate=False), False),
        (plain, isolated, False),
    ]
    for launcher, request, expected in cases:
        argv = launcher.helper_argv(request)
        assert (argv[-5:-3] == ["--seccomp-fd", "4"]) is expected, argv


# Start-up


def loaded_libseccomp() -> str:
    """The file this process loaded as libseccomp."""
    Libseccomp()
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "libseccomp" in line}
    assert len(paths) == 1, paths
    return paths.pop()


@pytest.mark.root
def test_a_host_without_libseccomp_does_not_start_isolated(tmp_path: Path) -> None:
    """With the library gone (here: hidden in a mount namespace of its own),
    an isolating server says so in one line and exits non-zero."""
    write_dev_pki(tmp_path / "pki")
    argv = twistd(tmp_path / "pki", tmp_path / "data")
    hide = f'mount --bind /dev/null {loaded_libseccomp()} && exec "$@"'
    unshare = ["unshare", "--mount", "--propagation", "private"]
    result = subprocess.run(
        [*unshare, "sh", "-c", hide, "sh", *argv],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "jobworker: isolated jobs need libseccomp for their system call filter:"
    )
