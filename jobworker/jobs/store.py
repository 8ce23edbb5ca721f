"""
Job records in SQLite, so that they survive the server.

One table, one row per job, in the store's own columns (``rows``) at the
newest version of its schema (``schema``), to which an older database is
brought when opened. The database runs in WAL mode with
``synchronous=NORMAL``: a commit is a write to the log with no fsync, quick
enough for the reactor thread, and a crash of the server process (as
opposed to the machine) loses no committed record.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from jobworker.jobs.datadir import private_file
from jobworker.jobs.record import Job
from jobworker.jobs.rows import COLUMNS, UPDATED, job_from_row, job_to_row
from jobworker.jobs.schema import upgrade
from jobworker.wire import JobStatus

SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"
# An upsert, not INSERT OR REPLACE: the row keeps its rowid, which orders
# jobs by creation even within one millisecond.
SAVE = (
    f"INSERT INTO jobs ({', '.join(COLUMNS)})"
    f" VALUES ({', '.join(f':{name}' for name in COLUMNS)})"
    " ON CONFLICT (id) DO UPDATE SET"
    f" {', '.join(f'{name} = excluded.{name}' for name in UPDATED)}"
)


class StoreUnavailable(Exception):
    """The database cannot be opened, or brought to the newest schema."""


class JobStore:
    """
    Persistence of :class:`Job` records in one SQLite file. Opening raises
    ``SchemaTooNew`` for a database a newer jobworker wrote, and
    ``StoreUnavailable`` for one SQLite cannot open or upgrade.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # 0600, and SQLite makes the -wal and -shm files with the
        # database's mode; those an older version left are tightened.
        private_file(path)
        for suffix in ("-wal", "-shm"):
            private_file(path.with_name(path.name + suffix), create=False)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            upgrade(self._db, name=f"the job database {path}")
        except sqlite3.Error as e:
            self._db.close()
            raise StoreUnavailable(f"cannot open the job database {path}: {e}") from e
        except BaseException:
            self._db.close()
            raise

    def save(self, job: Job) -> None:
        """Insert or replace ``job``'s record."""
        self._db.execute(SAVE, job_to_row(job))

    def get(self, job_id: str) -> Job | None:
        row = self._db.execute(f"{SELECT} WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else job_from_row(row)

    def list(
        self, owner: str | None = None, statuses: set[JobStatus] | None = None
    ) -> list[Job]:
        """Jobs oldest first, optionally only ``owner``'s and in ``statuses``."""
        clauses, params = [], []
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        if statuses is not None:
            marks = ",".join("?" * len(statuses))
            clauses.append(f"status IN ({marks})")
            params.extend(s.value for s in statuses)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(f"{SELECT}{where} ORDER BY rowid", params)
        return [job_from_row(row) for row in rows]

    def ids(self) -> set[str]:
        """The id of every job on record."""
        return {row[0] for row in self._db.execute("SELECT id FROM jobs")}

    def unfinished(self) -> Iterator[Job]:
        """Jobs whose record says they were still running."""
        yield from self.list(statuses={JobStatus.RUNNING, JobStatus.STOPPING})

    def delete(self, job_id: str) -> None:
        self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def close(self) -> None:
        self._db.close()
