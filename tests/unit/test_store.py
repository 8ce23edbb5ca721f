"""The store: records read back exactly as saved, in the store's own rows."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings

from jobworker.jobs import schema
from jobworker.jobs.record import Job, Usage
from jobworker.jobs.rows import COLUMNS, job_from_row, job_to_row
from jobworker.jobs.spec import JobSpec, Limits
from jobworker.jobs.store import JobStore
from jobworker.wire import JobStatus
from tests.job_strategies import jobs


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobStore]:
    opened = JobStore(tmp_path_factory.mktemp("store") / "jobworker.sqlite3")
    yield opened
    opened.close()


def job(**changes: object) -> Job:
    fields: dict[str, object] = {
        "id": "0" * 32,
        "owner": "alice",
        "spec": JobSpec(command="/bin/true"),
        "status": JobStatus.RUNNING,
        "created_at": "2026-11-22T10:00:00.123Z",
        **changes,
    }
    return Job(**fields)  # type: ignore[arg-type]


@given(jobs)
@settings(max_examples=300)
def test_rows_round_trip(record: Job) -> None:
    """A row rebuilds the record it was made of, field for field."""
    assert job_from_row(job_to_row(record)) == record


@given(jobs)
@settings(max_examples=200, deadline=None)
def test_saved_records_read_back_identical(store: JobStore, record: Job) -> None:
    """Through SQLite and back, every kind of record is the one saved."""
    store.save(record)
    assert store.get(record.id) == record
    listed = [j for j in store.list(owner=record.owner) if j.id == record.id]
    assert listed == [record]


def test_whole_numbers_read_back_as_floats(tmp_path: Path) -> None:
    """cpu and timeout are floats however they were given, as the API shows."""
    store = JobStore(tmp_path / "db")
    spec = JobSpec(command="/bin/true", timeout=5, limits=Limits(cpu=2))
    store.save(job(spec=spec, usage=Usage(cpu_seconds=3)))
    back = store.get("0" * 32)
    assert back is not None
    assert isinstance(back.spec.timeout, float)
    assert isinstance(back.spec.limits.cpu, float)
    assert isinstance(back.usage and back.usage.cpu_seconds, float)
    store.close()


def test_save_updates_every_field_and_keeps_the_order(tmp_path: Path) -> None:
    """A second save of a job changes its row in place: every field, same rank."""
    store = JobStore(tmp_path / "db")
    first, second = job(id="1" * 32), job(id="2" * 32)
    store.save(first)
    store.save(second)
    ended = first.evolve(
        status=JobStatus.EXITED,
        exit_code=3,
        ended_at="2026-11-22T10:00:01.000Z",
        usage=Usage(cpu_seconds=0.5, memory_peak=10),
        pid=42,
        pid_start_time=7,
    )
    store.save(ended)
    assert store.list() == [ended, second]
    assert store.list(statuses={JobStatus.RUNNING}) == [second]
    assert [j.id for j in store.unfinished()] == [second.id]
    store.delete(second.id)
    assert store.ids() == {ended.id}
    store.close()


def test_table_columns_are_the_codecs(tmp_path: Path) -> None:
    """The newest schema's table has exactly the columns rows.py maps."""
    JobStore(tmp_path / "db").close()
    db = sqlite3.connect(tmp_path / "db")
    names = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
    assert names == list(COLUMNS)
    assert db.execute("PRAGMA user_version").fetchone() == (schema.VERSION,)
    db.close()


def test_database_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    """The file is 0600, and the log is written ahead."""
    store = JobStore(tmp_path / "db")
    store.save(job())
    assert stat.S_IMODE((tmp_path / "db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "db-wal").stat().st_mode) == 0o600
    db = sqlite3.connect(tmp_path / "db")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
    store.close()
