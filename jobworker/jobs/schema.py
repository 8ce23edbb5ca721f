"""
The job database's schema, numbered, and the steps from each version to the
next.

The version is SQLite's ``PRAGMA user_version``. Migration N takes a
database from version N-1 to N, and is ``MIGRATIONS[N - 1]``: a function of
the connection. At open, the migrations a database lacks run in one
transaction with the new version number, so that a database is at one
version or the next, never between. A database at a version newer than
this code knows is refused (``SchemaTooNew``), its tables untouched: an
older server must not write records it cannot read whole.

Version 0 is an empty file, or a database of the first release: one
``record`` column holding the API's JSON of each job. Migration 1 splits
those records into columns of the store's own (``jobworker.jobs.rows``).
Migration 2 adds the ids a job runs as (``uid``, ``gid``): NULL for the
jobs before, whose records never said.

To add migration N+1, say a column:

1. append a step to ``MIGRATIONS``; never edit one that has shipped::

       sql("ALTER TABLE jobs ADD COLUMN sandbox TEXT"),  # N+1

   (a function ``(db) -> None`` for what SQL alone cannot do);
2. map the column in ``jobworker.jobs.rows``: add it to ``COLUMNS``,
   ``job_to_row`` and ``job_from_row`` (a row from before holds NULL, or the
   column's ``DEFAULT``); a new key of the ``spec`` document is read with
   ``.get`` and its default, or filled in for old rows by a function step;
3. add a test that writes a database at version N (``upgrade(db, N)``, then
   rows as version N wrote them), opens it with ``JobStore`` and checks
   that its records read back.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

Migration = Callable[[sqlite3.Connection], None]


class SchemaTooNew(Exception):
    """The database was written by a newer jobworker than this one."""


def sql(*statements: str) -> Migration:
    """A migration of SQL statements, run in order."""

    def apply(db: sqlite3.Connection) -> None:
        for statement in statements:
            db.execute(statement)

    return apply


# Version 0: what the first release made (``CREATE ... IF NOT EXISTS``, so
# that an empty file becomes an empty version 0 database).
V0_TABLES = (
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner)",
    "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status)",
)

V1_JOBS = """CREATE TABLE jobs_v1 (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    run_as TEXT,
    started_at TEXT,
    ended_at TEXT,
    exit_code INTEGER,
    signal INTEGER,
    oom_killed INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    pid INTEGER,
    pid_start_time INTEGER,
    usage_cpu_seconds REAL,
    usage_memory_peak INTEGER,
    usage_io_read_bytes INTEGER,
    usage_io_write_bytes INTEGER,
    spec TEXT NOT NULL
)"""


def _records_in_columns(db: sqlite3.Connection) -> None:
    """1: each JSON record into columns; rowids kept, which order the jobs."""
    sql(*V0_TABLES)(db)
    db.execute(V1_JOBS)
    for rowid, record in db.execute("SELECT rowid, record FROM jobs"):
        row = _v1_row(json.loads(record))
        names = ", ".join(row)
        marks = ", ".join(f":{name}" for name in row)
        db.execute(
            f"INSERT INTO jobs_v1 (rowid, {names}) VALUES (:rowid, {marks})",
            {"rowid": rowid, **row},
        )
    db.execute("DROP TABLE jobs")
    db.execute("ALTER TABLE jobs_v1 RENAME TO jobs")
    db.execute("CREATE INDEX jobs_owner ON jobs (owner)")
    db.execute("CREATE INDEX jobs_status ON jobs (status)")


def _v1_row(record: dict[str, Any]) -> dict[str, Any]:
    """
    A version 0 record's columns at version 1: what the first release read
    back from it (absent keys have its defaults; its request parser made
    ``timeout`` and ``cpu`` floats), written as version 1 writes it.
    """
    spec = record["spec"]
    limits = spec.get("limits", {})
    io = limits.get("io", {})
    document = {
        "command": spec["command"],
        "args": spec.get("args", []),
        "env": spec.get("env", {}),
        "cwd": spec.get("cwd"),
        "timeout": _float(spec.get("timeout")),
        "cpu": _float(limits.get("cpu")),
        "memory": limits.get("memory"),
        "pids": limits.get("pids"),
        "read_bps": io.get("read_bps"),
        "write_bps": io.get("write_bps"),
        "read_iops": io.get("read_iops"),
        "write_iops": io.get("write_iops"),
        "network": spec.get("isolation", {}).get("network", "none"),
    }
    return {
        "id": record["id"],
        "owner": record["owner"],
        "status": record["status"],
        "created_at": record["created_at"],
        "run_as": record.get("run_as"),
        "started_at": record.get("started_at"),
        "ended_at": record.get("ended_at"),
        "exit_code": record.get("exit_code"),
        "signal": record.get("signal"),
        "oom_killed": int(bool(record.get("oom_killed"))),
        "error": record.get("error"),
        "pid": record.get("pid"),
        "pid_start_time": record.get("pid_start_time"),
        **_v1_usage(record.get("usage")),
        "spec": json.dumps(document, separators=(",", ":")),
    }


def _v1_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    if usage is None:
        return dict.fromkeys(_V1_USAGE)
    return {
        "usage_cpu_seconds": usage.get("cpu_seconds", 0.0),
        "usage_memory_peak": usage.get("memory_peak"),
        "usage_io_read_bytes": usage.get("io_read_bytes", 0),
        "usage_io_write_bytes": usage.get("io_write_bytes", 0),
    }


_V1_USAGE = (
    "usage_cpu_seconds",
    "usage_memory_peak",
    "usage_io_read_bytes",
    "usage_io_write_bytes",
)


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


MIGRATIONS: tuple[Migration, ...] = (
    _records_in_columns,  # 1
    sql(
        "ALTER TABLE jobs ADD COLUMN uid INTEGER",
        "ALTER TABLE jobs ADD COLUMN gid INTEGER",
    ),  # 2
)
VERSION = len(MIGRATIONS)


def version(db: sqlite3.Connection) -> int:
    number: int = db.execute("PRAGMA user_version").fetchone()[0]
    return number


def upgrade(
    db: sqlite3.Connection,
    target: int = VERSION,
    *,
    name: str = "the job database",
) -> None:
    """
    Bring ``db`` (``name`` in errors) to version ``target`` in one
    transaction, or leave it as it was and raise. The connection must be in
    autocommit mode (``isolation_level=None``).
    """
    # IMMEDIATE: a second server opening the same file waits, then finds
    # the work done.
    db.execute("BEGIN IMMEDIATE")
    try:
        found = version(db)
        if found > VERSION:
            raise SchemaTooNew(
                f"{name} is at schema version {found}, but"
                f" this jobworker knows versions up to {VERSION}: run a newer"
                " jobworker"
            )
        for number in range(found + 1, target + 1):
            MIGRATIONS[number - 1](db)
        if target > found:
            # A PRAGMA takes no parameters; target is an int.
            db.execute(f"PRAGMA user_version = {int(target)}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
