"""
What the routes need of the job library, and nothing more: ``JobManager``
is one such service, and a test's fake in memory is another.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred

from jobworker.jobs.output import OutputSpan
from jobworker.jobs.record import Job
from jobworker.jobs.sandbox import JobSandbox
from jobworker.jobs.spec import JobSpec, Limits
from jobworker.wire import JobStatus, OutputChunk, Stream


class JobOutput(Protocol):
    """One job's output, as a read or a follow stream sends it on."""

    @property
    def closed(self) -> bool:
        """No more bytes will come: the job has ended."""

    def size(self, stream: Stream) -> int: ...

    def read(self, stream: Stream, offset: int, limit: int) -> OutputChunk:
        """At most ``limit`` bytes from ``offset``; ``OffsetOutOfRange`` past
        the end of output that is closed."""

    def span(self, stream: Stream, offset: int, limit: int) -> OutputSpan:
        """Where ``read`` would end now, without reading the bytes."""

    def wait(self, stream: Stream, offset: int) -> Deferred[None]:
        """Fire once there are bytes past ``offset``, or the output closed;
        cancelling it forgets the waiter."""


class JobService(Protocol):
    """Start, find, stop, purge jobs and read their output."""

    async def start(
        self,
        spec: JobSpec,
        owner: str,
        run_as: str | None = None,
        ceiling: Limits | None = None,
        sandbox: JobSandbox | None = None,
    ) -> Job:
        """Start ``spec``; a limit it leaves out gets the default within
        ``ceiling``; in ``sandbox`` (None: the server's usual one).
        ``TooManyJobs``, ``ShuttingDown``, ``StorageFull``,
        ``LimitsUnavailable``, ``OutOfUids`` when it cannot start now."""

    def get(self, job_id: str) -> Job:
        """The record; ``JobNotFound`` if there is none."""

    def list(
        self, owner: str | None = None, statuses: set[JobStatus] | None = None
    ) -> list[Job]:
        """Jobs oldest first, filtered by owner and status."""

    def describe(self, job: Job) -> dict[str, object]:
        """The JSON record of ``job``, with its output sizes."""

    def stop(self, job_id: str, grace: float | None = None) -> Job:
        """Ask a running job to stop; ``JobConflict`` if it has ended."""

    def purge(self, job_id: str) -> None:
        """Remove an ended job; ``JobConflict`` if it has not ended."""

    def output_log(self, job_id: str) -> JobOutput: ...

    async def read_output(
        self,
        job_id: str,
        stream: Stream = Stream.COMBINED,
        offset: int = 0,
        limit: int = 1 << 20,
        wait: float = 0,
    ) -> OutputChunk:
        """Bytes from ``offset``; if there are none yet and the job runs,
        wait up to ``wait`` seconds for some."""

    def running_count(self) -> int: ...
