"""
The job records as the service sees them: the store, plus what it must not
lose when the store cannot take a write.

A running job's record must change even when the database refuses it (its
disk is full): a job whose stop failed to save would otherwise never be
signalled, and one whose end failed to save would never end. Such a record
is kept in memory, served from there, and written again on a timer until the
database takes it; if the server dies first, the job is found ``lost`` at the
next start, which is what the database last knew. The newest ended records
are also kept in memory: the waiters and followers that saw a job end read
it again at once, and an ended record no longer changes.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from jobworker.jobs.errors import StorageFull
from jobworker.jobs.record import Job
from jobworker.jobs.store import JobStore
from jobworker.wire import JobStatus

RECENTLY_ENDED = 1024


class Records:
    """Job records: written to the store, kept while it refuses them."""

    log = Logger()

    def __init__(self, store: JobStore, clock: IReactorTime, retry: float) -> None:
        self.store = store
        self._clock = clock
        self._retry_seconds = retry
        # Records the database refused, the newest version of each.
        self._unsaved: dict[str, Job] = {}
        self._ended: OrderedDict[str, Job] = OrderedDict()
        self._retry: IDelayedCall | None = None

    def create(self, job: Job, undo: Callable[[], None]) -> None:
        """
        Write a new job's first record, before its process exists: a crash
        from here on leaves a record to reconcile, never an unknown process.
        A record the database refuses means no job (``undo`` runs): unlike
        later records, nothing depends on it yet.
        """
        try:
            self.store.save(job)
        except sqlite3.OperationalError as e:
            undo()
            if e.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            raise StorageFull(f"no room for a new job's record: {e}") from e

    def save(self, job: Job) -> None:
        """Persist ``job``'s record; never raises (see the module's docstring)."""
        try:
            self.store.save(job)
        except sqlite3.OperationalError as e:
            if job.id not in self._unsaved:
                self.log.error(
                    "job {job_id}: cannot write its record, kept in memory until"
                    " the database takes it: {error}",
                    job_id=job.id,
                    error=e,
                )
            self._unsaved[job.id] = job
            if self._retry is None or not self._retry.active():
                self._retry = self._clock.callLater(
                    self._retry_seconds, self._save_again
                )
        else:
            self._unsaved.pop(job.id, None)

    def _save_again(self) -> None:
        for job in list(self._unsaved.values()):
            self.save(job)
        if not self._unsaved:
            self.log.info("every job record is written again")

    def ended(self, job: Job) -> None:
        """Keep ``job``'s final record at hand for the reads that follow."""
        self._ended[job.id] = job
        if len(self._ended) > RECENTLY_ENDED:
            self._ended.popitem(last=False)

    def get(self, job_id: str) -> Job | None:
        if job_id in self._unsaved:
            return self._unsaved[job_id]
        if job_id in self._ended:
            return self._ended[job_id]
        return self.store.get(job_id) if _plausible_id(job_id) else None

    def list(
        self,
        owner: str | None,
        statuses: set[JobStatus] | None,
        live: Callable[[str], Job | None],
    ) -> list[Job]:
        """Jobs oldest first, filtered by owner and status, as they are now."""
        if not self._unsaved:
            jobs: Iterable[Job] = self.store.list(owner, statuses)
            return [live(j.id) or j for j in jobs]
        # Some stored statuses are out of date: filter the current records.
        current = [live(j.id) or self.get(j.id) or j for j in self.store.list(owner)]
        return [j for j in current if statuses is None or j.status in statuses]

    def delete(self, job_id: str) -> None:
        self._unsaved.pop(job_id, None)
        self._ended.pop(job_id, None)
        self.store.delete(job_id)

    def close(self) -> None:
        """A last try at what is unsaved (what still fails is lost); close."""
        if self._unsaved:
            self._save_again()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self.store.close()


def _plausible_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
