"""
Jobs that misbehave on purpose: they flood their output, close it, fork and
leave, ignore SIGTERM, or leave their process group or session. Status,
output and stop must still behave as documented, and nothing may be left
running once the job has ended.

Every process of a job carries a tag in its environment, which children
inherit whatever group, session or namespace they move to: scanning the host
for it finds every process the job made, also the ones that escaped.

Each test runs isolated (namespaces, as nobody, root needed) and plain
(``Settings(isolate=False)``, as the server's user). Either way the job's
cgroup holds all its processes together, so a child that calls ``setsid`` or
``setpgid`` does not escape stop; those tests need root in both modes.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from jobworker.jobs.observer import with_deadline
from jobworker.jobs.record import Job
from jobworker.jobs.service import JobManager, Settings
from jobworker.jobs.spec import JobSpec, parse_job_spec
from jobworker.wire import JobStatus, Stream

reactor: Any = global_reactor
PYTHON = "/usr/bin/python3"
TAG = "JOBWORKER_HOSTILE_TAG"
MiB = 1 << 20

ISOLATED = pytest.param(True, marks=pytest.mark.root, id="isolated")
PLAIN = pytest.param(False, id="plain")
# Without namespaces, only the job's cgroup holds a child that left its
# process group or session: cgroups need root.
PLAIN_NEEDS_CGROUPS = pytest.param(False, id="plain", marks=pytest.mark.root)


class Hostile:
    """A manager in one mode, and the tag of every process its jobs make."""

    def __init__(self, manager: JobManager, isolate: bool) -> None:
        self.manager = manager
        self.isolate = isolate
        self.tag = secrets.token_hex(8)
        # The spawned processes: an isolated job's init does not carry the
        # tag (the helper never gets the job's environment).
        self.spawned: list[int] = []

    async def start(self, command: str, *args: str, **fields: Any) -> Job:
        fields.setdefault("env", {})[TAG] = self.tag
        spec = parse_job_spec({"command": command, "args": list(args), **fields})
        # Plain: as the server's user (root names it; another is itself).
        run_as = "nobody" if self.isolate else "root"
        job = await self.manager.start(spec, "mallory", run_as=run_as)
        if job.pid is not None:
            self.spawned.append(job.pid)
        return job

    async def sh(self, script: str, **fields: Any) -> Job:
        return await self.start("/bin/sh", "-c", script, **fields)

    @property
    def init(self) -> int:
        """Processes a job has besides its command's: an isolated job's init."""
        return 1 if self.isolate else 0

    def processes(self) -> list[psutil.Process]:
        """Every live (not zombie) process carrying this test's tag, and the
        isolated jobs' inits."""
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get(TAG) == self.tag or self._is_init(p):
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass  # gone, a zombie, or a kernel thread
        return found

    def _is_init(self, p: psutil.Process) -> bool:
        return (
            self.isolate
            and p.pid in self.spawned
            and p.name() == "jobworker-exec"
            and p.status() != psutil.STATUS_ZOMBIE
        )

    def left_running(self, seen: list[psutil.Process]) -> list[psutil.Process]:
        """Which of ``seen``, and of any other tagged process, is still alive
        after giving SIGKILLed ones a moment to finish dying. A zombie counts
        as dead: it runs nothing, and reaping an orphan is its new parent's
        business, not ours."""
        deadline = time.monotonic() + 5
        while True:
            alive = [p for p in {*seen, *self.processes()} if is_alive(p)]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.02)


def is_alive(process: psutil.Process) -> bool:
    try:
        status: str = process.status()
    except psutil.NoSuchProcess:
        return False
    return bool(status != psutil.STATUS_ZOMBIE)


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    """Make a Hostile in a mode, with settings; ends all it made at the end."""
    made: list[Hostile] = []

    def make(isolate: bool, **settings: Any) -> Hostile:
        manager = JobManager(
            reactor,
            tmp_path / f"data{len(made)}",
            Settings(
                isolate=isolate, allow_unisolated_root=True, default_grace=2, **settings
            ),
        )
        manager.open()
        made.append(Hostile(manager, isolate))
        return made[-1]

    yield make
    for hostile in made:
        # A failed test may leave escaped processes holding a job's pipes,
        # and so the job running: end them, so that shutdown can end it.
        for p in hostile.processes():
            p.kill()
        pytest_twisted.blockon(Deferred.fromCoroutine(hostile.manager.shutdown()))


@pytest.fixture(params=[ISOLATED, PLAIN])
def hostile(request: pytest.FixtureRequest, make: Any) -> Hostile:
    """Jobs isolated as nobody, or plain as the server's user."""
    result: Hostile = make(request.param)
    return result


@pytest.fixture(params=[ISOLATED, PLAIN_NEEDS_CGROUPS])
def escapable(request: pytest.FixtureRequest, make: Any) -> Hostile:
    """Like ``hostile``; without isolation only the cgroup holds the job."""
    result: Hostile = make(request.param)
    return result


async def wait_ended(manager: JobManager, job_id: str, seconds: float = 10) -> Job:
    """The job's final record; fails, rather than hangs, if it does not end."""
    ending: Deferred[Any] = manager.wait(job_id)
    await with_deadline(ending, seconds, reactor)
    job = manager.get(job_id)
    assert job.status.ended, f"still {job.status.value} after {seconds} s"
    return job


async def read_until(manager: JobManager, job_id: str, wanted: bytes) -> None:
    """Wait until the job's combined output holds ``wanted`` bytes."""
    deadline = time.monotonic() + 10
    while (size := manager.output_log(job_id).total) < len(wanted):
        assert time.monotonic() < deadline, f"only {size} bytes of output"
        await manager.read_output(job_id, offset=size, wait=1)
    assert (await manager.read_output(job_id)).data == wanted


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


def spec(command: str, *args: str) -> JobSpec:
    return parse_job_spec({"command": command, "args": list(args)})


# Floods


@pytest.mark.parametrize("isolate", [ISOLATED, PLAIN])
@pytest_twisted.ensureDeferred
async def test_flood_stops_at_output_limit(isolate: bool, make: Any) -> None:
    """cat /dev/zero is stopped at the output limit with exactly that many bytes."""
    hostile = make(isolate, output_limit=MiB)
    job = await hostile.start("/bin/cat", "/dev/zero")
    ended = await wait_ended(hostile.manager, job.id)
    assert (ended.status, ended.exit_code, ended.error) == (
        JobStatus.STOPPED,
        None,
        f"output limit of {MiB} bytes reached",
    )
    # Stopped with no grace: SIGTERM, then at once SIGKILL; which one
    # ended cat is a race, and either is right.
    assert ended.signal in (signal.SIGTERM, signal.SIGKILL)
    assert hostile.manager.output_sizes(job.id) == {"stdout": MiB, "stderr": 0}
    chunk = await hostile.manager.read_output(job.id, limit=2 * MiB)
    assert (chunk.data, chunk.complete) == (bytes(MiB), True)
    assert hostile.left_running([]) == []


@pytest_twisted.ensureDeferred
async def test_flood_with_follower_keeps_server_responsive(hostile: Hostile) -> None:
    """While cat /dev/zero floods, a follower gets every byte, timers stay on time,
    another job runs normally, server memory stays flat; stop ends it all."""
    manager = hostile.manager
    server = psutil.Process()
    rss_before = server.memory_info().rss
    flood = await hostile.start("/bin/cat", "/dev/zero")

    async def follow() -> tuple[int, bool]:
        offset, all_zero = 0, True
        while True:
            chunk = await manager.read_output(flood.id, offset=offset, wait=5)
            all_zero = all_zero and chunk.data.count(0) == len(chunk.data)
            assert chunk.offset == offset
            offset = chunk.next_offset
            if chunk.complete:
                return offset, all_zero

    following = Deferred.fromCoroutine(follow())
    lateness = []
    for _ in range(10):  # a second of 0.1 s timers: none may come late
        began = time.monotonic()
        await sleep(0.1)
        lateness.append(time.monotonic() - began - 0.1)
    echo = await hostile.start("/bin/echo", "beside")
    beside = await wait_ended(manager, echo.id, seconds=5)
    assert (beside.status, beside.exit_code) == (JobStatus.EXITED, 0)
    assert (await manager.read_output(echo.id)).data == b"beside\n"
    seen = hostile.processes()
    assert len(seen) == 1 + hostile.init
    manager.stop(flood.id, grace=1)
    ended = await wait_ended(manager, flood.id)
    assert (ended.status, ended.signal) == (JobStatus.STOPPED, signal.SIGTERM)
    offset, all_zero = await following
    total = manager.output_sizes(flood.id)
    assert total["stdout"] > 4 * MiB  # it did flood
    assert (offset, all_zero, total["stderr"]) == (total["stdout"], True, 0)
    assert max(lateness) < 0.25, lateness
    assert server.memory_info().rss - rss_before < 32 * MiB
    assert hostile.left_running(seen) == []


# Closing output


@pytest_twisted.ensureDeferred
async def test_closed_output_keeps_running(hostile: Hostile) -> None:
    """A job that closes stdout and stderr still runs; stop ends it; output complete."""
    manager = hostile.manager
    job = await hostile.sh("echo out; echo err >&2; exec >&- 2>&-; exec sleep 1000")
    await read_until(manager, job.id, b"out\nerr\n")
    seen = hostile.processes()
    assert len(seen) == 1 + hostile.init
    nothing = await manager.read_output(job.id, offset=8, wait=0.5)
    assert (nothing.data, nothing.complete) == (b"", False)
    assert manager.get(job.id).status is JobStatus.RUNNING
    manager.stop(job.id, grace=5)
    ended = await wait_ended(manager, job.id)
    assert (ended.status, ended.exit_code, ended.signal) == (
        JobStatus.STOPPED,
        None,
        signal.SIGTERM,
    )
    out = await manager.read_output(job.id, Stream.STDOUT)
    err = await manager.read_output(job.id, Stream.STDERR)
    end = await manager.read_output(job.id, offset=8)
    assert (out.data, out.complete, err.data, err.complete) == (
        b"out\n",
        True,
        b"err\n",
        True,
    )
    assert (end.data, end.complete) == (b"", True)
    assert hostile.left_running(seen) == []


@pytest_twisted.ensureDeferred
async def test_closed_stdout_keeps_writing_stderr(hostile: Hostile) -> None:
    """After closing stdout, a job's stderr still arrives, and it ends normally."""
    manager = hostile.manager
    job = await hostile.sh(
        "echo out; exec >&-; sleep 0.3; echo late >&2; sleep 0.2; exit 4"
    )
    ended = await wait_ended(manager, job.id)
    assert (ended.status, ended.exit_code) == (JobStatus.EXITED, 4)
    out = await manager.read_output(job.id, Stream.STDOUT)
    err = await manager.read_output(job.id, Stream.STDERR)
    assert (out.data, err.data) == (b"out\n", b"late\n")
    assert (await manager.read_output(job.id)).data == b"out\nlate\n"


# Forking and leaving


LEAVE_CHILDREN = """
import os, sys, time
for grandchildren in (0, 0, 2):
    if os.fork() == 0:  # a child, or one leaving orphaned grandchildren
        for _ in range(grandchildren):
            if os.fork() == 0:
                time.sleep(1000)
        if grandchildren:
            os._exit(0)
        time.sleep(1000)
os.wait()  # for the one that orphaned its children
print("parent", flush=True)
time.sleep(0.5)
sys.exit(3)
"""


@pytest_twisted.ensureDeferred
async def test_children_holding_pipes_end_with_the_command(hostile: Hostile) -> None:
    """A command that exits leaving children (and orphaned grandchildren) holding
    its pipes ends as exited with its code; the children are gone."""
    manager = hostile.manager
    job = await hostile.start(PYTHON, "-c", LEAVE_CHILDREN)
    await read_until(manager, job.id, b"parent\n")
    seen = hostile.processes()
    assert len(seen) == 5 + hostile.init  # the command, two children, two orphans
    ended = await wait_ended(manager, job.id)
    assert (ended.status, ended.exit_code, ended.signal) == (JobStatus.EXITED, 3, None)
    assert hostile.left_running(seen) == []


ESCAPE_SESSION = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # a grandchild in the new session
        time.sleep(1000)
    time.sleep(1000)
print("escaped", flush=True)
"""


@pytest_twisted.ensureDeferred
async def test_setsid_children_end_with_the_command(escapable: Hostile) -> None:
    """Children that setsid and keep the pipes still end when the command exits."""
    manager = escapable.manager
    job = await escapable.sh(
        f"setsid sleep 1000 & {PYTHON} -c '{ESCAPE_SESSION}'; exit 5"
    )
    await read_until(manager, job.id, b"escaped\n")
    await sleep(0.2)  # let the escaped process settle in its session
    ended = await wait_ended(manager, job.id, seconds=3)
    assert (ended.status, ended.exit_code, ended.signal) == (JobStatus.EXITED, 5, None)
    assert (await manager.read_output(job.id)).data == b"escaped\n"
    assert escapable.left_running([]) == []


# Ignoring SIGTERM


IGNORE_TERM = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
for _ in range(2):
    if os.fork() == 0:
        time.sleep(1000)
print("ready", flush=True)
time.sleep(1000)
"""


@pytest_twisted.ensureDeferred
async def test_sigterm_ignored_is_killed_after_grace(hostile: Hostile) -> None:
    """A job and its children ignoring SIGTERM are SIGKILLed when grace ends, not
    before."""
    manager = hostile.manager
    job = await hostile.start(PYTHON, "-c", IGNORE_TERM)
    await read_until(manager, job.id, b"ready\n")
    seen = hostile.processes()
    assert len(seen) == 3 + hostile.init
    began = time.monotonic()
    manager.stop(job.id, grace=0.5)
    await sleep(0.3)
    assert manager.get(job.id).status is JobStatus.STOPPING
    assert all(p.is_running() for p in seen)
    ended = await wait_ended(manager, job.id)
    assert time.monotonic() - began >= 0.5
    assert (ended.status, ended.exit_code, ended.signal) == (
        JobStatus.STOPPED,
        None,
        signal.SIGKILL,
    )
    assert hostile.left_running(seen) == []


# Leaving the process group or the session


LEAVE_GROUP = f"""
setsid sleep 1000 &
perl -e 'setpgrp(0, 0); sleep 1000' &
{PYTHON} -c 'import os, time; os.setpgid(0, 0); time.sleep(1000)' &
{PYTHON} -c 'import os, time; os.setsid(); time.sleep(1000)' &
echo started
wait
"""


@pytest_twisted.ensureDeferred
async def test_stop_reaches_children_that_left_group_or_session(
    escapable: Hostile,
) -> None:
    """Children in their own process group or session are stopped with the job;
    the record says stopped by SIGTERM and nothing is left."""
    manager = escapable.manager
    job = await escapable.sh(LEAVE_GROUP)
    await read_until(manager, job.id, b"started\n")
    deadline = time.monotonic() + 5
    while len(seen := escapable.processes()) < 5 + escapable.init:
        assert time.monotonic() < deadline, seen
        await sleep(0.05)
    await sleep(0.2)  # let them all leave their group
    assert manager.get(job.id).status is JobStatus.RUNNING
    manager.stop(job.id, grace=1)
    ended = await wait_ended(manager, job.id, seconds=3)
    assert (ended.status, ended.exit_code, ended.signal) == (
        JobStatus.STOPPED,
        None,
        signal.SIGTERM,
    )
    assert (await manager.read_output(job.id)).data == b"started\n"
    assert escapable.left_running(seen) == []


@pytest_twisted.ensureDeferred
async def test_timeout_reaches_children_that_left_the_session(
    escapable: Hostile,
) -> None:
    """A timeout ends a job whose child setsid'd away, and that child too."""
    manager = escapable.manager
    job = await escapable.sh(
        f"{PYTHON} -c 'import os, time; os.setsid(); time.sleep(1000)' & wait",
        timeout=0.5,
    )
    ended = await wait_ended(manager, job.id, seconds=3)
    assert (ended.status, ended.signal) == (JobStatus.TIMED_OUT, signal.SIGTERM)
    assert escapable.left_running([]) == []
