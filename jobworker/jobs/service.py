"""
The job library's API: start, stop, get, list, read output, purge, shut down.

``JobManager`` is an ``IService``: starting it opens the store and reconciles
what a previous server left behind (jobs that were running are marked
``lost`` and their processes killed, never re-run); stopping it stops every
running job with its grace period and wakes every reader.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.logger import Logger

from jobworker.jobs.admission import Admission
from jobworker.jobs.confinement import Confinement
from jobworker.jobs.datadir import DATABASE, JOBS, prepare_data_directory
from jobworker.jobs.diskspace import DiskSpace
from jobworker.jobs.errors import (
    IsolationUnavailable,
    JobConflict,
    JobError,
    JobNotFound,
    OutOfDescriptors,
    ShuttingDown,
    StorageFull,
    TooManyJobs,
    UnisolatedAsRoot,
)
from jobworker.jobs.launching import LaunchPlanner
from jobworker.jobs.observer import with_deadline
from jobworker.jobs.output import OutputLog
from jobworker.jobs.record import Job, new_job_id, utc_now
from jobworker.jobs.records import Records
from jobworker.jobs.recovery import recover_lost
from jobworker.jobs.running import JobBounds, RunningJob
from jobworker.jobs.sandbox import JobSandbox
from jobworker.jobs.spec import JobSpec, Limits, checked_spec
from jobworker.jobs.store import JobStore
from jobworker.linux.launcher import (
    DEFAULT_JOB_PATH,
    DEFAULT_TMPFS_INODES,
    DEFAULT_TMPFS_SIZE,
    HelperLauncher,
    Launcher,
)
from jobworker.linux.seccomp import job_syscall_filter
from jobworker.linux.uids import UID_LOCKS, UidPool, UidRange
from jobworker.wire import JobStatus, OutputChunk, Stream

MiB = 1 << 20
GiB = 1 << 30

__all__ = [
    "IsolationUnavailable",
    "JobConflict",
    "JobError",
    "JobManager",
    "JobNotFound",
    "Settings",
    "ShuttingDown",
    "StorageFull",
    "TooManyJobs",
]


@dataclass(frozen=True)
class Settings:
    """Server-wide knobs of the job library, with sane defaults."""

    max_running_jobs: int = 256
    # Per job, stdout and stderr together; beyond it the job is stopped.
    output_limit: int = 10 * GiB
    default_grace: float = 10.0
    max_read: int = 16 * MiB
    # PATH given to jobs that set none; the server's own environment is
    # never passed on.
    job_path: str = DEFAULT_JOB_PATH
    # Each job in new PID, mount, UTS, IPC and network namespaces (needs
    # root). Without it jobs share the host's view: for development only.
    isolate: bool = True
    # Unisolated jobs of a root server share the host's PID namespace, /tmp,
    # /dev and network, one user a role, no system call filter: only if set.
    allow_unisolated_root: bool = False
    # Space on the data directory's disk that job output may not use: it is
    # kept for the job records (see jobworker.jobs.diskspace).
    disk_reserve: int = 64 * MiB
    # How often to retry writing records the database refused (disk full).
    save_retry: float = 5.0
    # Each job in its own cgroup, where the host has cgroups: limits, usage,
    # and stops that reach every process. Off, jobs asking for limits are
    # refused.
    cgroups: bool = True
    # Limits a job gets where it leaves them out (None: no limit), never
    # above the ceiling ``start`` is given (through the API, the caller's
    # role's); a job started without one gets them as they are.
    default_limits: Limits = field(default_factory=Limits)
    # An isolated job's private /tmp, /var/tmp, /run, /run/lock and /dev/shm:
    # each a tmpfs of at most this many bytes and inodes, its pages charged
    # to the job's memory. And the real paths its view hides: the server's
    # own files and data directory (twistd names them).
    tmpfs_size: int = DEFAULT_TMPFS_SIZE
    tmpfs_inodes: int = DEFAULT_TMPFS_INODES
    masked_paths: tuple[str, ...] = ()
    # Where an isolating root server's jobs whose role names no user get a
    # uid of their own (jobworker.linux.uids), and the host-wide locks.
    job_uids: UidRange = field(default_factory=UidRange)
    uid_locks: Path = UID_LOCKS


class JobManager(Service):
    """Runs jobs for owners; the whole library behind one object."""

    log = Logger()

    def __init__(
        self,
        reactor: IReactorProcess,
        data_dir: Path,
        settings: Settings | None = None,
        launcher: Launcher | None = None,
    ) -> None:
        self._reactor = reactor
        self._clock: IReactorTime = reactor  # type: ignore[assignment]
        self.data_dir = data_dir
        self.settings = settings or Settings()
        self._launcher = launcher
        self._records: Records | None = None
        self._admission: Admission | None = None
        self._planner = LaunchPlanner(
            self.settings.job_path,
            self.settings.isolate,
            self.settings.masked_paths,
            self.settings.tmpfs_size,
            self.settings.tmpfs_inodes,
            UidPool(self.settings.job_uids, self.settings.uid_locks),
        )
        self.confinement = Confinement.none(self._clock, "not open yet")
        self._live: dict[str, RunningJob] = {}
        self._space: DiskSpace | None = None

    # Service

    def startService(self) -> None:
        self.open()
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self.shutdown())

    def open(self) -> None:
        """Open the store and reconcile jobs a previous server left running."""
        if self.settings.isolate and os.geteuid() != 0:
            raise IsolationUnavailable(
                "isolating jobs in namespaces needs root; run as root, or turn"
                " isolation off (development only)"
            )
        unisolated_root = not self.settings.isolate and os.geteuid() == 0
        if unisolated_root and not self.settings.allow_unisolated_root:
            raise UnisolatedAsRoot(
                "unisolated jobs of a root server share the host's PID namespace,"
                " /tmp, /dev and network, with no system call filter: refused"
                " unless allow_unisolated_root is set"
            )
        # Private to the server: records hold jobs' environments. From here
        # on, its real path: no piece of it can be swapped any more.
        self.data_dir = prepare_data_directory(self.data_dir)
        if self._launcher is None:
            seccomp = job_syscall_filter() if self.settings.isolate else None
            self._launcher = HelperLauncher(self._reactor, syscall_filter=seccomp)
        store = JobStore(self.data_dir / DATABASE)
        self._records = Records(store, self._clock, self.settings.save_retry)
        self._space = DiskSpace(self.data_dir, self.settings.disk_reserve)
        if self.settings.cgroups:
            self.confinement = Confinement.detect(str(self.data_dir), self._clock)
        else:
            self.confinement = Confinement.none(self._clock, "cgroups are turned off")
        self._admission = Admission(
            self.settings.max_running_jobs, self._space, self.confinement
        )
        for job in list(store.unfinished()):
            self._recover(job)
        # Any of our jobs may have left a cgroup: a lost one, or one that
        # ended while its cgroup stayed busy. None of ours runs yet; the ids
        # on record keep other servers' jobs (under the same parent) out.
        self.confinement.reclaim(store.ids())

    def _recover(self, job: Job) -> None:
        lost, killed = recover_lost(job, self.confinement)
        self.records.save(lost)
        self.log.warn(
            "job {job_id} was running when the server stopped: marked lost; {killed}",
            job_id=job.id,
            killed=killed,
        )

    @property
    def records(self) -> Records:
        if self._records is None:
            raise RuntimeError("JobManager is not open")
        return self._records

    @property
    def store(self) -> JobStore:
        return self.records.store

    # Jobs

    async def start(
        self,
        spec: JobSpec,
        owner: str,
        run_as: str | None = None,
        ceiling: Limits | None = None,
        sandbox: JobSandbox | None = None,
    ) -> Job:
        """
        Start ``spec`` for ``owner``, as the user ``run_as`` (``None``: see
        ``LaunchPlanner.user``). A limit ``spec`` leaves out gets the
        server's default, within ``ceiling`` (the caller's, who has held the
        limits ``spec`` sets to it), in ``sandbox`` (the caller's; None: the
        server's usual one). Returns the record once the command runs
        (``running``) or could not be run (``failed_to_start``); raises
        ``InvalidSpec`` for a malformed spec, and nothing is started then.
        """
        spec = checked_spec(spec)
        defaults = self.settings.default_limits
        spec = replace(spec, limits=spec.limits.or_defaults(defaults, ceiling))
        assert self._admission is not None and self._space is not None
        self._admission.check(spec, len(self._live))
        user = self._planner.user(run_as)  # a uid of its own may be refused too
        record = Job(
            id=new_job_id(),
            owner=owner,
            spec=spec,
            status=JobStatus.RUNNING,
            created_at=utc_now(),
            run_as=user.run_as,
            uid=user.uid,
            gid=user.gid,
        )
        try:
            output = OutputLog.create(self._job_dir(record.id), self._clock)
            self.records.create(record, undo=output.remove)
        except BaseException:
            user.release()
            raise
        try:
            plan = self._planner.plan(record, user, self.confinement, sandbox)
        except OutOfDescriptors:
            self._abandon(record.id, output)
            raise
        job = RunningJob(
            record,
            output,
            self._clock,
            self.records.save,
            JobBounds(self.settings.output_limit, self.settings.default_grace),
            plan.request,
            plan.confinement,
            self._space,
            uid=user.reservation,
        )
        self._live[record.id] = job
        job.ended.when_fired().addBoth(self._forget, record.id)
        if plan.error is not None:
            job.fail_to_start(plan.error)
        else:
            assert self._launcher is not None
            try:
                job.launch(self._launcher)
            except OutOfDescriptors:
                self._abandon(record.id, output)
                raise
        return await job.started.when_fired()

    def _abandon(self, job_id: str, output: OutputLog) -> None:
        """
        Undo a start that found no descriptors for the job's cgroup or pipes:
        the server is busy, not the job wrong, so nothing of it is kept (the
        caller is told to try again), as if refused before its record.
        """
        self._live.pop(job_id, None)
        output.remove()
        self.records.delete(job_id)

    def prepare_users(self, names: Iterable[str]) -> None:
        """Look up the users jobs may run as, once, before serving."""
        self._planner.prepare_users(names)

    def _forget(self, result: object, job_id: str) -> object:
        self._live.pop(job_id, None)
        if isinstance(result, Job):
            self.records.ended(result)
        return result

    def _job_dir(self, job_id: str) -> Path:
        return self.data_dir / JOBS / job_id

    def _live_record(self, job_id: str) -> Job | None:
        live = self._live.get(job_id)
        return None if live is None else live.record

    def get(self, job_id: str) -> Job:
        job = self._live_record(job_id) or self.records.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def list(
        self, owner: str | None = None, statuses: set[JobStatus] | None = None
    ) -> list[Job]:
        """Jobs oldest first, filtered by owner and status."""
        return self.records.list(owner, statuses, self._live_record)

    def output_sizes(self, job_id: str) -> dict[str, int]:
        return self.output_log(job_id).sizes()

    def describe(self, job: Job) -> dict[str, object]:
        """The JSON record of ``job`` with its output sizes."""
        return job.to_json(self.output_log(job.id).sizes())

    def stop(self, job_id: str, grace: float | None = None) -> Job:
        """Ask a running job to stop; returns its record (``stopping``)."""
        job = self.get(job_id)
        live = self._live.get(job_id)
        if live is None or job.status.ended:
            raise JobConflict(f"job {job_id} has already ended ({job.status.value})")
        live.stop(grace)
        return live.record

    def wait(self, job_id: str) -> Deferred[Job]:
        """Fire with the final record once the job has ended."""
        job = self.get(job_id)
        live = self._live.get(job_id)
        return succeed(job) if live is None else live.ended.when_fired()

    def output_log(self, job_id: str) -> OutputLog:
        """The job's output: growing while it runs, fixed once it ended."""
        live = self._live.get(job_id)
        if live is not None:
            return live.output
        self.get(job_id)
        return OutputLog.open_ended(self._job_dir(job_id), self._clock)

    async def read_output(
        self,
        job_id: str,
        stream: Stream = Stream.COMBINED,
        offset: int = 0,
        limit: int = MiB,
        wait: float = 0,
    ) -> OutputChunk:
        """
        The bytes of ``stream`` from ``offset``, at most ``limit``. If there
        are none yet and the job runs, wait up to ``wait`` seconds for some.
        """
        limit = min(limit, self.settings.max_read)
        log = self.output_log(job_id)
        chunk = log.read(stream, offset, limit)
        if chunk.data or chunk.complete or wait <= 0 or log.closed:
            return chunk
        await with_deadline(log.wait(stream, offset), wait, self._clock)
        return log.read(stream, offset, limit)

    def purge(self, job_id: str) -> None:
        """Remove an ended job's record and output."""
        job = self.get(job_id)
        if not job.status.ended or job_id in self._live:
            raise JobConflict(f"job {job_id} is {job.status.value}: stop it first")
        shutil.rmtree(self._job_dir(job_id), ignore_errors=True)
        self.records.delete(job_id)

    def running_count(self) -> int:
        return len(self._live)

    # Shutdown

    async def shutdown(self) -> None:
        """Stop every job with its grace period, then close the store."""
        if self._admission is not None:
            self._admission.closing = True
        live = list(self._live.values())
        for job in live:
            job.stop(None)
        if live:
            await DeferredList([job.ended.when_fired() for job in live])
        if self._records is not None:
            self._records.close()
            self._records = None
