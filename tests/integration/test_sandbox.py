"""
Isolated jobs, end to end: real namespaces, a real cgroup, a real user.

The helper, as PID 1 of the job's PID namespace, is the job's init; the
command runs under it as an unprivileged user. Commands inside jobs are
``/bin/sh`` and ``/usr/bin/python3``, which every user may run.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.error import ProcessTerminated
from twisted.internet.interfaces import IProcessProtocol, IProcessTransport
from twisted.python.failure import Failure

from jobworker.jobs.protocol import JobProcessProtocol
from jobworker.jobs.record import Job
from jobworker.jobs.service import JobManager, Settings
from jobworker.jobs.spec import JobSpec, parse_job_spec
from jobworker.linux.build import build
from jobworker.linux.launcher import (
    HelperLauncher,
    LaunchRequest,
    UnknownUser,
    User,
    describe_launch_error,
    resolve_user,
)
from jobworker.linux.pidns import new_pid_namespace
from jobworker.wire import JobStatus, Stream
from tests.conftest import skip_or_fail

reactor: Any = global_reactor
PYTHON = "/usr/bin/python3"
HELPER_NAME = "jobworker-exec"
STATUS = "/proc/self/status"

PROC_VIEW = """
import json, os
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
with open("/proc/1/comm") as f:
    init = f.read().strip()
print(json.dumps([os.getpid(), os.getppid(), pids, init]))
"""
NETWORK_VIEW = """
import json, os, socket
with open("/proc/net/dev") as f:
    dev = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
with open("/sys/class/net/lo/flags") as f:
    lo_up = bool(int(f.read(), 16) & 1)
server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(server.getsockname())
peer, _ = server.accept()
client.sendall(b"ping")
received = peer.recv(4).decode()
print(json.dumps([sorted(os.listdir("/sys/class/net")), dev, lo_up, received]))
"""
ORPHANS = """
import os, time
for _ in range(200):
    if os.fork() == 0:
        if os.fork() == 0:
            os._exit(0)
        os._exit(0)  # leaves its child to init
    os.wait()

def zombies():
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        count += stat[stat.rindex(")") + 2] == "Z"
    return count

deadline = time.monotonic() + 5
while zombies() and time.monotonic() < deadline:
    time.sleep(0.01)
print(zombies())
"""


class IsolatingLauncher:
    """Add isolation to every request, as the manager is yet to do itself."""

    def __init__(self, **isolation: Any) -> None:
        self._launcher = HelperLauncher(reactor)
        self._isolation = isolation

    def launch(
        self, protocol: IProcessProtocol, request: LaunchRequest
    ) -> IProcessTransport:
        return self._launcher.launch(protocol, replace(request, **self._isolation))


def as_user(user: User) -> dict[str, Any]:
    return {"uid": user.uid, "gid": user.gid, "groups": user.groups}


def spec(command: str, *args: str, **fields: Any) -> JobSpec:
    return parse_job_spec({"command": command, "args": list(args), **fields})


def sh(script: str, **fields: Any) -> JobSpec:
    return spec("/bin/sh", "-c", script, **fields)


def python(script: str) -> JobSpec:
    return spec(PYTHON, "-c", script)


@pytest.fixture(scope="module", autouse=True)
def helper() -> None:
    """The helper as its source is now, not as it was last built."""
    build()


@pytest.fixture
def make_manager(tmp_path: Path, managers: list[JobManager]) -> Any:
    """Managers whose jobs are isolated as asked, all shut down at the end."""

    def make(**isolation: Any) -> JobManager:
        launcher = IsolatingLauncher(isolate=True, **isolation)
        data = tmp_path / f"data{len(managers)}"
        # A test that gives its own cgroup must not get the manager's too.
        cgroups = "cgroup_procs" not in isolation
        settings = Settings(default_grace=2, cgroups=cgroups)
        m = JobManager(reactor, data, settings, launcher=launcher)
        m.open()
        managers.append(m)
        return m

    return make


@pytest.fixture
def manager(make_manager: Any) -> JobManager:
    """Jobs in every namespace, without network, as nobody."""
    m: JobManager = make_manager(**as_user(resolve_user("nobody")))
    return m


def session_members(sid: int) -> list[psutil.Process]:
    """Live processes of the session a job's init led."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return found


async def run(manager: JobManager, job_spec: JobSpec) -> tuple[Job, str]:
    """Run a job to its end; its record and its stdout."""
    job = await manager.start(job_spec, "alice")
    ended = await manager.wait(job.id)
    chunk = await manager.read_output(job.id, Stream.STDOUT)
    return ended, chunk.data.decode()


async def run_json(manager: JobManager, script: str) -> Any:
    """Run a Python script that prints JSON; what it printed."""
    ended, out = await run(manager, python(script))
    assert (ended.status, ended.exit_code) == (JobStatus.EXITED, 0), ended.error
    return json.loads(out)


# Without processes


def test_helper_argv_plain_request() -> None:
    """A request without isolation gives the helper no isolation flag."""
    launcher = HelperLauncher(reactor, Path("/h"))
    request = LaunchRequest("/bin/true", ("true",), cwd="/tmp")
    assert launcher.helper_argv(request) == [
        *("/h", "--status-fd", "3", "--cwd", "/tmp", "--", "/bin/true", "true")
    ]


def test_helper_argv_every_field() -> None:
    """Every isolation field maps to its helper flag."""
    launcher = HelperLauncher(reactor, Path("/h"))
    request = LaunchRequest(
        "/bin/true",
        ("true",),
        cwd="/tmp",
        cgroup_procs=("/a/cgroup.procs", "/b/cgroup.procs"),
        isolate=True,
        network="host",
        hostname="box",
        uid=65534,
        gid=65533,
        groups=(1, 2),
    )
    assert launcher.helper_argv(request) == [
        *("/h", "--status-fd", "3"),
        *("--cgroup-procs", "/a/cgroup.procs", "--cgroup-procs", "/b/cgroup.procs"),
        *("--isolate", "--network", "host", "--hostname", "box"),
        *("--tmpfs-size", str(256 << 20), "--tmpfs-inodes", "65536"),
        *("--uid", "65534", "--gid", "65533", "--groups", "1,2"),
        *("--cwd", "/tmp", "--", "/bin/true", "true"),
    ]


@pytest.mark.parametrize(
    "fields",
    [{"network": "bridge"}, {"uid": 1}, {"gid": 1}, {"groups": (1,)}],
)
def test_launch_request_refuses_nonsense(fields: dict[str, Any]) -> None:
    """An unknown network, or half a user, is refused before anything runs."""
    with pytest.raises(ValueError):
        LaunchRequest("/bin/true", ("true",), **fields)


def test_resolve_user() -> None:
    """A user name resolves to its ids; an unknown one says which."""
    nobody = resolve_user("nobody")
    assert (nobody.uid, nobody.gid) == (65534, 65534)
    assert nobody.gid in nobody.groups
    with pytest.raises(UnknownUser, match="no such user: 'no-such-user-here'"):
        resolve_user("no-such-user-here")


class RecordingJob:
    """What a job's protocol tells the job."""

    def __init__(self) -> None:
        self.reports: list[str] = []
        self.ended: Failure | None = None

    def launch_report(self, line: str) -> None:
        self.reports.append(line)

    def process_ended(self, reason: Failure) -> None:
        self.ended = reason


@pytest.mark.parametrize(
    ("line", "exit_code", "signal_number"),
    [(b"exit 0\n", 0, None), (b"exit 3\n", 3, None), (b"signal 15\n", None, 15)],
)
def test_reported_end_wins_over_inits_status(
    line: bytes, exit_code: int, signal_number: int | None
) -> None:
    """The command's reported end, not init's exit status, ends the job."""
    job = RecordingJob()
    protocol = JobProcessProtocol(job)  # type: ignore[arg-type]
    protocol.childDataReceived(3, b"runn")
    protocol.childDataReceived(3, b"ing\n" + line)
    protocol.processEnded(Failure(ProcessTerminated(exitCode=143)))
    assert job.reports == ["running"]
    assert job.ended is not None
    value: Any = job.ended.value
    assert (value.exitCode, value.signal) == (exit_code, signal_number)


# Real processes


@pytest.mark.root
def test_pid_namespace_is_only_for_the_block() -> None:
    """The first child spawned in the block is PID 1 of its own; later ones not."""
    own = os.readlink("/proc/thread-self/ns/pid")
    echo_pid = ["/bin/sh", "-c", "echo $$"]
    with new_pid_namespace():
        inside = subprocess.run(echo_pid, capture_output=True, check=True)
    after = subprocess.run(echo_pid, capture_output=True, check=True)
    assert inside.stdout == b"1\n"
    assert after.stdout != b"1\n"
    assert os.readlink("/proc/thread-self/ns/pid_for_children") == own
    assert os.readlink("/proc/thread-self/ns/pid") == own


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_own_pid_tree(manager: JobManager) -> None:
    """The command is PID 2 under the helper as PID 1, and sees nothing else."""
    pid, ppid, pids, init = await run_json(manager, PROC_VIEW)
    assert (pid, ppid, pids, init) == (2, 1, [1, 2], HELPER_NAME)


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_ps_shows_only_the_job(manager: JobManager) -> None:
    """ps inside a job lists its init and itself."""
    ended, out = await run(manager, spec("ps", "-e", "-o", "pid=,comm="))
    assert ended.exit_code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["1", HELPER_NAME],
        ["2", "ps"],
    ]


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_network_is_only_lo_and_up(manager: JobManager) -> None:
    """Without network, a job has lo alone, up and working."""
    sys_net, proc_net, lo_up, received = await run_json(manager, NETWORK_VIEW)
    assert (sys_net, proc_net, lo_up, received) == (["lo"], ["lo"], True, "ping")


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_host_network(make_manager: Any) -> None:
    """With network "host", a job sees the host's interfaces."""
    m = make_manager(network="host", **as_user(resolve_user("nobody")))
    ended, out = await run(m, spec("ls", "/sys/class/net"))
    assert ended.exit_code == 0
    assert out.split() == sorted(os.listdir("/sys/class/net"))


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_hostname(manager: JobManager) -> None:
    """A job has its own hostname; the host keeps its own."""
    ours = socket.gethostname()
    ended, out = await run(manager, spec("hostname"))
    assert (ended.exit_code, out) == (0, "jobworker\n")
    assert socket.gethostname() == ours


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_runs_as_nobody_without_capabilities(manager: JobManager) -> None:
    """The command runs as nobody, its groups only, no capability, none to gain."""
    nobody = resolve_user("nobody")
    ended, out = await run(
        manager,
        sh("id -u; id -g; id -G; grep -E '^(CapPrm|CapEff|NoNewPrivs):' " + STATUS),
    )
    assert ended.exit_code == 0
    assert out.split() == [
        str(nobody.uid),
        str(nobody.gid),
        *(str(g) for g in nobody.groups),
        *("CapPrm:", "0" * 16, "CapEff:", "0" * 16, "NoNewPrivs:", "1"),
    ]


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_kernel_settings_cannot_be_written(make_manager: Any) -> None:
    """/proc/sys and /sys are read-only inside a job, even one running as root."""
    ours = socket.gethostname()
    m = make_manager()
    for path in ("/proc/sys/kernel/hostname", "/sys/kernel/uevent_helper"):
        job = await m.start(sh(f"echo x > {path}"), "alice")
        ended = await m.wait(job.id)
        err = await m.read_output(job.id, Stream.STDERR)
        assert ended.exit_code == 2
        assert b"Read-only file system" in err.data
    assert socket.gethostname() == ours


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_stop_is_immediate(manager: JobManager) -> None:
    """Stopping sleep ends it at once by SIGTERM, long before the grace period."""
    job = await manager.start(spec("sleep", "1000"), "alice")
    began = time.monotonic()
    manager.stop(job.id, grace=30)
    ended = await manager.wait(job.id)
    assert time.monotonic() - began < 5
    assert (ended.status, ended.exit_code, ended.signal) == (
        JobStatus.STOPPED,
        None,
        signal.SIGTERM,
    )


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_stop_kills_what_ignores_sigterm(manager: JobManager) -> None:
    """A job ignoring SIGTERM is SIGKILLed, init included, when grace ends."""
    job = await manager.start(sh("trap '' TERM; echo ready; sleep 1000"), "alice")
    await manager.read_output(job.id, wait=10)  # the trap is set
    manager.stop(job.id, grace=0.2)
    ended = await manager.wait(job.id)
    assert (ended.status, ended.signal) == (JobStatus.STOPPED, signal.SIGKILL)
    assert session_members(job.pid or 0) == []


@pytest.mark.root
@pytest.mark.parametrize(
    "number", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1]
)
@pytest_twisted.ensureDeferred
async def test_init_forwards_signals(manager: JobManager, number: int) -> None:
    """A signal sent to the job's init alone reaches the command."""
    job = await manager.start(spec("sleep", "1000"), "alice")
    assert job.pid is not None
    os.kill(job.pid, number)
    ended = await manager.wait(job.id)
    assert (ended.status, ended.exit_code, ended.signal) == (
        JobStatus.EXITED,
        None,
        number,
    )


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_job_killing_itself(manager: JobManager) -> None:
    """A command killing itself is recorded with its signal, not init's status."""
    ended, _ = await run(manager, sh("kill -TERM $$"))
    assert (ended.status, ended.exit_code, ended.signal) == (
        JobStatus.EXITED,
        None,
        signal.SIGTERM,
    )


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_exit_code(manager: JobManager) -> None:
    """The command's exit code is the job's."""
    ended, _ = await run(manager, sh("exit 3"))
    assert (ended.status, ended.exit_code, ended.signal) == (JobStatus.EXITED, 3, None)


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_orphans_are_reaped(manager: JobManager) -> None:
    """200 orphaned grandchildren leave no zombie behind."""
    assert await run_json(manager, ORPHANS) == 0


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_leftovers_end_with_the_command(manager: JobManager) -> None:
    """Background processes a command leaves behind end with it."""
    ended, out = await run(manager, sh("sleep 1000 & echo started"))
    assert (ended.status, ended.exit_code, out) == (JobStatus.EXITED, 0, "started\n")
    assert ended.pid is not None
    assert session_members(ended.pid) == []


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_init_is_small(manager: JobManager) -> None:
    """The init a running job costs little memory of its own."""
    job = await manager.start(spec("sleep", "1000"), "alice")
    assert job.pid is not None
    with open(f"/proc/{job.pid}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    assert int(status["RssAnon"].split()[0]) < 512  # kB
    manager.stop(job.id)
    await manager.wait(job.id)


@pytest.mark.root
@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (
            {"command": "/no/such/file"},
            "exec /no/such/file: No such file or directory (ENOENT)",
        ),
        (
            {"command": "/bin/true", "cwd": "/root"},
            "chdir /root: Permission denied (EACCES)",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_failed_to_start(
    manager: JobManager, fields: dict[str, Any], error: str
) -> None:
    """A command an isolated user cannot run fails to start with the OS error."""
    job = await manager.start(parse_job_spec(fields), "alice")
    assert (job.status, job.error) == (JobStatus.FAILED_TO_START, error)
    assert manager.running_count() == 0


def own_v1_cgroup(controller: str) -> str:
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path
    skip_or_fail(f"no cgroup v1 {controller} hierarchy")
    raise AssertionError("unreachable")


@pytest.fixture
def pids_cgroup() -> Iterator[Path]:
    """A throwaway cgroup v1 pids cgroup under our own, removed afterwards."""
    base = Path("/sys/fs/cgroup/pids") / own_v1_cgroup("pids").lstrip("/")
    if not base.is_dir():
        skip_or_fail(f"no cgroup v1 pids hierarchy at {base}")
    path = base / f"jobworker-test-{secrets.token_hex(4)}"
    path.mkdir()
    yield path
    for _ in range(100):  # dead processes may take a moment to leave it
        try:
            path.rmdir()
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.02)
    path.rmdir()


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_joins_cgroup(make_manager: Any, pids_cgroup: Path) -> None:
    """A job's processes, its init included, are in the cgroup it was given."""
    procs = pids_cgroup / "cgroup.procs"
    m = make_manager(cgroup_procs=(str(procs),), **as_user(resolve_user("nobody")))
    job = await m.start(sh("echo started; exec sleep 1000"), "alice")
    assert job.pid is not None
    await m.read_output(job.id, wait=10)  # the command itself runs
    command = psutil.Process(job.pid).children()[0].pid
    assert sorted(map(int, procs.read_text().split())) == sorted([job.pid, command])
    m.stop(job.id)
    ended = await m.wait(job.id)
    assert ended.signal == signal.SIGTERM


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_missing_cgroup_fails_to_start(make_manager: Any) -> None:
    """A cgroup that cannot be joined is a failed start with the OS error."""
    m = make_manager(cgroup_procs=("/no/such/cgroup.procs",))
    job = await m.start(spec("/bin/true"), "alice")
    assert job.status is JobStatus.FAILED_TO_START
    assert job.error is not None
    assert job.error.startswith("cgroup ")
    assert job.error.endswith(": No such file or directory (ENOENT)")


def test_launch_error_names_what_failed() -> None:
    """A setup error names the cgroup, directory or command it concerns."""
    request = LaunchRequest(
        "/bin/true", ("true",), cwd="/x", cgroup_procs=("/a/cgroup.procs",)
    )
    assert [
        describe_launch_error(f"error {stage} 2", request)
        for stage in ("cgroup", "chdir", "exec")
    ] == [
        f"{subject}: No such file or directory (ENOENT)"
        for subject in ("cgroup /a/cgroup.procs", "chdir /x", "exec true")
    ]
