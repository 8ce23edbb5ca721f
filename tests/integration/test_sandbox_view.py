"""
An isolated job's view of the filesystem, tried by the job itself as an
attacker would: it sees the host's files read-only, scratch space of its own
that nothing else sees and nothing outlives, a minimal ``/dev``, and none
of the server's files. Each attack is asserted to fail; the happy paths
(ptys, devices, a build in a writable path) to work.

Jobs run as nobody under real namespaces and cgroups, their commands
``/bin/sh`` and Debian's ``/usr/bin/python3``, which every user may run. The
files a test shares with a job live outside the job's private ``/tmp``
(``tests.host_dirs``).
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import socket
import time
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
from jobworker.jobs.spec import parse_job_spec
from jobworker.linux.build import build
from jobworker.linux.launcher import HelperLauncher, LaunchRequest
from jobworker.masks import masked_paths
from jobworker.tap import Options
from jobworker.wire import JobStatus, Stream
from tests.conftest import skip_or_fail
from tests.host_dirs import visible_tempdir

reactor: Any = global_reactor
PYTHON = "/usr/bin/python3"
MiB = 1 << 20
CAP_SYS_RESOURCE = 24
# Python run inside jobs: an action's result, or the name of its errno.
ATTEMPT = """
import errno, json, os, sys

def attempt(action, *args):
    try:
        return action(*args)
    except OSError as e:
        return errno.errorcode[e.errno]

def write(path):
    with open(path, "w") as f:
        f.write("attacker was here")
    return "written"

def read(path):
    with open(path, "rb") as f:
        return f.read().decode(errors="replace")
"""


@pytest.fixture(scope="module", autouse=True)
def helper() -> None:
    """The helper as its source is now, not as it was last built."""
    build()


class AmendingLauncher:
    """Launch each request with some of its fields replaced, as a role's
    policy would set them."""

    def __init__(self, **fields: Any) -> None:
        self._launcher = HelperLauncher(reactor)
        self._fields = fields

    def launch(
        self, protocol: IProcessProtocol, request: LaunchRequest
    ) -> IProcessTransport:
        return self._launcher.launch(protocol, replace(request, **self._fields))


@pytest.fixture
def make_manager(tmp_path: Path, managers: list[JobManager]) -> Any:
    """Isolating managers, each shut down at the end."""

    def make(
        data: Path | None = None, launcher: Any = None, **settings: Any
    ) -> JobManager:
        data = data or tmp_path / f"data{len(managers)}"
        m = JobManager(
            reactor, data, Settings(default_grace=2, **settings), launcher=launcher
        )
        m.open()
        managers.append(m)
        return m

    return make


@pytest.fixture
def manager(make_manager: Any) -> JobManager:
    m: JobManager = make_manager()
    return m


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory of the host's, outside the job's private mounts."""
    path = visible_tempdir("jobworker-view-")
    if str(path).startswith(("/tmp/", "/var/tmp/")):
        shutil.rmtree(path)
        skip_or_fail("no directory outside /tmp that root may write")
    yield path
    shutil.rmtree(path)


async def run(
    manager: JobManager, command: str, *args: str, run_as: str | None = "nobody"
) -> tuple[Job, str, str]:
    """Run a job to its end: its record, stdout and stderr."""
    spec = parse_job_spec({"command": command, "args": list(args)})
    job = await manager.start(spec, "mallory", run_as=run_as)
    ended = await manager.wait(job.id)
    out = await manager.read_output(job.id, Stream.STDOUT)
    err = await manager.read_output(job.id, Stream.STDERR)
    return ended, out.data.decode(), err.data.decode()


async def run_python(
    manager: JobManager, script: str, *args: str, run_as: str | None = "nobody"
) -> Any:
    """Run ``ATTEMPT`` and ``script``, which prints JSON: what it printed."""
    ended, out, err = await run(
        manager, PYTHON, "-c", ATTEMPT + script, *args, run_as=run_as
    )
    assert (ended.status, ended.exit_code) == (JobStatus.EXITED, 0), err
    return json.loads(out)


async def started(manager: JobManager, script: str) -> Job:
    """A job running ``script`` (sh), once it has printed its first line."""
    spec = parse_job_spec({"command": "/bin/sh", "args": ["-c", script]})
    job = await manager.start(spec, "mallory", run_as="nobody")
    await manager.read_output(job.id, Stream.STDOUT, wait=10)
    return job


# The host's scratch directories, and everything else


@pytest.mark.root
@pytest.mark.parametrize(
    ("directory", "run_as"),
    [
        ("/tmp", "nobody"),
        ("/var/tmp", "nobody"),
        ("/dev/shm", "nobody"),
        ("/run/lock", "nobody"),
        ("/run", "root"),  # root's: a job running as root
    ],
)
@pytest_twisted.ensureDeferred
async def test_scratch_writes_never_reach_the_host(
    manager: JobManager, directory: str, run_as: str | None
) -> None:
    """A file a job writes in a scratch directory is in its own: the host's
    has no such file."""
    name = f"{directory}/jobworker-{secrets.token_hex(4)}"
    result = await run_python(
        manager, "print(json.dumps([attempt(write, sys.argv[1]), read(sys.argv[1])]))",
        name, run_as=run_as,
    )  # fmt: skip
    assert result == ["written", "attacker was here"]
    assert not os.path.lexists(name)


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_nobody_cannot_write_the_jobs_own_run(manager: JobManager) -> None:
    """The job's /run is root's, 0755, as the host's is."""
    result = await run_python(manager, "print(json.dumps(attempt(write, '/run/x')))")
    assert result == "EACCES"


@pytest.mark.root
@pytest.mark.parametrize("run_as", ["nobody", "root"])
@pytest.mark.parametrize(
    "where", ["/", "/etc", "/usr/local/bin", "/var/lib", "world-writable"]
)
@pytest_twisted.ensureDeferred
async def test_the_host_is_read_only(
    manager: JobManager, outside: Path, where: str, run_as: str | None
) -> None:
    """Writing anywhere under / fails with EROFS, in a directory the host lets
    every user write (0777) too, and for a job running as root."""
    if where == "world-writable":
        (outside / "open").mkdir()
        (outside / "open").chmod(0o777)
        where = str(outside / "open")
    path = os.path.join(where, f"jobworker-{secrets.token_hex(4)}")
    result = await run_python(
        manager, "print(json.dumps(attempt(write, sys.argv[1])))", path, run_as=run_as
    )
    assert result == "EROFS"
    assert not os.path.lexists(path)


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_rw_mounts_are_the_jobs_own(manager: JobManager) -> None:
    """Every mount a job has is read-only and nosuid but its scratch space,
    its /proc and its ptys; /proc/sys and /sys are read-only."""
    mounts = await run_python(
        manager,
        "lines = open('/proc/self/mountinfo')\n"
        "print(json.dumps([l.split(' - ')[0].split()[4:6] for l in lines]))",
    )
    own = {"/tmp", "/var/tmp", "/run", "/run/lock", "/dev/shm", "/dev/pts", "/proc"}
    writable = {point for point, options in mounts if "rw" in options.split(",")}
    assert writable <= own
    assert own - {"/proc"} <= writable
    assert all("nosuid" in options.split(",") for _, options in mounts)
    for point in ("/proc/sys", "/sys", "/", "/dev"):
        assert [o for p, o in mounts if p == point][-1].split(",")[0] == "ro", point


# Other jobs, and what a job leaves behind


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_jobs_do_not_see_each_others_scratch(manager: JobManager) -> None:
    """A running job's files in /tmp, /var/tmp, /dev/shm and /run/lock are
    nowhere in another's."""
    scratch = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
    writes = "; ".join(f"echo secret > {d}/secret" for d in scratch)
    first = await started(manager, f"{writes}; echo ready; exec sleep 1000")
    listing = await run_python(
        manager, f"print(json.dumps([os.listdir(d) for d in {scratch!r}]))"
    )
    assert listing == [[], [], [], []]
    manager.stop(first.id)
    await manager.wait(first.id)


def mounts_with(marker: str) -> list[int]:
    """The processes whose mount namespace has a mount with ``marker`` in
    its options."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/mountinfo").read_text():
                found.append(int(pid))
        except OSError:
            pass  # gone, or a kernel thread
    return found


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_shm_does_not_outlive_its_job(make_manager: Any) -> None:
    """A file a job leaves in /dev/shm goes with the job: its tmpfs is in no
    mount namespace on the host afterwards, and the next job finds none."""
    inodes = 50000 + secrets.randbelow(10000)  # marks this test's mounts
    m = make_manager(tmpfs_inodes=inodes)
    marker = f"nr_inodes={inodes}"
    job = await started(
        m, "head -c 1048576 /dev/zero > /dev/shm/left; echo ready; exec sleep 1000"
    )
    assert job.pid in mounts_with(marker)
    m.stop(job.id)
    await m.wait(job.id)
    deadline = time.monotonic() + 5
    while mounts_with(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mounts_with(marker) == []
    assert await run_python(m, "print(json.dumps(os.listdir('/dev/shm')))") == []


FILL = """
with open(sys.argv[1], "wb") as f:
    for _ in range(int(sys.argv[2])):
        f.write(bytes(1 << 20))
        f.flush()
"""


@pytest.mark.root
@pytest.mark.parametrize("directory", ["/dev/shm", "/tmp"])
@pytest_twisted.ensureDeferred
async def test_filling_tmpfs_is_stopped_by_the_memory_limit(
    manager: JobManager, directory: str
) -> None:
    """tmpfs pages count against the job's memory: 64 MiB written under a
    32 MiB limit is an OOM kill."""
    spec = parse_job_spec(
        {
            "command": PYTHON,
            "args": ["-c", ATTEMPT + FILL, f"{directory}/fill", "64"],
            "limits": {"memory": "32M"},
        }
    )
    job = await manager.start(spec, "mallory", run_as="nobody")
    ended = await manager.wait(job.id)
    assert (ended.status, ended.signal, ended.oom_killed) == (
        JobStatus.EXITED,
        9,
        True,
    )


@pytest.mark.root
@pytest.mark.parametrize(
    ("settings", "script"),
    [
        ({"tmpfs_size": 8 * MiB}, FILL + "print('wrote it all')"),
        (
            {"tmpfs_inodes": 64},
            "for n in range(100): open(f'{sys.argv[1]}-{n}', 'w').close()",
        ),
    ],
    ids=["size", "inodes"],
)
@pytest_twisted.ensureDeferred
async def test_filling_tmpfs_stops_at_its_size(
    make_manager: Any, settings: dict[str, int], script: str
) -> None:
    """Writing past the tmpfs's size or making more files than its inodes
    is ENOSPC, whatever memory is left."""
    m = make_manager(**settings)
    ended, _, err = await run(m, PYTHON, "-c", ATTEMPT + script, "/dev/shm/f", "16")
    assert ended.exit_code == 1
    assert "No space left on device" in err


# The server's files


def write_server_files(directory: Path) -> dict[str, Path]:
    """Stand-ins for the server's TLS and policy files, readable by all: only
    a mask keeps a job from them."""
    files = {}
    for name in ("cert.pem", "key.pem", "ca.pem", "policy.toml"):
        files[name] = directory / name
        files[name].write_text(f"contents of {name}\n")
        files[name].chmod(0o644)
    return files


@pytest.fixture
def server_files(outside: Path) -> dict[str, Path]:
    return write_server_files(outside)


SNOOP = """
data = sys.argv[1]
print(json.dumps({
    "files": [attempt(read, path) for path in sys.argv[2:]],
    "data": attempt(os.listdir, data),
    "database": attempt(read, os.path.join(data, "jobworker.sqlite3")),
}))
"""


@pytest.mark.root
@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest_twisted.ensureDeferred
async def test_server_files_are_masked(
    make_manager: Any, outside: Path, server_files: dict[str, Path], masked: bool
) -> None:
    """A job cannot read the server's certificate, key, CA or policy, nor
    list its data directory, though their modes would let it: the
    unmasked run shows that only the mask stops it."""
    data = outside / "data"
    paths = [str(p) for p in server_files.values()]
    masks = (*paths, str(data)) if masked else ()
    m = make_manager(data, masked_paths=masks)
    data.chmod(0o755)  # the server's is 0700: here only the mask keeps out
    (data / "jobworker.sqlite3").chmod(0o644)
    seen = await run_python(m, SNOOP, str(data), *paths)
    if masked:
        # The data directory's mask is an empty directory no one may enter.
        assert seen == {"files": ["EACCES"] * 4, "data": "EACCES", "database": "EACCES"}
    else:
        assert seen["files"] == [f"contents of {name}\n" for name in server_files]
        assert "jobworker.sqlite3" in seen["data"]


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_masks_skip_what_is_missing(make_manager: Any, outside: Path) -> None:
    """A masked path that does not exist is skipped: the job runs."""
    m = make_manager(masked_paths=(str(outside / "no-such-file"),))
    ended, out, _ = await run(m, "/bin/echo", "ran")
    assert (ended.status, out) == (JobStatus.EXITED, "ran\n")


def failed_stage(job: Job) -> tuple[JobStatus, str, str]:
    """A failed start's status, stage and OS error. (A request amended by
    the launcher, which the job's record does not hold, may not name its
    subject: test_helper_argv checks the naming.)"""
    assert job.error is not None
    stage, _ = job.error.split(" ", 1)
    return job.status, stage, job.error.rsplit(": ", 1)[1]


@pytest.mark.root
@pytest.mark.parametrize("order", ["masks", "writable"])
@pytest_twisted.ensureDeferred
async def test_a_symlink_in_a_view_path_fails_to_start(
    make_manager: Any, outside: Path, order: str
) -> None:
    """The server passes real paths: a symlink there now (someone swapped a
    piece of the path) fails the start rather than hide or open something
    else."""
    (outside / "real").mkdir()
    (outside / "link").symlink_to(outside / "real")
    path = str(outside / "link")
    if order == "masks":
        m = make_manager(masked_paths=(path,))
    else:
        m = make_manager(launcher=AmendingLauncher(writable=(path,)))
    ended, _, _ = await run(m, "/bin/true")
    loop = "Too many levels of symbolic links (ELOOP)"
    assert failed_stage(ended) == (JobStatus.FAILED_TO_START, order.rstrip("s"), loop)
    if order == "masks":
        assert ended.error == f"mask {path}: {loop}"


def test_twistd_masks_its_files_by_their_real_paths(tmp_path: Path) -> None:
    """The server's TLS and policy files and data directory, symlinks
    resolved, are the masks it gives every job; the directory holding its
    key is masked whole, with what else is in it."""
    server_files = write_server_files(tmp_path)
    keys = tmp_path / "keys"
    keys.mkdir()
    key = server_files["key.pem"].rename(keys / "key.pem")
    (keys / "policy.toml").write_text("")
    (tmp_path / "cert-link.pem").symlink_to(server_files["cert.pem"])
    options = Options()
    options.parseOptions(
        [
            *("--cert", str(tmp_path / "cert-link.pem")),
            *("--key", str(key), "--ca", str(server_files["ca.pem"])),
            *("--policy", str(keys / "policy.toml")),
        ]
    )
    assert masked_paths(options, tmp_path / "data") == (
        str(keys.resolve()),
        str(server_files["cert.pem"].resolve()),
        str(server_files["ca.pem"].resolve()),
        str(tmp_path.resolve() / "data"),
    )


def test_twistd_never_masks_a_shared_directory() -> None:
    """A key kept in a directory every program uses (/etc) is masked alone:
    masking /etc would leave a job without its configuration."""
    options = Options()
    options.parseOptions(
        ["--cert", "/etc/c.pem", "--key", "/etc/k.pem", "--ca", "/etc/a.pem"]
    )
    masks = masked_paths(options, Path("/var/lib/jobworker"))
    assert "/etc" not in masks
    assert os.path.realpath("/etc/k.pem") in masks


def test_twistd_tmpfs_size_option() -> None:
    """--tmpfs-size takes a size; the default is 256M."""
    required = ["--cert", "c", "--key", "k", "--ca", "a"]
    options = Options()
    options.parseOptions(required)
    assert options["tmpfs-size"] == 256 * MiB
    options = Options()
    options.parseOptions([*required, "--tmpfs-size", "64M"])
    assert options["tmpfs-size"] == 64 * MiB


# Sockets, working directory, cgroups, limits


@pytest.fixture
def host_socket() -> Iterator[str]:
    """A listening socket in the host's /run, as journald's and D-Bus's are."""
    path = f"/run/jobworker-test-{secrets.token_hex(4)}.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen()
    yield path
    server.close()
    os.unlink(path)


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_host_sockets_in_run_are_out_of_reach(
    manager: JobManager, host_socket: str
) -> None:
    """journald's and D-Bus's sockets, and any other in the host's /run, are
    absent from the job's: connecting finds nothing."""
    sockets = [
        host_socket,
        "/run/systemd/journal/socket",
        "/run/systemd/journal/stdout",
        "/run/dbus/system_bus_socket",
        "/var/run/dbus/system_bus_socket",
    ]
    script = (
        "import socket\n"
        "def connect(path):\n"
        "    socket.socket(socket.AF_UNIX).connect(path)\n"
        "    return 'connected'\n"
        "print(json.dumps([[attempt(connect, p) for p in sys.argv[1:]],"
        " os.listdir('/run')]))"
    )
    tried, run_dir = await run_python(manager, script, *sockets)
    assert tried == ["ENOENT"] * len(sockets)
    assert run_dir == ["lock"]


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_default_cwd_is_the_private_tmp(manager: JobManager) -> None:
    """A job that names no directory starts in its own /tmp."""
    ended, out, _ = await run(manager, "/bin/sh", "-c", "pwd; touch here; ls /tmp")
    assert (ended.exit_code, out) == (0, "/tmp\nhere\n")


@pytest_twisted.ensureDeferred
async def test_plain_default_cwd_is_the_root(make_manager: Any) -> None:
    """Unisolated (development), a job starts in /, not the server's own
    working directory."""
    m = make_manager(isolate=False, allow_unisolated_root=True, cgroups=False)
    ended, out, _ = await run(m, "/bin/pwd", run_as="root")
    assert (ended.exit_code, out) == (0, "/\n")


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_cgroups_are_the_jobs_own_root(manager: JobManager) -> None:
    """In its cgroup namespace a job's cgroup is /: the host's tree and the
    job's place in it are out of sight."""
    ended, out, _ = await run(manager, "/bin/cat", "/proc/self/cgroup")
    assert ended.exit_code == 0
    assert {line.split(":", 2)[2] for line in out.splitlines()} == {"/"}


LIMITS = """
import resource
names = ("RLIMIT_NOFILE", "RLIMIT_CORE", "RLIMIT_NPROC")
limits = [resource.getrlimit(getattr(resource, name)) for name in names]
soft, hard = limits[0]
def raise_hard():
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard + 1))
        return "raised"
    except ValueError as e:
        return str(e)
print(json.dumps([limits, raise_hard()]))
"""


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_command_limits(manager: JobManager) -> None:
    """1024 open files (hard 524288, or the server's if lower), no core
    dumps, 4096 processes of its user; a job cannot raise a hard limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    limits, raised = await run_python(manager, LIMITS)
    assert limits == [
        [1024, min(524288, hard)],
        [0, 0],
        [min(4096, nproc), min(4096, nproc)],
    ]
    assert raised == "not allowed to raise maximum limit"
    ended, out, _ = await run(manager, "/bin/sh", "-c", "ulimit -n; ulimit -c")
    assert (ended.exit_code, out) == (0, "1024\n0\n")


def may_lower_oom_scores() -> bool:
    status = Path("/proc/self/status").read_text()
    effective = next(line for line in status.splitlines() if line.startswith("CapEff"))
    return bool(int(effective.split()[1], 16) >> CAP_SYS_RESOURCE & 1)


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_oom_scores(manager: JobManager) -> None:
    """The command's oom_score_adj is 0, and it cannot lower it; its init's
    is -1000 (where root may lower scores: CAP_SYS_RESOURCE), else ours."""
    job = await started(
        manager,
        # Both lines in one write: the first output is the whole answer.
        "{ cat /proc/self/oom_score_adj;"
        " echo -1 2>/dev/null > /proc/self/oom_score_adj || echo refused; }"
        " > /tmp/scores; cat /tmp/scores; exec sleep 1000",
    )
    init = Path(f"/proc/{job.pid}/oom_score_adj").read_text()
    ours = Path("/proc/self/oom_score_adj").read_text()
    assert init == ("-1000\n" if may_lower_oom_scores() else ours)
    manager.stop(job.id)
    await manager.wait(job.id)
    out = await manager.read_output(job.id, Stream.STDOUT)
    assert out.data == b"0\nrefused\n"


# /dev


DEVICES = """
with open("/dev/null", "wb") as f:
    f.write(b"gone")
def full():
    with open("/dev/full", "wb") as f:
        f.write(b"x")
        f.flush()
print(json.dumps({
    "dev": sorted(os.listdir("/dev")),
    "null": read("/dev/null"),
    "zero": list(open("/dev/zero", "rb").read(4)),
    "urandom": len(open("/dev/urandom", "rb").read(16)),
    "full": attempt(full),
    "tty": attempt(read, "/dev/tty"),
    "create": attempt(write, "/dev/new"),
    "shm": attempt(write, "/dev/shm/x"),
    "disk": attempt(read, "/dev/vda"),
}))
"""


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_dev_holds_only_the_basics(manager: JobManager) -> None:
    """null, zero, full, random, urandom and tty work; no host device is
    there; /dev is read-only but for /dev/shm."""
    assert await run_python(manager, DEVICES) == {
        "dev": [
            *("fd", "full", "null", "ptmx", "pts", "random", "shm"),
            *("stderr", "stdin", "stdout", "tty", "urandom", "zero"),
        ],
        "null": "",
        "zero": [0, 0, 0, 0],
        "urandom": 16,
        "full": "ENOSPC",
        "tty": "ENXIO",  # no controlling terminal
        "create": "EROFS",
        "shm": "written",
        "disk": "ENOENT",
    }


PTY = """
import pty
master, slave = pty.openpty()
os.write(master, b"hello\\n")
print(json.dumps([os.ttyname(slave), os.read(slave, 6).decode()]))
"""


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_ptys_work(manager: JobManager) -> None:
    """A job gets ptys of its own devpts: Python's openpty, script(1)."""
    name, echoed = await run_python(manager, PTY)
    assert (name, echoed) == ("/dev/pts/0", "hello\n")
    ended, out, err = await run(manager, "script", "-qc", "tty", "/dev/null")
    assert ended.exit_code == 0, err
    assert out.strip().startswith("/dev/pts/")


# Writable paths


BUILD = """
cd "$1"
printf 'int main(void) { return 0; }\\n' > main.c
cc -o main main.c && ./main && echo built
echo x > "$2/outside" 2>/dev/null || echo refused
"""


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_build_in_a_writable_path(make_manager: Any, outside: Path) -> None:
    """A build in a writable path writes there, visible to the host; next
    to it, in a directory every user may write, the host stays read-only."""
    outside.chmod(0o777)
    tree = outside / "build"
    tree.mkdir()
    os.chown(tree, 65534, 65534)
    m = make_manager(launcher=AmendingLauncher(writable=(str(tree),)))
    ended, out, err = await run(
        m, "/bin/sh", "-c", BUILD, "sh", str(tree), str(outside)
    )
    assert (ended.exit_code, out) == (0, "built\nrefused\n"), err
    assert (tree / "main").stat().st_uid == 65534
    assert not (outside / "outside").exists()


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_missing_writable_path_fails_to_start(make_manager: Any) -> None:
    """A writable path that is not there is a failed start."""
    m = make_manager(launcher=AmendingLauncher(writable=("/no/such/dir",)))
    ended, _, _ = await run(m, "/bin/true")
    assert failed_stage(ended) == (
        JobStatus.FAILED_TO_START,
        "writable",
        "No such file or directory (ENOENT)",
    )
