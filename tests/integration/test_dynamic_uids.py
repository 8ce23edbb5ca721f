"""
Uids of a job's own, for real: isolated jobs of a role that names no user,
run by a root ``JobManager`` under real namespaces, each as a uid and gid no
other process has, named ``job`` in its view, reserved host-wide by a lock
its init holds until the job's last process is gone. The lock directory is
the test's own (``Settings.uid_locks``); a second manager on it stands for
another server on the host, a killed driver process for a crashed one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor

from jobworker.jobs.errors import OutOfDescriptors, OutOfUids, StorageFull
from jobworker.jobs.record import Job
from jobworker.jobs.service import JobManager, Settings
from jobworker.jobs.spec import parse_job_spec
from jobworker.linux.build import build
from jobworker.linux.cgroups import CgroupError
from jobworker.linux.uids import UidRange
from jobworker.wire import JobStatus, Stream
from tests.conftest import REQUIRE_ROOT_TESTS, skip_or_fail

reactor: Any = global_reactor
PYTHON = "/usr/bin/python3"
FIRST = 0x70000000
pytestmark = pytest.mark.root


@pytest.fixture(scope="module", autouse=True)
def helper() -> None:
    """The helper as its source is now, not as it was last built."""
    build()


@pytest.fixture
def locks(tmp_path: Path) -> Path:
    return tmp_path / "uids"


@pytest.fixture
def make_manager(tmp_path: Path, locks: Path, managers: list[JobManager]) -> Any:
    """Isolating managers on one lock directory, each shut down at the end."""

    def make(uids: UidRange | None = None, **settings: Any) -> JobManager:
        m = JobManager(
            reactor,
            tmp_path / f"data{len(managers)}",
            Settings(
                default_grace=2,
                uid_locks=locks,
                job_uids=uids or UidRange(),
                **settings,
            ),
        )
        m.open()
        managers.append(m)
        return m

    return make


@pytest.fixture
def manager(make_manager: Any) -> JobManager:
    m: JobManager = make_manager()
    return m


def locked(locks: Path, uid: int) -> bool:
    """Whether some open file holds ``uid``'s lock, tried as another server."""
    try:
        fd = os.open(locks / str(uid), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        assert e.errno == errno.EWOULDBLOCK
        return True
    finally:
        os.close(fd)
    return False


async def started(manager: JobManager, *argv: str, **fields: Any) -> Job:
    spec = parse_job_spec({"command": argv[0], "args": list(argv[1:]), **fields})
    return await manager.start(spec, "alice")  # run_as None: a uid of its own


async def run(manager: JobManager, script: str, **fields: Any) -> tuple[Job, str]:
    """Run ``sh -c script`` to its end: its record and combined output."""
    job = await started(manager, "/bin/sh", "-c", script, **fields)
    ended = await manager.wait(job.id)
    out = await manager.read_output(job.id, Stream.COMBINED)
    return ended, out.data.decode()


def wait_until(condition: Any, what: str) -> None:
    """Poll ``condition`` (a wait, not a timed assertion: the bound is far)."""
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not so after 30 s: {what}")
        time.sleep(0.01)


# Who the job is


@pytest_twisted.ensureDeferred
async def test_a_job_is_user_job_of_a_uid_of_its_own(manager: JobManager) -> None:
    """id and whoami name it; its record and its JSON give the same ids."""
    ended, out = await run(manager, "id; whoami; id -u; id -g")
    assert (ended.status, ended.exit_code) == (JobStatus.EXITED, 0), out
    uid = ended.uid
    assert uid is not None and uid in UidRange() and ended.gid == uid
    assert ended.run_as is None
    assert out.splitlines() == [
        f"uid={uid}(job) gid={uid}(job) groups={uid}(job)",
        "job",
        str(uid),
        str(uid),
    ]
    record = manager.describe(ended)
    assert (record["run_as"], record["uid"], record["gid"]) == (None, uid, uid)


@pytest_twisted.ensureDeferred
async def test_the_view_has_the_hosts_entries_and_the_jobs(manager: JobManager) -> None:
    """Its /etc/passwd and /etc/group are the host's, plus its own line."""
    ended, out = await run(manager, "cat /etc/passwd; echo ---; cat /etc/group")
    passwd, group = out.split("---\n")
    uid = ended.uid
    host_passwd = Path("/etc/passwd").read_text()
    host_group = Path("/etc/group").read_text()
    assert passwd == host_passwd + f"job:x:{uid}:{uid}:job:/tmp:/bin/sh\n"
    assert group == host_group + f"job:x:{uid}:\n"


@pytest_twisted.ensureDeferred
async def test_a_named_user_keeps_the_hosts_files(manager: JobManager) -> None:
    """A role's own user is looked up as before: no entry added, no uid
    reserved; the record still shows its ids."""
    script = "id -un; wc -l < /etc/passwd"
    spec = parse_job_spec({"command": "/bin/sh", "args": ["-c", script]})
    job = await manager.start(spec, "alice", run_as="nobody")
    ended = await manager.wait(job.id)
    out = (await manager.read_output(job.id, Stream.COMBINED)).data.decode()
    lines = Path("/etc/passwd").read_text().count("\n")
    assert out.split() == ["nobody", str(lines)]
    assert (ended.run_as, ended.uid, ended.gid) == ("nobody", 65534, 65534)


@pytest_twisted.ensureDeferred
async def test_git_and_ssh_work_under_a_uid_of_its_own(manager: JobManager) -> None:
    """Tools that ask who they run as find a user, a home and a shell."""
    missing = [tool for tool in ("git", "ssh") if shutil.which(tool) is None]
    if missing and not REQUIRE_ROOT_TESTS:
        pytest.skip(f"not installed: {', '.join(missing)}")
    script = (
        "cd /tmp && git init -q repo && cd repo"
        " && git -c user.email=a@b -c user.name=n commit -q --allow-empty -m x"
        " && git log --format=%an:%s && ssh -G 127.0.0.1 2>/dev/null | grep -E '^user '"
    )
    ended, out = await run(manager, script)
    assert (ended.status, ended.exit_code) == (JobStatus.EXITED, 0), out
    assert out.splitlines() == ["n:x", "user job"]


@pytest_twisted.ensureDeferred
async def test_a_job_cannot_change_who_it_is(manager: JobManager) -> None:
    """The attacker's tries at its own entries: write, replace, remove,
    unmount; and the copies' tmpfs is nowhere in its /dev."""
    attempts = """
import errno, json, os, shutil
def attempt(action, *args):
    try:
        action(*args)
        return "done"
    except OSError as e:
        return errno.errorcode[e.errno]
def replace():
    open("/tmp/x", "w").close()
    os.rename("/tmp/x", "/etc/passwd")
def append(path):
    with open(path, "a") as f:
        f.write("root2::0:0::/:/bin/sh\\n")
print(json.dumps({
    "append passwd": attempt(append, "/etc/passwd"),
    "append group": attempt(append, "/etc/group"),
    "replace": attempt(replace),
    "remove": attempt(os.unlink, "/etc/group"),
    "chmod": attempt(os.chmod, "/etc/passwd", 0o666),
    "unmount": attempt(os.system, "umount /etc/passwd 2>/dev/null || exit 1"),
    "staged": sorted(set(os.listdir("/dev")) & {"passwd", "group"}),
}))
"""
    job = await started(manager, PYTHON, "-c", attempts)
    ended = await manager.wait(job.id)
    out = (await manager.read_output(job.id, Stream.COMBINED)).data.decode()
    assert (ended.status, ended.exit_code) == (JobStatus.EXITED, 0), out
    result = json.loads(out)
    assert result.pop("staged") == []
    assert result.pop("unmount") == "done"  # os.system ran; the umount failed:
    assert result == {
        "append passwd": "EROFS",
        "append group": "EROFS",
        "replace": "EXDEV",
        "remove": "EROFS",
        "chmod": "EROFS",
    }
    _, text = await run(manager, "grep -c '^root2:' /etc/passwd; id -un")
    assert text.split() == ["0", "job"]


# The reservation


@pytest_twisted.ensureDeferred
async def test_concurrent_jobs_get_different_uids_locked_while_they_run(
    manager: JobManager, locks: Path
) -> None:
    """Two jobs at once: two uids of the range, each locked (as another
    server sees it) while its job runs, free and its file gone after."""
    first = await started(manager, "/bin/sleep", "1000")
    second = await started(manager, "/bin/sleep", "1000")
    uids = {first.uid, second.uid}
    assert len(uids) == 2 and all(u in UidRange() for u in uids)
    assert all(locked(locks, u) for u in uids if u is not None)
    for job in (first, second):
        manager.stop(job.id, grace=0)  # SIGKILL: the job's end frees it
        ended = await manager.wait(job.id)
        assert ended.status is JobStatus.STOPPED
        assert ended.uid == job.uid
    assert not any(locked(locks, u) for u in uids if u is not None)
    assert list(locks.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_another_server_never_picks_a_uid_in_use(make_manager: Any) -> None:
    """Two managers on one host (one lock directory), two uids between
    them: each gets the other's free one, and a third job is refused with
    nothing left of it."""
    uids = UidRange(FIRST, FIRST + 1)
    one, two = make_manager(uids), make_manager(uids)
    mine = await started(one, "/bin/sleep", "1000")
    theirs = await started(two, "/bin/sleep", "1000")
    assert {mine.uid, theirs.uid} == {FIRST, FIRST + 1}
    with pytest.raises(OutOfUids, match=f"all 2 uids of the job uid range {uids}"):
        await started(two, "/bin/true")
    assert [j.id for j in two.list()] == [theirs.id]
    one.stop(mine.id, grace=0)
    await one.wait(mine.id)
    _, out = await run(two, "id -u")
    assert out.strip() == str(mine.uid)


@pytest_twisted.ensureDeferred
async def test_a_failed_launch_returns_its_uid(
    make_manager: Any, locks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One uid: a job whose helper fails (no such cwd), one whose cgroup
    finds no descriptors, one whose record finds no room: each gives the
    uid back, and the next job has it."""
    manager: JobManager = make_manager(UidRange(FIRST, FIRST))
    ended, _ = await run(manager, "true", cwd="/no/such/directory")
    assert ended.status is JobStatus.FAILED_TO_START
    assert (ended.uid, ended.error) == (FIRST, ended.error)
    assert "chdir /no/such/directory" in (ended.error or "")
    assert not locked(locks, FIRST)

    def no_descriptors(*args: Any) -> Any:
        raise CgroupError("no descriptors", errno.EMFILE)

    with monkeypatch.context() as patched:
        patched.setattr(manager.confinement, "create", no_descriptors)
        with pytest.raises(OutOfDescriptors):
            await started(manager, "/bin/true")
    assert not locked(locks, FIRST)

    def full(job: Job) -> None:
        error = sqlite3.OperationalError("database or disk is full")
        error.sqlite_errorcode = sqlite3.SQLITE_FULL
        raise error

    with monkeypatch.context() as patched:
        patched.setattr(manager.store, "save", full)
        with pytest.raises(StorageFull):
            await started(manager, "/bin/true")
    assert not locked(locks, FIRST)

    ended, out = await run(manager, "id -u")
    assert (ended.status, out.strip()) == (JobStatus.EXITED, str(FIRST))
    assert list(locks.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_without_isolation_a_root_server_runs_them_as_nobody(
    make_manager: Any, locks: Path
) -> None:
    """No view to name a new uid in: nobody, as before, and no lock taken."""
    manager: JobManager = make_manager(isolate=False, allow_unisolated_root=True)
    ended, out = await run(manager, "id -un")
    assert (ended.run_as, ended.uid, out.strip()) == ("nobody", 65534, "nobody")
    assert not locks.exists() or list(locks.iterdir()) == []


# A crash of the server

DRIVER = """
import json, os, signal, sys
from pathlib import Path
from twisted.internet import defer, task
from jobworker.jobs.service import JobManager, Settings
from jobworker.jobs.spec import parse_job_spec

async def main(reactor):
    data, locks = Path(sys.argv[1]), Path(sys.argv[2])
    manager = JobManager(reactor, data, Settings(uid_locks=locks, cgroups=False))
    manager.open()
    script = "sleep 1000 & sleep 1000"
    spec = parse_job_spec({"command": "/bin/sh", "args": ["-c", script]})
    job = await manager.start(spec, "alice")
    print(json.dumps({"uid": job.uid, "pid": job.pid}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
"""


@pytest.fixture
def orphan(tmp_path: Path, locks: Path) -> Iterator[dict[str, int]]:
    """A job whose server was killed: its uid and its init's pid."""
    driver = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path / "data"), str(locks)],
        capture_output=True,
        timeout=60,
    )
    assert driver.returncode == -signal.SIGKILL, driver.stderr.decode()
    found: dict[str, int] = json.loads(driver.stdout)
    yield found
    with contextlib.suppress(ProcessLookupError):
        os.kill(found["pid"], signal.SIGKILL)


def test_after_a_server_crash_the_uid_stays_held_until_the_job_is_gone(
    orphan: dict[str, int], locks: Path
) -> None:
    """The server's copy of the lock died with it; the job's init still
    holds its own, so no server gives the uid to another job; killing the
    init (and with it the job) frees it."""
    uid, pid = orphan["uid"], orphan["pid"]
    if not Path(f"/proc/{pid}").exists():
        skip_or_fail("the orphaned job is already gone")
    assert uid in UidRange()
    assert locked(locks, uid)
    with open(f"/proc/{pid}/status") as status:
        assert "Name:\tjobworker-exec" in status.read()  # the init, still root
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not locked(locks, uid), f"uid {uid} free once its job died")
