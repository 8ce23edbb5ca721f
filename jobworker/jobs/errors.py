"""
The errors the job library reports to its callers.

Each names a reason a caller can act on (try again later, fix the request,
give up); the HTTP layer maps them to status codes in one place.
"""

from __future__ import annotations

import errno


class JobError(Exception):
    """Base of the errors the library reports to its callers."""


class JobNotFound(JobError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id


class JobConflict(JobError):
    """The job's state does not allow the action (e.g. stopping an ended job)."""


class TooManyJobs(JobError):
    """The server runs as many jobs as it may."""


class ShuttingDown(JobError):
    """The server is shutting down and starts nothing new."""


class IsolationUnavailable(JobError):
    """This host or process cannot isolate jobs as the settings ask."""


class UnisolatedAsRoot(JobError):
    """Unisolated jobs asked of a root server that has not said it means it."""


class StorageFull(JobError):
    """The data directory's disk has no room for a new job."""


class OutOfUids(JobError):
    """No uid of the server's range is free for a job of its own."""


OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


class OutOfDescriptors(OSError):
    """
    No file descriptors to set a new job up (its cgroup's files, its pipes):
    the server is busy, not the job wrong.
    """
