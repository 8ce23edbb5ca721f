"""
Whether the server takes one more job now: the checks made before any of
the job exists, so a refusal leaves nothing behind. Per-identity quotas
belong here too.
"""

from __future__ import annotations

from jobworker.jobs.confinement import Confinement
from jobworker.jobs.diskspace import DiskSpace
from jobworker.jobs.errors import ShuttingDown, StorageFull, TooManyJobs
from jobworker.jobs.spec import JobSpec


class Admission:
    """The server-wide bounds on starting a job."""

    def __init__(
        self, max_running: int, space: DiskSpace, confinement: Confinement
    ) -> None:
        self._max_running = max_running
        self._space = space
        self._confinement = confinement
        self.closing = False

    def check(self, spec: JobSpec, running: int) -> None:
        """Raise the reason ``spec`` cannot start now, with ``running`` jobs."""
        if self.closing:
            raise ShuttingDown("the server is shutting down")
        if running >= self._max_running:
            raise TooManyJobs(f"{self._max_running} jobs are running already")
        if self._space.room() == 0:
            raise StorageFull(
                "no room for a new job: the data directory's disk has"
                f" {self._space.free()} bytes free, and the last"
                f" {self._space.reserve} are kept for job records"
            )
        # LimitsUnavailable for limits this host cannot enforce.
        self._confinement.check(spec.limits)
