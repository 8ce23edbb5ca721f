"""
The schema's versions: each migration opens what the version before wrote.

Version 0 is the first release's database. Its schema and its encoding of a
record (the API's JSON of the job, plus the request and the process ids)
are copied here as they were, since the code no longer writes them.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobworker.jobs import schema
from jobworker.jobs.record import Job, Usage
from jobworker.jobs.rows import COLUMNS
from jobworker.jobs.schema import SchemaTooNew
from jobworker.jobs.spec import IOLimits, Isolation, JobSpec, Limits
from jobworker.jobs.store import JobStore
from jobworker.wire import JobStatus
from tests.job_strategies import jobs_without_ids

# The first release's SCHEMA, verbatim.
V0_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
"""

# Two rows as the first release wrote them, byte for byte, and their jobs.
V0_ROWS = [
    '{"id":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","owner":"alice","command":"/bin/echo",'
    '"args":["hi","there"],"env":{"TOKEN":"s3cret"},"cwd":"/tmp","timeout":2.5,'
    '"status":"exited","exit_code":0,"signal":null,"oom_killed":false,"error":null,'
    '"created_at":"2026-11-22T10:00:00.123Z","started_at":"2026-11-22T10:00:00.125Z",'
    '"ended_at":"2026-11-22T10:00:01.000Z","limits":{"cpu":0.5,"memory":268435456,'
    '"pids":64,"io":{"read_bps":1048576,"write_bps":null,"read_iops":null,'
    '"write_iops":100}},"isolation":{"network":"host"},"run_as":"nobody","usage":'
    '{"cpu_seconds":0.012,"memory_peak":4096,"io_read_bytes":0,"io_write_bytes":8192}'
    ',"spec":{"command":"/bin/echo","args":["hi","there"],"env":{"TOKEN":"s3cret"},'
    '"cwd":"/tmp","timeout":2.5,"limits":{"cpu":0.5,"memory":268435456,"pids":64,'
    '"io":{"read_bps":1048576,"write_bps":null,"read_iops":null,"write_iops":100}},'
    '"isolation":{"network":"host"}},"pid":1234,"pid_start_time":5678}',
    '{"id":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","owner":"bob","command":"/bin/sleep",'
    '"args":["1000"],"env":{},"cwd":null,"timeout":null,"status":"lost","exit_code"'
    ':null,"signal":null,"oom_killed":false,"error":"the server stopped while the '
    'job was running","created_at":"2026-11-22T10:00:02.000Z","started_at":null,'
    '"ended_at":"2026-11-22T10:05:00.000Z","limits":{"cpu":null,"memory":null,'
    '"pids":null,"io":{"read_bps":null,"write_bps":null,"read_iops":null,'
    '"write_iops":null}},"isolation":{"network":"none"},"run_as":null,"usage":null,'
    '"spec":{"command":"/bin/sleep","args":["1000"],"env":{},"cwd":null,"timeout":'
    'null,"limits":{"cpu":null,"memory":null,"pids":null,"io":{"read_bps":null,'
    '"write_bps":null,"read_iops":null,"write_iops":null}},"isolation":{"network":'
    '"none"}},"pid":99,"pid_start_time":7}',
]
V0_JOBS = [
    Job(
        id="a" * 32,
        owner="alice",
        spec=JobSpec(
            command="/bin/echo",
            args=("hi", "there"),
            env={"TOKEN": "s3cret"},
            cwd="/tmp",
            timeout=2.5,
            limits=Limits(
                cpu=0.5,
                memory=1 << 28,
                pids=64,
                io=IOLimits(read_bps=1 << 20, write_iops=100),
            ),
            isolation=Isolation("host"),
        ),
        status=JobStatus.EXITED,
        created_at="2026-11-22T10:00:00.123Z",
        run_as="nobody",
        started_at="2026-11-22T10:00:00.125Z",
        ended_at="2026-11-22T10:00:01.000Z",
        exit_code=0,
        usage=Usage(0.012, 4096, 0, 8192),
        pid=1234,
        pid_start_time=5678,
    ),
    Job(
        id="b" * 32,
        owner="bob",
        spec=JobSpec(command="/bin/sleep", args=("1000",)),
        status=JobStatus.LOST,
        created_at="2026-11-22T10:00:02.000Z",
        ended_at="2026-11-22T10:05:00.000Z",
        error="the server stopped while the job was running",
        pid=99,
        pid_start_time=7,
    ),
]


def v0_record(job: Job) -> dict[str, Any]:
    """The first release's ``job_to_row``, with its ``to_json`` spelled out."""
    spec = job.spec
    limits = {
        "cpu": spec.limits.cpu,
        "memory": spec.limits.memory,
        "pids": spec.limits.pids,
        "io": {
            "read_bps": spec.limits.io.read_bps,
            "write_bps": spec.limits.io.write_bps,
            "read_iops": spec.limits.io.read_iops,
            "write_iops": spec.limits.io.write_iops,
        },
    }
    isolation = {"network": spec.isolation.network}
    usage = job.usage
    return {
        "id": job.id,
        "owner": job.owner,
        "command": spec.command,
        "args": list(spec.args),
        "env": dict(spec.env),
        "cwd": spec.cwd,
        "timeout": spec.timeout,
        "status": job.status.value,
        "exit_code": job.exit_code,
        "signal": job.signal,
        "oom_killed": job.oom_killed,
        "error": job.error,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "limits": limits,
        "isolation": isolation,
        "run_as": job.run_as,
        "usage": None
        if usage is None
        else {
            "cpu_seconds": usage.cpu_seconds,
            "memory_peak": usage.memory_peak,
            "io_read_bytes": usage.io_read_bytes,
            "io_write_bytes": usage.io_write_bytes,
        },
        "spec": {
            "command": spec.command,
            "args": list(spec.args),
            "env": dict(spec.env),
            "cwd": spec.cwd,
            "timeout": spec.timeout,
            "limits": limits,
            "isolation": isolation,
        },
        "pid": job.pid,
        "pid_start_time": job.pid_start_time,
    }


def write_v0(path: Path, records: Iterable[str]) -> None:
    """A database as the first release left it: its schema, its saves."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V0_SCHEMA)
    for record in records:
        fields = json.loads(record)
        db.execute(
            "INSERT INTO jobs (id, owner, status, created_at, record)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " status = excluded.status, record = excluded.record",
            (
                fields["id"],
                fields["owner"],
                fields["status"],
                fields["created_at"],
                record,
            ),
        )
    db.close()


def encode_v0(job: Job) -> str:
    return json.dumps(v0_record(job), separators=(",", ":"))


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def test_migrations_are_numbered_by_position() -> None:
    assert schema.VERSION == len(schema.MIGRATIONS) == 2


def test_the_copied_encoding_is_the_first_releases() -> None:
    """This module's copy of the old encoder writes the old rows exactly."""
    assert [encode_v0(job) for job in V0_JOBS] == V0_ROWS


def test_migration_1_reads_the_first_releases_rows(tmp_path: Path) -> None:
    """Rows the first release wrote, byte for byte, read back as its jobs."""
    path = tmp_path / "jobworker.sqlite3"
    write_v0(path, reversed(V0_ROWS))
    store = JobStore(path)
    assert store.list() == list(reversed(V0_JOBS))
    assert store.get("a" * 32) == V0_JOBS[0]
    assert [j.id for j in store.list(owner="bob")] == ["b" * 32]
    store.close()
    assert user_version(path) == schema.VERSION


def test_migration_1_keeps_the_order_of_creation(tmp_path: Path) -> None:
    """Jobs list in the order the first release created them, not by id."""
    path = tmp_path / "db"
    ids = ["c" * 32, "a" * 32, "b" * 32]
    write_v0(path, [encode_v0(V0_JOBS[1].evolve(id=i)) for i in ids])
    store = JobStore(path)
    assert [j.id for j in store.list()] == ids
    store.close()


@given(st.lists(jobs_without_ids, max_size=4, unique_by=lambda j: j.id))
@settings(max_examples=60, deadline=None)
def test_migration_1_reads_back_any_first_release_record(records: list[Job]) -> None:
    """Whatever the first release stored reads back as the same records."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "db"
        write_v0(path, map(encode_v0, records))
        store = JobStore(path)
        try:
            assert store.list() == records
        finally:
            store.close()


def test_migration_1_gives_absent_keys_the_first_releases_defaults(
    tmp_path: Path,
) -> None:
    """Keys an older record lacks read back as the first release read them."""
    record = {
        "id": "d" * 32,
        "owner": "alice",
        "status": "exited",
        "created_at": "2026-11-22T10:00:00.123Z",
        "oom_killed": 1,
        "usage": {"cpu_seconds": 1},
        "spec": {"command": "/bin/true", "timeout": 3, "limits": {"cpu": 1}},
    }
    path = tmp_path / "db"
    write_v0(path, [json.dumps(record)])
    store = JobStore(path)
    [back] = store.list()
    store.close()
    assert back == Job(
        id="d" * 32,
        owner="alice",
        spec=JobSpec(command="/bin/true", timeout=3.0, limits=Limits(cpu=1.0)),
        status=JobStatus.EXITED,
        created_at="2026-11-22T10:00:00.123Z",
        oom_killed=True,
        usage=Usage(cpu_seconds=1.0),
    )
    assert isinstance(back.spec.timeout, float)


# A version 1 row, as version 1 wrote it (``job_to_row`` of its day): the
# first release's first job, as migration 1 left it.
V1_ROW = {
    "id": "a" * 32,
    "owner": "alice",
    "status": "exited",
    "created_at": "2026-11-22T10:00:00.123Z",
    "run_as": "nobody",
    "started_at": "2026-11-22T10:00:00.125Z",
    "ended_at": "2026-11-22T10:00:01.000Z",
    "exit_code": 0,
    "signal": None,
    "oom_killed": 0,
    "error": None,
    "pid": 1234,
    "pid_start_time": 5678,
    "usage_cpu_seconds": 0.012,
    "usage_memory_peak": 4096,
    "usage_io_read_bytes": 0,
    "usage_io_write_bytes": 8192,
    "spec": '{"command":"/bin/echo","args":["hi","there"],"env":{"TOKEN":"s3cret"},'
    '"cwd":"/tmp","timeout":2.5,"cpu":0.5,"memory":268435456,"pids":64,'
    '"read_bps":1048576,"write_bps":null,"read_iops":null,"write_iops":100,'
    '"network":"host"}',
}


def write_v1(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """A database at version 1, holding ``rows`` in its columns."""
    db = sqlite3.connect(path, isolation_level=None)
    schema.upgrade(db, 1)
    for row in rows:
        names = ", ".join(row)
        marks = ", ".join(f":{name}" for name in row)
        db.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", row)
    db.close()


def test_migration_2_keeps_the_rows_of_version_1(tmp_path: Path) -> None:
    """A version 1 database gains uid and gid: its rows read back as they
    were, with no ids (those records never said), in their order."""
    path = tmp_path / "db"
    second = {**V1_ROW, "id": "b" * 32, "owner": "bob", "run_as": None}
    write_v1(path, [V1_ROW, second])
    assert user_version(path) == 1
    store = JobStore(path)
    first = V0_JOBS[0]
    assert store.list() == [first, first.evolve(id="b" * 32, owner="bob", run_as=None)]
    assert (first.uid, first.gid) == (None, None)
    store.save(first.evolve(uid=1879048192, gid=1879048192))
    store.close()
    assert user_version(path) == 2
    again = JobStore(path)
    assert (again.get("a" * 32) or first).uid == 1879048192
    assert [j.id for j in again.list()] == ["a" * 32, "b" * 32]
    again.close()


def test_migration_1_makes_an_empty_file_a_new_database(tmp_path: Path) -> None:
    """A new (empty) file becomes an empty database at the newest version."""
    path = tmp_path / "db"
    store = JobStore(path)
    assert store.list() == []
    store.close()
    db = sqlite3.connect(path)
    indexes = {row[1] for row in db.execute("PRAGMA index_list(jobs)")}
    names = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
    db.close()
    assert {"jobs_owner", "jobs_status"} <= indexes
    assert names == list(COLUMNS)
    assert user_version(path) == schema.VERSION


def test_opening_again_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "db"
    write_v0(path, V0_ROWS)
    JobStore(path).close()
    store = JobStore(path)
    assert store.list() == V0_JOBS
    store.close()
    assert user_version(path) == schema.VERSION


def test_a_newer_database_is_refused_untouched(tmp_path: Path) -> None:
    """A database from a newer jobworker: one clear line, and no change."""
    path = tmp_path / "db"
    JobStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {schema.VERSION + 1}")
    db.execute("ALTER TABLE jobs ADD COLUMN from_the_future TEXT")
    db.commit()
    db.close()
    with pytest.raises(SchemaTooNew) as caught:
        JobStore(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    assert f"version {schema.VERSION + 1}" in message
    assert user_version(path) == schema.VERSION + 1


def test_a_failed_migration_leaves_the_database_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migrations run in one transaction: one failing undoes them all."""

    def broken(db: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    path = tmp_path / "db"
    write_v0(path, V0_ROWS)
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, broken))
    db = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError):
        schema.upgrade(db, len(schema.MIGRATIONS))
    assert db.execute("PRAGMA user_version").fetchone() == (0,)
    assert [r[0] for r in db.execute("SELECT record FROM jobs")] == V0_ROWS
    db.close()
