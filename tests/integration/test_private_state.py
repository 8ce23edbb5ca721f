"""
The server's state is private: jobs, running as other users on the same
host, can read no job's record or output.

The data directory and the directories in it are 0700, the files 0600; an
older, looser one is tightened at start-up, one owned by another user or
writable by others is refused, and nothing under it is opened through a
symlink. The attack: a job running as nobody, with the data directory in a
directory every user may enter, tries to read the database, its WAL and
another job's output, and to list the jobs.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import implementer

from jobworker.jobs.datadir import UnsafeDataDirectory
from jobworker.jobs.service import JobManager, Settings
from jobworker.jobs.spec import parse_job_spec
from jobworker.linux.build import build
from jobworker.pki import write_dev_pki
from jobworker.wire import JobStatus, Stream
from tests.host_dirs import visible_tempdir

reactor: Any = global_reactor
ROOT = Path(__file__).parents[2]
TWISTD = Path(sys.executable).parent / "twistd"
DATABASE = "jobworker.sqlite3"
NOBODY = 65534

# Run as nobody inside a job: what each attempt on the server's state gave.
SNOOP = """
import json, os, sys
data, other = sys.argv[1], sys.argv[2]
attempts = {
    "database": lambda: open(f"{data}/jobworker.sqlite3", "rb").read(),
    "wal": lambda: open(f"{data}/jobworker.sqlite3-wal", "rb").read(),
    "output": lambda: open(f"{data}/jobs/{other}/stdout", "rb").read(),
    "jobs": lambda: os.listdir(f"{data}/jobs"),
    "data": lambda: os.listdir(data),
}
results = {}
for name, attempt in attempts.items():
    try:
        attempt()
        results[name] = "read"
    except OSError as e:
        results[name] = e.strerror
results["parent"] = sorted(os.listdir(os.path.dirname(data)))
print(json.dumps(results))
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def make_manager(managers: list[JobManager]) -> Any:
    """Managers on a data directory of the test's choosing, shut down after."""

    def make(data: Path, isolate: bool = False) -> JobManager:
        manager = JobManager(
            reactor,
            data,
            Settings(isolate=isolate, allow_unisolated_root=True, default_grace=2),
        )
        manager.open()
        managers.append(manager)
        return manager

    return make


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """What is logged while the test runs."""
    lines: list[str] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


async def run(manager: JobManager, script: str, **fields: Any) -> str:
    """Run a shell script as a job to its end; its stdout."""
    spec = parse_job_spec({"command": "/bin/sh", "args": ["-c", script], **fields})
    job = await manager.start(spec, "alice")
    ended = await manager.wait(job.id)
    assert (ended.status, ended.exit_code) == (JobStatus.EXITED, 0), ended.error
    return (await manager.read_output(job.id, Stream.STDOUT)).data.decode()


# What the server makes


@pytest_twisted.ensureDeferred
async def test_new_state_is_private(make_manager: Any, tmp_path: Path) -> None:
    """A new data directory and what is in it are the server's alone: the
    directories 0700, the database with its -wal and -shm and the output 0600."""
    data = tmp_path / "new" / "data"
    manager = make_manager(data)
    await run(manager, "echo out; echo err >&2")
    (job,) = manager.list()
    files = [data / DATABASE, data / f"{DATABASE}-wal", data / f"{DATABASE}-shm"]
    outputs = [data / "jobs" / job.id / name for name in ("stdout", "stderr")]
    outputs.append(data / "jobs" / job.id / "combined.index")
    directories = [data, data / "jobs", data / "jobs" / job.id]
    assert [mode(p) for p in directories] == [0o700] * 3
    assert [mode(p) for p in files + outputs] == [0o600] * 6


# What an older version left


def old_data_directory(data: Path) -> Path:
    """A data directory as an older version left it: 0755, a 0644 database,
    a job's directory and output readable by all. Its job's directory."""
    old_job = data / "jobs" / ("0" * 32)
    old_job.mkdir(parents=True)
    sqlite3.connect(data / DATABASE).close()
    (old_job / "stdout").write_bytes(b"old output")
    for path, loose in [
        (data, 0o755),
        (data / "jobs", 0o755),
        (old_job, 0o755),
        (data / DATABASE, 0o644),
        (old_job / "stdout", 0o640),
    ]:
        path.chmod(loose)
    return old_job


def test_old_loose_state_is_tightened(
    make_manager: Any, tmp_path: Path, warnings: list[str]
) -> None:
    """An older version's data directory is made private at start-up, with
    what is in it, saying so."""
    data = tmp_path / "data"
    old_job = old_data_directory(data)
    make_manager(data)
    assert [mode(p) for p in (data, data / "jobs", old_job)] == [0o700] * 3
    assert [mode(p) for p in (data / DATABASE, old_job / "stdout")] == [0o600] * 2
    assert f"{data} was mode 0755, open to other users: made 0700" in warnings
    assert (
        f"{data / 'jobs'}: 3 more directories and files were open to other users:"
        " made private"
    ) in warnings


def test_symlink_in_old_state_is_refused(make_manager: Any, tmp_path: Path) -> None:
    """A symlink where an old job's output should be is refused, not followed:
    what it points to keeps its mode."""
    data = tmp_path / "data"
    old_job = old_data_directory(data)
    outside = tmp_path / "outside"
    outside.write_text("not ours to change")
    outside.chmod(0o644)
    (old_job / "stdout").unlink()
    (old_job / "stdout").symlink_to(outside)
    with pytest.raises(UnsafeDataDirectory, match="Too many levels of symbolic"):
        make_manager(data)
    assert mode(outside) == 0o644


def test_loose_directory_that_is_no_data_directory_is_left_alone(
    make_manager: Any, tmp_path: Path
) -> None:
    """A 0755 directory holding other things and no database (/var/lib, given
    by mistake) is refused, and nothing in it changes."""
    data = tmp_path / "lib"
    (data / "other").mkdir(parents=True)
    data.chmod(0o755)
    (data / "other").chmod(0o755)
    with pytest.raises(UnsafeDataDirectory, match="holds other files and no"):
        make_manager(data)
    assert (mode(data), mode(data / "other"), os.listdir(data)) == (
        0o755,
        0o755,
        ["other"],
    )


def test_data_directory_under_a_directory_others_may_write_is_refused(
    make_manager: Any, tmp_path: Path
) -> None:
    """Above the data directory, a directory writable by others (not sticky,
    as /tmp is) is refused: another user could swap the data directory."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafeDataDirectory, match="is writable by others"):
        make_manager(shared / "deeper" / "data")
    assert os.listdir(shared) == []  # nothing made there


def test_data_directory_under_a_sticky_directory_is_used(
    make_manager: Any, tmp_path: Path
) -> None:
    """A sticky directory writable by all (as /tmp) may hold the data
    directory: no one else may move it there."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    make_manager(shared / "data")
    assert mode(shared / "data") == 0o700


@pytest.mark.parametrize("loose", [0o777, 0o770, 0o1777])
def test_data_directory_writable_by_others_is_refused(
    make_manager: Any, tmp_path: Path, loose: int
) -> None:
    """A data directory others may write to is refused, and left as it is."""
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(loose)
    with pytest.raises(UnsafeDataDirectory, match="is writable by others"):
        make_manager(data)
    assert (mode(data), os.listdir(data)) == (loose, [])


def test_database_through_a_symlink_is_refused(
    make_manager: Any, tmp_path: Path
) -> None:
    """A database that is a symlink is refused; what it points to is untouched."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere.sqlite3"
    (data / DATABASE).symlink_to(elsewhere)
    with pytest.raises(UnsafeDataDirectory, match="symbolic links"):
        make_manager(data)
    assert not elsewhere.exists()


@pytest_twisted.ensureDeferred
async def test_output_is_not_read_through_a_symlink(
    make_manager: Any, tmp_path: Path
) -> None:
    """An ended job's output file replaced by a symlink is not followed."""
    manager = make_manager(tmp_path / "data")
    await run(manager, "echo out")
    (job,) = manager.list()
    secret = tmp_path / "secret"
    secret.write_text("secret")
    stdout = manager.data_dir / "jobs" / job.id / "stdout"
    stdout.unlink()
    stdout.symlink_to(secret)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        await manager.read_output(job.id, Stream.STDOUT)


# Owned by another user, and the attack: these need root


@pytest.mark.root
def test_data_directory_of_another_user_is_refused(
    make_manager: Any, tmp_path: Path
) -> None:
    """A data directory owned by another user is refused, and left as it is."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, NOBODY, NOBODY)
    with pytest.raises(UnsafeDataDirectory, match="is owned by uid 65534"):
        make_manager(data)
    assert (data.stat().st_uid, os.listdir(data)) == (NOBODY, [])


@pytest.mark.root
def test_data_directory_symlink_of_another_user_is_refused(
    make_manager: Any, tmp_path: Path
) -> None:
    """A data directory path that is a symlink another user made (a job, in
    /tmp, waiting for it) is refused: what it points to is left as it is."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "conf").write_text("x")
    target.chmod(0o755)
    link = tmp_path / "data"
    link.symlink_to(target)
    os.chown(link, NOBODY, NOBODY, follow_symlinks=False)
    with pytest.raises(UnsafeDataDirectory, match="is a symlink made by uid 65534"):
        make_manager(link)
    assert (mode(target), os.listdir(target)) == (0o755, ["conf"])


@pytest.fixture
def sticky(tmp_path: Path) -> Path:
    """A directory every user may write in, sticky: as /tmp."""
    shared = tmp_path / "sticky"
    shared.mkdir()
    shared.chmod(0o1777)
    return shared


@pytest.mark.root
def test_symlink_of_another_user_on_the_way_is_refused(
    make_manager: Any, sticky: Path, tmp_path: Path
) -> None:
    """A symlink another user made, part-way along the data directory's path
    (a job waiting in /tmp, to swap it later for a path of its own), is
    refused, and nothing is made through it."""
    target = tmp_path / "target"
    target.mkdir()
    link = sticky / "link"
    link.symlink_to(target)
    os.chown(link, NOBODY, NOBODY, follow_symlinks=False)
    with pytest.raises(UnsafeDataDirectory, match=f"{link}, on the way to"):
        make_manager(link / "data")
    assert os.listdir(target) == []


@pytest.mark.root
def test_symlink_of_another_user_in_a_chain_is_refused(
    make_manager: Any, sticky: Path, tmp_path: Path
) -> None:
    """Our own symlink pointing at another user's is refused all the same."""
    target = tmp_path / "target"
    target.mkdir()
    theirs = sticky / "theirs"
    theirs.symlink_to(target)
    os.chown(theirs, NOBODY, NOBODY, follow_symlinks=False)
    ours = tmp_path / "ours"
    ours.symlink_to(theirs)
    with pytest.raises(UnsafeDataDirectory, match=f"{theirs}, on the way to"):
        make_manager(ours)
    assert (mode(target), os.listdir(target)) == (0o755, [])


@pytest.mark.root
def test_directory_made_on_the_way_vouches_for_nothing_after_it(
    make_manager: Any, tmp_path: Path
) -> None:
    """A directory the walk makes, followed by '..' to another user's
    directory, does not pass that one off as made by us."""
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    link = tmp_path / "link"
    link.symlink_to(f"{tmp_path}/new/../theirs")
    with pytest.raises(UnsafeDataDirectory, match="is owned by uid 65534"):
        make_manager(link)


@pytest_twisted.ensureDeferred
async def test_server_uses_the_real_path(make_manager: Any, tmp_path: Path) -> None:
    """Through our own symlink, the manager keeps the real path: a later
    change of the symlink does not move where job output goes."""
    real = tmp_path / "real"
    link = tmp_path / "link"
    link.symlink_to(real)
    manager = make_manager(link / "data")
    assert manager.data_dir == real / "data"
    link.unlink()
    link.symlink_to(tmp_path / "elsewhere")
    await run(manager, "echo out")
    (job,) = manager.list()
    assert (real / "data" / "jobs" / job.id / "stdout").read_bytes() == b"out\n"


@pytest.mark.root
def test_twistd_refuses_another_users_data_directory(tmp_path: Path) -> None:
    """twistd on another user's data directory: one line on stderr, exit 1."""
    certs = tmp_path / "pki"
    write_dev_pki(certs)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, NOBODY, NOBODY)
    result = subprocess.run(
        [str(TWISTD), "--pidfile=", "-n", "jobworker",
         "--cert", str(certs / "server.pem"), "--key", str(certs / "server.key"),
         "--ca", str(certs / "ca.pem"), "--data-dir", str(data), "--port", "0"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 1
    assert lines == [
        f"jobworker: data directory {data} is owned by uid {NOBODY}, not by this"
        f" server's user (uid 0): refusing to use it"
    ]


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A directory every user may enter: only the data directory's own mode
    then keeps a job out of it."""
    parent = visible_tempdir("jobworker-test-")
    yield parent
    shutil.rmtree(parent)


@pytest.mark.root
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "plain"])
@pytest_twisted.ensureDeferred
async def test_job_cannot_read_the_servers_state(
    make_manager: Any, open_parent: Path, isolate: bool
) -> None:
    """A job cannot read the database, its WAL, another job's output, or list
    the jobs or the data directory, though it can list the data directory's
    parent."""
    build()
    data = open_parent / "data"
    manager = make_manager(data, isolate=isolate)
    secret = parse_job_spec(
        {"command": "/bin/echo", "args": ["output"], "env": {"TOKEN": "secret"}}
    )
    other = await manager.start(secret, "charlie", run_as="nobody")
    await manager.wait(other.id)
    assert (data / f"{DATABASE}-wal").stat().st_size > 0
    snoop = parse_job_spec(
        {"command": "/usr/bin/python3", "args": ["-c", SNOOP, str(data), other.id]}
    )
    job = await manager.start(snoop, "mallory", run_as="nobody")
    ended = await manager.wait(job.id)
    out = await manager.read_output(job.id, Stream.STDOUT)
    assert (ended.status, ended.exit_code) == (JobStatus.EXITED, 0)
    denied = "Permission denied"
    assert json.loads(out.data) == {
        "database": denied,
        "wal": denied,
        "output": denied,
        "jobs": denied,
        "data": denied,
        "parent": ["data"],
    }
