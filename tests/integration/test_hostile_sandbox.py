"""
An isolated job as an attacker with a shell: the attacks that the view's
and the filter's own tests (test_sandbox_view, test_seccomp) leave out, each
written as the attacker's attempt and asserted to fail, and a few more of
the happy paths that must keep working.

Jobs run as nobody or, where the attack needs privilege, as root in the job
(a role that runs its jobs as root). What a test plants on the host for the
job to find (sockets, setuid files, a world-writable directory) it removes
afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_twisted

from jobworker.jobs.record import Job
from jobworker.jobs.service import JobManager
from jobworker.jobs.spec import parse_job_spec
from jobworker.linux.libseccomp import Libseccomp
from jobworker.linux.seccomp import REFUSED
from jobworker.masks import masked_paths
from jobworker.tap import Options
from jobworker.wire import JobStatus, Stream
from tests.conftest import skip_or_fail
from tests.host_dirs import visible_base
from tests.integration import test_sandbox_view as view
from tests.integration import test_seccomp
from tests.integration.test_limits import cgroup_dirs
from tests.integration.test_sandbox_view import ATTEMPT, run, run_python

# The view's fixtures: the helper as built now, isolating managers, and a
# directory of the host's that jobs see.
helper = view.helper
make_manager = view.make_manager
manager = view.manager
outside = view.outside

PYTHON = "/usr/bin/python3"
NOBODY = 65534
TAG = "JOBWORKER_HOSTILE_TAG"
# A command run as nobody on the host, outside any job.
AS_NOBODY = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]


async def started(
    manager: JobManager, command: str, *args: str, run_as: str | None = "nobody"
) -> Job:
    """A job running ``command``, once it has written its first output."""
    spec = parse_job_spec({"command": command, "args": list(args)})
    job = await manager.start(spec, "mallory", run_as=run_as)
    await manager.read_output(job.id, Stream.STDOUT, wait=10)
    return job


async def stopped(manager: JobManager, job: Job) -> tuple[Job, str]:
    """Stop a job; its final record and all its stdout."""
    manager.stop(job.id)
    ended = await manager.wait(job.id)
    out = await manager.read_output(job.id, Stream.STDOUT)
    return ended, out.data.decode()


def tagged(tag: str) -> list[psutil.Process]:
    """Live processes with ``tag`` in their environment."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(TAG) == tag and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass  # gone, or a kernel thread
    return found


# The host's files


@pytest.fixture
def sticky_host_dir() -> Iterator[Path]:
    """A directory like the host's /tmp (1777) elsewhere, with a file of
    nobody's in it: every user may write there, but not from a job."""
    base = visible_base()
    if base.startswith(("/tmp", "/var/tmp")):
        skip_or_fail("no directory outside /tmp that root may write")
    path = Path(base) / f"jobworker-sticky-{secrets.token_hex(4)}"
    path.mkdir()
    path.chmod(0o1777)
    (path / "nobodys").write_text("before\n")
    (path / "nobodys").chmod(0o644)
    os.chown(path / "nobodys", NOBODY, NOBODY)
    yield path
    shutil.rmtree(path)


VANDALIZE = """
d = sys.argv[1]
print(json.dumps({
    "create": attempt(write, d + "/new"),
    "mkdir": attempt(os.mkdir, d + "/dir"),
    "symlink": attempt(os.symlink, "/etc/passwd", d + "/link"),
    "fifo": attempt(os.mkfifo, d + "/fifo"),
    "overwrite": attempt(write, d + "/nobodys"),
    "rename": attempt(os.rename, d + "/nobodys", d + "/moved"),
    "unlink": attempt(os.unlink, d + "/nobodys"),
    "chmod": attempt(os.chmod, d + "/nobodys", 0o4777),
    "utime": attempt(os.utime, d + "/nobodys", (0, 0)),
}))
"""


@pytest.mark.root
@pytest.mark.parametrize("run_as", ["nobody", "root"])
@pytest_twisted.ensureDeferred
async def test_a_sticky_world_writable_host_directory_stays_the_hosts(
    manager: JobManager, sticky_host_dir: Path, run_as: str | None
) -> None:
    """Every way of changing a 1777 host directory (outside /tmp), and a
    file of the job's own user in it, is EROFS; the host's is untouched."""
    before = sorted(os.listdir(sticky_host_dir))
    seen = await run_python(manager, VANDALIZE, str(sticky_host_dir), run_as=run_as)
    assert seen == dict.fromkeys(seen, "EROFS") and len(seen) == 9
    assert sorted(os.listdir(sticky_host_dir)) == before
    nobodys = sticky_host_dir / "nobodys"
    assert (nobodys.read_text(), stat.S_IMODE(nobodys.stat().st_mode)) == (
        "before\n",
        0o644,
    )


# A fork bomb


BOMB = """
import os, signal
while True:
    try:
        os.fork()  # parent and child both go on
    except OSError:
        if os.getpid() == 2:  # the command itself
            print("refused", flush=True)
        signal.pause()  # the bomb is full: keep the place, use no CPU
"""


def job_cgroup_file(job_id: str, name: str) -> Path:
    """A control file of the job's cgroup, in whichever hierarchy has it."""
    for directory in cgroup_dirs(job_id):
        if (directory / name).exists():
            return directory / name
    raise AssertionError(f"no {name} for job {job_id}")


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_a_fork_bomb_fills_its_pids_limit_and_no_more(
    manager: JobManager,
) -> None:
    """Every process forking for ever stops at the job's pids limit; the
    host still forks, and nothing of the bomb outlives the job."""
    tag = secrets.token_hex(8)
    spec = parse_job_spec(
        {
            "command": PYTHON,
            "args": ["-c", BOMB],
            "limits": {"pids": 16},
            "timeout": 20,  # a bound, should the stop below fail
            "env": {TAG: tag},
        }
    )
    job = await manager.start(spec, "mallory", run_as="nobody")
    chunk = await manager.read_output(job.id, Stream.STDOUT, wait=20)
    assert chunk.data == b"refused\n"
    pids = job_cgroup_file(job.id, "pids.current")
    assert int(pids.read_text()) == 16  # init, the command, 14 forks
    assert subprocess.run(["/bin/true"], timeout=10).returncode == 0
    ended, _ = await stopped(manager, job)
    assert ended.status is JobStatus.STOPPED
    assert tagged(tag) == []
    assert cgroup_dirs(job.id) == []


# The kernel's doors: the refused calls test_seccomp does not try


def resolvable(names: frozenset[str]) -> set[str]:
    """The names that are system calls of this architecture."""
    lib = Libseccomp()
    return {name for name in names if lib.resolve(name) >= 0}


AT_FDCWD = test_seccomp.AT_FDCWD
# x86_64 numbers, and arguments that would do nothing harmful (at most fail)
# were the filter not there.
MORE_REFUSED = {
    "kexec_load": (246, [0, 1000, 0, 0xFFFF0000]),  # too many segments
    "sethostname": (170, ["jobworker", 9]),
    "setdomainname": (171, ["jobworker", 9]),
    "vhangup": (153, []),  # no controlling terminal to hang up
    "acct": (163, ["/no/such/acct"]),
    "swapoff": (168, ["/no/such/swap"]),
    "clock_adjtime": (305, [0, {"buffer": 208}]),  # modes 0: only asks
    "modify_ldt": (154, [0, {"buffer": 16}, 16]),  # reads
    "fanotify_init": (300, [0, 0]),
    "fanotify_mark": (301, [-1, 0, 0, AT_FDCWD, "/"]),
    "kcmp": (312, [1, 1, 99, 0, 0]),  # no such comparison
    "pidfd_getfd": (438, [-1, 0, 0]),
    "process_madvise": (440, [-1, 0, 0, 0, 0]),
    "mbind": (237, [0, 0, 0, 0, 0, 0]),
    "set_mempolicy": (238, [0, 0, 0]),
    "get_mempolicy": (239, [0, 0, 0, 0, 0]),
    "set_mempolicy_home_node": (450, [0, 0, 0, 0]),
    "migrate_pages": (256, [0, 0, 0, 0]),
    "move_pages": (279, [0, 0, 0, 0, 0, 0]),
    "quotactl_fd": (443, [-1, 0, 0, 0]),
    "uselib": (134, ["/no/such/lib"]),
    "ustat": (136, [0, {"buffer": 32}]),
    "sysfs": (139, [3]),
    "_sysctl": (156, [0]),
    "nfsservctl": (180, [0, 0, 0]),
}


def test_every_refused_call_is_tried() -> None:
    """Between test_seccomp's attempts and these, every call the filter
    refuses by name (of this architecture) is tried."""
    tried = {key.split()[0].split("(")[0] for key in test_seccomp.REFUSED}
    assert resolvable(REFUSED) <= tried | set(MORE_REFUSED)


@pytest.mark.root
@pytest.mark.parametrize("run_as", ["root", "nobody"])
@pytest_twisted.ensureDeferred
async def test_the_other_refused_calls_fail_with_eperm(
    manager: JobManager, run_as: str | None
) -> None:
    """kexec_load, sethostname and the rest of the refused calls fail as the
    filter promises (EPERM), even for root in the job."""
    result = await test_seccomp.attempts(manager, MORE_REFUSED, run_as=run_as)
    assert result == dict.fromkeys(MORE_REFUSED, "EPERM")


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_the_hostname_stays(manager: JobManager) -> None:
    """hostname(1) as root in the job: refused; the job's name and the
    host's stay."""
    ours = socket.gethostname()
    ended, out, err = await run(
        manager,
        "/bin/sh",
        "-c",
        "hostname evil || echo refused; hostname",
        run_as="root",
    )
    assert (ended.exit_code, out) == (0, "refused\njobworker\n"), err
    assert socket.gethostname() == ours


# Processes outside the job


PTRACE = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH = 16
def trace(pid):
    if libc.ptrace(PTRACE_ATTACH, pid, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "ptrace")
    return "attached"
def pidfd(pid):
    os.close(os.pidfd_open(pid))
    return "opened"
server = int(sys.argv[1])
print(json.dumps({
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "trace init": attempt(trace, 1),
    "trace server": attempt(trace, server),
    "trace pid 0x7fff": attempt(trace, 0x7FFF),
    "pidfd server": attempt(pidfd, server),
    "signal server": attempt(os.kill, server, 0),
}))
"""


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_nothing_outside_the_job_can_be_traced(manager: JobManager) -> None:
    """Only the job's init and the command itself are in sight; the init
    (root) cannot be traced, and no pid reaches a process of the host's."""
    seen = await run_python(manager, PTRACE, str(os.getpid()))
    assert seen == {
        "pids": [1, 2],
        "trace init": "EPERM",
        "trace server": "ESRCH",
        "trace pid 0x7fff": "ESRCH",
        "pidfd server": "ESRCH",
        "signal server": "ESRCH",
    }


# A root command attaches to its init, which has no filter, and has it make a
# refused call: sethostname, in the job's own UTS namespace (harmless: the
# job's name). Prints the attach's errno (or 0) and the hostname after.
INJECT = r"""
import ctypes, errno, os, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PEEK, POKE, GETREGS, SETREGS, ATTACH, DETACH, STEP = 2, 5, 12, 13, 16, 17, 9
WALL = 0x40000000
NAMES = "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip"
NAMES += " cs eflags rsp ss fs_base gs_base ds es fs gs"

class Regs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in NAMES.split()]

def ptrace(request, address=0, data=0):
    ctypes.set_errno(0)
    result = libc.ptrace(request, 1, address, data)
    if result == -1 and ctypes.get_errno():
        raise OSError(ctypes.get_errno(), "ptrace")
    return result

def inject():
    ptrace(ATTACH)
    os.waitpid(1, WALL)
    saved = Regs()
    ptrace(GETREGS, 0, ctypes.addressof(saved))
    code = ptrace(PEEK, saved.rip - 2) & 0xFFFF
    assert code == 0x050F, hex(code)  # stopped in a call: `syscall` before rip
    where = (saved.rsp - 4096) & ~7
    kept = ptrace(PEEK, where)
    ptrace(POKE, where, int.from_bytes(b"pwned\0\0\0", "little"))
    regs = Regs.from_buffer_copy(saved)
    regs.rip, regs.rax, regs.orig_rax = saved.rip - 2, 170, (1 << 64) - 1
    regs.rdi, regs.rsi = where, 5
    ptrace(SETREGS, 0, ctypes.addressof(regs))
    ptrace(STEP)
    os.waitpid(1, WALL)
    ptrace(POKE, where, kept)
    ptrace(SETREGS, 0, ctypes.addressof(saved))  # init resumes its own call
    ptrace(DETACH)
    return 0

try:
    said = inject()
except OSError as e:
    said = errno.errorcode[e.errno]
print(said, socket.gethostname())
"""


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_a_root_job_cannot_borrow_its_unfiltered_init(
    manager: JobManager,
) -> None:
    """A command running as root traces its init (root, and without the
    filter) and has it make a call the filter refuses: it must not be able
    to attach, and the job's hostname stays."""
    ended, out, err = await run(manager, PYTHON, "-c", INJECT, run_as="root")
    assert ended.exit_code == 0, err
    assert out == "EPERM jobworker\n"


# kill(-1): every process this one may signal, but itself and its
# namespace's init.
KILL_ALL = "print(json.dumps(attempt(os.kill, -1, 9)))"


@pytest.mark.root
@pytest.mark.parametrize("run_as", ["nobody", "root"])
@pytest_twisted.ensureDeferred
async def test_kill_all_reaches_only_the_job(
    manager: JobManager, run_as: str | None
) -> None:
    """kill(-1, SIGKILL), also as root in the job, finds no process to
    signal: none of the host's (the server, a process of the job's user)
    is in its PID namespace, and that namespace's init is passed over."""
    # On the host: a process of the job's own user, which kill(-1) from
    # outside a PID namespace would reach.
    bystander = subprocess.Popen([*AS_NOBODY, "sleep", "60"])
    try:
        assert await run_python(manager, KILL_ALL, run_as=run_as) == "ESRCH"
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


INIT_SECRETS = """
print(json.dumps({
    "environ": attempt(read, "/proc/1/environ"),
    "mem": attempt(read, "/proc/1/mem"),
    "maps": attempt(read, "/proc/1/maps"),
    "fds": attempt(os.listdir, "/proc/1/fd"),
    "cwd": attempt(os.readlink, "/proc/1/cwd"),
    "root": attempt(os.readlink, "/proc/1/root"),
    "oom": attempt(write, "/proc/1/oom_score_adj"),
    "own fds": sorted(map(int, os.listdir("/proc/self/fd"))),
}))
"""


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_the_inits_secrets_are_out_of_reach(manager: JobManager) -> None:
    """The job's init is root: its environment, memory, descriptors and
    directories are closed to the command, which has only its own three
    descriptors (no status pipe, filter or server descriptor)."""
    seen = await run_python(manager, INIT_SECRETS)
    own_fds = seen.pop("own fds")
    assert seen == dict.fromkeys(seen, "EACCES")
    assert own_fds == [0, 1, 2, 3]  # and the one listing them


# The kernel's own files in /proc


KERNEL_FILES = {
    "sysrq-trigger": ("/proc/sysrq-trigger", os.O_WRONLY),
    "kcore": ("/proc/kcore", os.O_RDONLY),
    "kmsg": ("/proc/kmsg", os.O_RDONLY | os.O_NONBLOCK),
}
OPEN = """
def opened(path, flags):
    os.close(os.open(path, flags))  # nothing read, nothing written
    return "opened"
print(json.dumps(attempt(opened, sys.argv[1], int(sys.argv[2]))))
"""


def kernel_file_case(name: str, run_as: str | None) -> Any:
    path = KERNEL_FILES[name][0]
    marks = []
    if name == "sysrq-trigger" and run_as == "root" and os.path.exists(path):
        # Root's own file, with no capability asked: a root job (allow_root)
        # may write it. This kernel has none; where it has, a known hole.
        marks.append(
            pytest.mark.xfail(
                strict=True, reason=f"hole: {path} is writable by uid 0 in a job"
            )
        )
    return pytest.param(name, run_as, marks=marks, id=f"{name}-{run_as}")


@pytest.mark.root
@pytest.mark.parametrize(
    ("name", "run_as"),
    [kernel_file_case(n, r) for n in KERNEL_FILES for r in ("nobody", "root")],
)
@pytest_twisted.ensureDeferred
async def test_the_kernels_own_proc_files_are_closed(
    manager: JobManager, name: str, run_as: str | None
) -> None:
    """Triggering sysrq, reading the kernel's memory or its log (which the
    filter's refusal of syslog means to keep): no job may open them, root
    in the job neither. A kernel built without one has none to open."""
    path, flags = KERNEL_FILES[name]
    seen = await run_python(manager, OPEN, path, str(flags), run_as=run_as)
    assert seen in ("EACCES", "EPERM", "EROFS", "ENOENT")
    if seen == "ENOENT":
        assert not os.path.exists(path)


# Devices and setuid files


MKNOD = """
def make_and_open(path, kind, major, minor):
    try:
        os.mknod(path, 0o666 | kind, os.makedev(major, minor))
    except OSError as e:
        return "mknod " + errno.errorcode[e.errno]
    try:
        os.close(os.open(path, os.O_RDONLY))
        return "opened"
    except OSError as e:
        return "open " + errno.errorcode[e.errno]
disk = os.stat("/").st_dev
print(json.dumps({
    "null": make_and_open("/tmp/null", stat.S_IFCHR, 1, 3),
    "mem": make_and_open("/dev/shm/mem", stat.S_IFCHR, 1, 1),
    "disk": make_and_open("/tmp/disk", stat.S_IFBLK, os.major(disk), os.minor(disk)),
}))
"""


@pytest.mark.root
@pytest.mark.parametrize(
    ("run_as", "expected"), [("nobody", "mknod EPERM"), ("root", "mknod EPERM")]
)
@pytest_twisted.ensureDeferred
async def test_device_nodes_cannot_be_made_to_work(
    manager: JobManager, run_as: str | None, expected: str
) -> None:
    """No job may make a device node, root in the job neither (it has no
    CAP_MKNOD); and were one made, every mount there is nodev: /dev/mem or
    the host's disk could not be opened through it."""
    script = "import stat\n" + MKNOD
    seen = await run_python(manager, script, run_as=run_as)
    assert seen == dict.fromkeys(("null", "mem", "disk"), expected)


@pytest.fixture
def setuid_id(outside: Path) -> Path:
    """A setuid-root copy of id(1), on the host, where every user may run
    it and a job sees it."""
    path = outside / "id"
    shutil.copy("/usr/bin/id", path)
    path.chmod(0o4755)
    return path


ROOTS_COPY = """
cp /usr/bin/id /tmp/id && chmod 4755 /tmp/id
setpriv --reuid {nobody} --regid {nobody} --clear-groups /tmp/id -u 2>/dev/null \
    || echo "no setuid: root in a job has no capability"
"""


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_setuid_files_give_nothing(manager: JobManager, setuid_id: Path) -> None:
    """A setuid-root file the host has, and one root in the job makes in its
    /tmp, leave the job's nobody nobody (nosuid, no_new_privs); on the host
    the same file makes nobody root, so only the job's view stops it."""
    on_host = subprocess.run(
        [*AS_NOBODY, str(setuid_id), "-u"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert on_host.stdout == "0\n"
    ended, out, _ = await run(manager, str(setuid_id), "-u")
    assert (ended.exit_code, out) == (0, f"{NOBODY}\n")
    script = ROOTS_COPY.format(nobody=NOBODY)
    ended, out, err = await run(
        manager, "/bin/sh", "-c", script, "sh", str(setuid_id), run_as="root"
    )
    assert out == "no setuid: root in a job has no capability\n", err


# Terminals, limits


TIOCSTI = """
import fcntl, pty, termios
def inject(fd):
    fcntl.ioctl(fd, termios.TIOCSTI, b"x")
    return "injected"
master, slave = pty.openpty()
print(json.dumps({
    "stdin": attempt(inject, 0),
    "stdout": attempt(inject, 1),
    "stderr": attempt(inject, 2),
    "tty": attempt(os.open, "/dev/tty", os.O_RDWR),
    "pty": attempt(inject, slave),
}))
"""


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_tiocsti_reaches_no_terminal(manager: JobManager) -> None:
    """A job has no terminal to push input into: its standard descriptors
    are pipes, it has no controlling terminal, and a pty of its own that
    is not its controlling terminal refuses TIOCSTI."""
    assert await run_python(manager, TIOCSTI) == {
        "stdin": "ENOTTY",
        "stdout": "ENOTTY",
        "stderr": "ENOTTY",
        "tty": "ENXIO",
        "pty": "EPERM",
    }


RLIMITS = """
import resource
def raise_hard(name):
    soft, hard = resource.getrlimit(getattr(resource, name))
    try:
        resource.setrlimit(getattr(resource, name), (soft, hard + 1))
        return "raised"
    except ValueError:
        return "refused"
def raise_inits():
    soft, hard = resource.prlimit(1, resource.RLIMIT_NOFILE)
    resource.prlimit(1, resource.RLIMIT_NOFILE, (soft, hard + 1))
    return "raised"
def lower_inits():
    resource.prlimit(1, resource.RLIMIT_NOFILE, (0, 0))
    return "lowered"
print(json.dumps({
    "nproc": raise_hard("RLIMIT_NPROC"),
    "core": raise_hard("RLIMIT_CORE"),
    "init's": attempt(raise_inits),
    "init's lowered": attempt(lower_inits),
}))
"""


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_rlimits_cannot_be_raised(manager: JobManager) -> None:
    """No hard limit goes up (processes, core dumps; open files is
    test_sandbox_view's), and the init's limits are not the job's to set."""
    assert await run_python(manager, RLIMITS) == {
        "nproc": "refused",
        "core": "refused",
        "init's": "EPERM",
        "init's lowered": "EPERM",
    }


REALTIME = """
def realtime(policy):
    os.sched_setscheduler(0, policy, os.sched_param(1))
    return "realtime"
print(json.dumps([attempt(realtime, os.SCHED_FIFO), attempt(realtime, os.SCHED_RR)]))
"""


@pytest.mark.root
@pytest.mark.parametrize("run_as", ["nobody", "root"])
@pytest_twisted.ensureDeferred
async def test_no_realtime_priority(manager: JobManager, run_as: str | None) -> None:
    """A realtime process is out of reach of the cpu limit (and would starve
    the host's own): no job may become one, root in the job neither."""
    result = await run_python(manager, REALTIME, run_as=run_as)
    assert result == ["EPERM", "EPERM"]


# Sockets of the host


HOST_SOCKETS = {
    "/run/systemd/journal/socket": socket.SOCK_DGRAM,
    "/run/systemd/journal/stdout": socket.SOCK_STREAM,
    "/dev/log": socket.SOCK_DGRAM,
    "/run/dbus/system_bus_socket": socket.SOCK_STREAM,
}


@pytest.fixture
def host_sockets() -> Iterator[dict[str, socket.SocketKind]]:
    """journald's and D-Bus's sockets on the host: the real ones, or
    stand-ins where the host has none (so that nothing passes for want of
    a socket), which the host can reach."""
    made_dirs: list[Path] = []
    made: list[tuple[str, socket.socket]] = []
    try:
        for path, kind in HOST_SOCKETS.items():
            if os.path.lexists(path):
                continue
            missing = [p for p in Path(path).parents if not p.exists()]
            for directory in reversed(missing):
                directory.mkdir()
                made_dirs.append(directory)
            server = socket.socket(socket.AF_UNIX, kind)
            made.append((path, server))
            server.bind(path)
            os.chmod(path, 0o777)
            if kind == socket.SOCK_STREAM:
                server.listen()
        for path, kind in HOST_SOCKETS.items():
            with socket.socket(socket.AF_UNIX, kind) as client:
                client.connect(path)  # the host reaches each
        yield HOST_SOCKETS
    finally:
        for path, server in made:
            server.close()
            os.unlink(path)
        for directory in reversed(made_dirs):
            directory.rmdir()


CONNECT = """
import socket
def connect(kind, address):
    with socket.socket(socket.AF_UNIX, kind) as s:
        s.connect(address)
        if kind == socket.SOCK_DGRAM:
            s.send(b"<3>jobworker: forged")
    return "connected"
sockets = json.loads(sys.argv[1])
print(json.dumps({
    name: attempt(connect, kind, name.replace("@", "\\0", 1))
    for name, kind in sockets.items()
}))
"""


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_journald_and_dbus_are_out_of_reach(
    manager: JobManager, host_sockets: dict[str, socket.SocketKind]
) -> None:
    """Logging as the host's services do (journald, /dev/log) or talking to
    the system bus: the sockets are not in the job's view."""
    seen = await run_python(manager, CONNECT, json.dumps(host_sockets))
    assert seen == dict.fromkeys(host_sockets, "ENOENT")


@pytest.fixture
def abstract_sockets() -> Iterator[dict[str, socket.SocketKind]]:
    """Listening abstract sockets in the host's network namespace, as
    X11's, containerd's or a D-Bus session's are: "@name" for each."""
    found = {}
    made = []
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        name = f"@jobworker-test-{secrets.token_hex(4)}"
        server = socket.socket(socket.AF_UNIX, kind)
        made.append(server)
        server.bind("\0" + name[1:])
        if kind == socket.SOCK_STREAM:
            server.listen()
        with socket.socket(socket.AF_UNIX, kind) as client:
            client.connect("\0" + name[1:])  # the host reaches it
        found[name] = kind
    yield found
    for server in made:
        server.close()


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_abstract_sockets_of_the_host_are_out_of_reach(
    manager: JobManager, abstract_sockets: dict[str, socket.SocketKind]
) -> None:
    """Abstract Unix sockets belong to a network namespace, not to a file:
    the job's (network "none") has none of the host's."""
    seen = await run_python(manager, CONNECT, json.dumps(abstract_sockets))
    assert seen == dict.fromkeys(abstract_sockets, "ECONNREFUSED")


# The server's files


ROTATE = """
import select
gate = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
before = attempt(read, sys.argv[2])
print("ready", flush=True)
assert select.select([gate], [], [], 30)[0], "no word from the host"
print(json.dumps([before, attempt(read, sys.argv[2])]))
"""


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_a_replaced_key_stays_masked(make_manager: Any, outside: Path) -> None:
    """The server's key, replaced on the host while a job runs (a renewal
    writes the new one and renames it into place), stays out of the job's
    reach: the server masks the directory holding its key, whose mask,
    unlike a file's, outlives a rename into it."""
    keys = outside / "keys"
    keys.mkdir(mode=0o755)
    key = keys / "key.pem"
    key.write_text("old key\n")
    key.chmod(0o644)  # only the mask keeps a job out
    gate = outside / "gate"
    os.mkfifo(gate, 0o644)
    options = Options()
    options.parseOptions(["--cert", "c", "--key", str(key), "--ca", "a"])
    m = make_manager(masked_paths=masked_paths(options, outside / "data"))
    script = ATTEMPT + ROTATE
    job = await started(m, PYTHON, "-c", script, str(gate), str(key))
    renewed = keys / "key.pem.new"
    renewed.write_text("new key\n")
    renewed.chmod(0o644)
    renewed.rename(key)
    writer = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)  # the job holds it
    os.write(writer, b"go")
    os.close(writer)
    ended = await m.wait(job.id)
    out = (await m.read_output(job.id, Stream.STDOUT)).data.decode()
    assert ended.exit_code == 0, out
    assert json.loads(out.split("\n", 1)[1]) == ["EACCES", "EACCES"]


LOOK_AROUND = """
seen = dict(zip(("data", "jobs"), (attempt(os.listdir, p) for p in sys.argv[1:])))
for path in ["/proc/self/mountinfo", "/proc/self/cgroup", "/proc/self/environ"]:
    seen[path] = read(path)
seen["/sys/fs/cgroup"] = [d for d, _, _ in os.walk("/sys/fs/cgroup")]
print(json.dumps(seen))
"""


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_no_job_id_is_in_sight(make_manager: Any, outside: Path) -> None:
    """Another running job's id, and the database's name, are nowhere a job
    can list: not in the (masked) data directory, its mounts, its cgroup
    or its environment."""
    data = outside / "data"
    m = make_manager(data, masked_paths=(str(data),))
    other = await view.started(m, "echo ready; exec sleep 1000")
    seen = await run_python(m, LOOK_AROUND, str(data), str(data / "jobs"))
    assert (seen.pop("data"), seen.pop("jobs")) == ("EACCES", "EACCES")
    for name in (other.id, "jobworker.sqlite3"):
        assert name not in json.dumps(seen)
    await stopped(m, other)


FIND_MASKS = """
mounts = read("/proc/self/mountinfo")
print(json.dumps([
    attempt(os.listdir, sys.argv[1]),
    [name for name in sys.argv[2:] if name in mounts],
]))
"""


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_masked_names_are_not_listed(make_manager: Any, outside: Path) -> None:
    """What the server keeps beside its key (certificates, policy, client
    keys) is nothing a job can list or find named in its mounts: the key's
    directory is masked whole. (That directory's own path, and the data
    directory's, do show in /proc/self/mountinfo: a mask is a mount.)"""
    keys = outside / "keys"
    keys.mkdir(mode=0o755)
    names = ["server.key", "server.pem", "ca.pem", "policy.toml", "alice.key"]
    for name in names:
        (keys / name).write_text(f"contents of {name}\n")
        (keys / name).chmod(0o644)
    options = Options()
    options.parseOptions(
        [
            *("--cert", str(keys / "server.pem"), "--key", str(keys / "server.key")),
            *("--ca", str(keys / "ca.pem"), "--policy", str(keys / "policy.toml")),
        ]
    )
    masks = masked_paths(options, outside / "data")
    m = make_manager(outside / "data", masked_paths=masks)
    listed, mounted = await run_python(m, FIND_MASKS, str(keys), *names)
    assert (listed, mounted) == ("EACCES", [])


# What must keep working


SEMAPHORE = """
from multiprocessing import Process, Semaphore
done = Semaphore(0)  # sem_open: a file in /dev/shm
child = Process(target=done.release)
child.start()
child.join()
print(done.acquire(timeout=10))
"""
PTY_SPAWN = """
import pty, sys
sys.stdout.flush()
print(pty.spawn(["/bin/sh", "-c", "tty; test -t 0"]))
"""
GIT = """
export HOME=/tmp
git init -q repo && cd repo && echo one > file && git add file
git -c user.name=m -c user.email=m@example.org commit -qm first
git log --format=%s; git status --porcelain; pwd
"""


@pytest.mark.root
@pytest.mark.parametrize(
    ("command", "expected"),
    [
        pytest.param((PYTHON, "-c", SEMAPHORE), "True\n", id="posix-semaphore"),
        pytest.param((PYTHON, "-c", PTY_SPAWN), "/dev/pts/0\r\n0\n", id="pty-spawn"),
        pytest.param(("/bin/sh", "-c", GIT), "first\n/tmp/repo\n", id="git-in-tmp"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_ordinary_programs_still_work(
    manager: JobManager, command: tuple[str, ...], expected: str
) -> None:
    """A POSIX semaphore between processes (in /dev/shm), a program on a pty
    of its own (pty.spawn), a git repository made and committed to in /tmp."""
    ended, out, err = await run(manager, *command)
    assert (ended.status, ended.exit_code, out) == (JobStatus.EXITED, 0, expected), err
