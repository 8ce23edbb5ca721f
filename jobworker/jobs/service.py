"""
The job library's API: start, stop, get, list, read output, purge, shut down.

``JobManager`` is an ``IService``: starting it opens the store and reconciles
what a previous server left behind (jobs that were running are marked
``lost`` and their processes killed, never re-run); stopping it stops every
running job with its grace period and wakes every reader.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.logger import Logger

from jobworker.jobs.confinement import Confinement
from jobworker.jobs.datadir import DATABASE, JOBS, prepare_data_directory
from jobworker.jobs.diskspace import DiskSpace
from jobworker.jobs.output import OutputLog
from jobworker.jobs.record import Job, new_job_id, utc_now
from jobworker.jobs.running import JobProcessProtocol, RunningJob, process_start_time
from jobworker.jobs.spec import JobSpec, Limits, parse_job_spec
from jobworker.jobs.store import JobStore
from jobworker.linux.cgroups import CgroupError
from jobworker.linux.launcher import (
    DEFAULT_JOB_PATH,
    HelperLauncher,
    Launcher,
    LaunchRequest,
    User,
    describe_os_error,
    resolve_user,
)
from jobworker.wire import JobStatus, OutputChunk, Stream

MiB = 1 << 20
RECENTLY_ENDED = 1024
GiB = 1 << 30


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


OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


class OutOfDescriptors(OSError):
    """
    No file descriptors to set a new job up (its cgroup's files, its pipes):
    the server is busy, not the job wrong.
    """


class IsolationUnavailable(JobError):
    """This host or process cannot isolate jobs as the settings ask."""


class StorageFull(JobError):
    """The data directory's disk has no room for a new job."""


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
    # Space on the data directory's disk that job output may not use: it is
    # kept for the job records (see jobworker.jobs.diskspace).
    disk_reserve: int = 64 * MiB
    # How often to retry writing records the database refused (disk full).
    save_retry: float = 5.0
    # Each job in its own cgroup, where the host has cgroups: limits, usage,
    # and stops that reach every process. Off, jobs asking for limits are
    # refused.
    cgroups: bool = True
    # Limits a job gets where it leaves them out (None: no limit). Through
    # the API they never exceed the caller's role's ceilings (see
    # jobworker.auth.policy.check_ceilings); a job started here directly gets them
    # as they are.
    default_limits: Limits = field(default_factory=Limits)


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
        self._store: JobStore | None = None
        self._users: dict[str, User] = {}
        self.confinement = Confinement.none(self._clock, "not open yet")
        self._live: dict[str, RunningJob] = {}
        self._space: DiskSpace | None = None
        # Records the database refused (its disk was full), newest version
        # of each, served from here and written again until it takes them.
        self._unsaved: dict[str, Job] = {}
        # The newest ended records, kept (RECENTLY_ENDED at most) for reads.
        self._ended: OrderedDict[str, Job] = OrderedDict()
        self._retry: IDelayedCall | None = None
        self._closing = False

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
        # Private to the server: records hold jobs' environments. From here
        # on, its real path: no piece of it can be swapped any more.
        self.data_dir = prepare_data_directory(self.data_dir)
        if self._launcher is None:
            self._launcher = HelperLauncher(self._reactor)
        self._store = JobStore(self.data_dir / DATABASE)
        self._space = DiskSpace(self.data_dir, self.settings.disk_reserve)
        if self.settings.cgroups:
            self.confinement = Confinement.detect(str(self.data_dir), self._clock)
        else:
            self.confinement = Confinement.none(self._clock, "cgroups are turned off")
        lost = list(self._store.unfinished())
        for job in lost:
            self._recover(job)
        # Any of our jobs may have left a cgroup: a lost one, or one that
        # ended while its cgroup stayed busy. None of ours runs yet; the ids
        # on record keep other servers' jobs (under the same parent) out.
        self.confinement.reclaim(self._store.ids())

    def _recover(self, job: Job) -> None:
        killed = kill_session(job.pid, job.pid_start_time)
        lost = job.evolve(
            status=JobStatus.LOST,
            ended_at=utc_now(),
            error="the server stopped while the job was running",
        )
        self._save(lost)
        self.log.warn(
            "job {job_id} was running when the server stopped: marked lost,"
            " {killed} leftover processes killed",
            job_id=job.id,
            killed=killed,
        )

    @property
    def store(self) -> JobStore:
        if self._store is None:
            raise RuntimeError("JobManager is not open")
        return self._store

    def _save(self, job: Job) -> None:
        """
        Persist ``job``'s record; never raises. A running job's record must
        change even when the database cannot take it (disk full): a job
        whose stop failed to save would otherwise never be signalled, and one
        whose end failed to save would never end. Such a record is kept in
        memory, served from there, and written again later; if the server
        dies first, the job is found ``lost`` at the next start, which is
        what the database last knew.
        """
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
                    self.settings.save_retry, self._save_again
                )
        else:
            self._unsaved.pop(job.id, None)

    def _save_again(self) -> None:
        for job in list(self._unsaved.values()):
            self._save(job)
        if not self._unsaved:
            self.log.info("every job record is written again")

    # Jobs

    async def start(self, spec: JobSpec, owner: str, run_as: str | None = None) -> Job:
        """
        Start ``spec`` for ``owner``, as the user ``run_as`` (``None``: as
        this process's user, as is every job of a server that is neither
        isolating jobs nor root). Returns the record once the command runs
        (``running``) or could not be run (``failed_to_start``); raises
        ``InvalidSpec`` for a malformed spec, and nothing is started then.
        """
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        defaults = self.settings.default_limits
        spec = replace(spec, limits=spec.limits.or_defaults(defaults))
        # A JobSpec built by hand is checked as a request is: a NUL byte or
        # an oversized argv would otherwise fail only in the spawn.
        spec = parse_job_spec(spec.to_json())
        if not self.settings.isolate and os.geteuid() != 0:
            run_as = None  # only root can change users: jobs run as we do
        if len(self._live) >= self.settings.max_running_jobs:
            raise TooManyJobs(
                f"{self.settings.max_running_jobs} jobs are running already"
            )
        assert self._space is not None
        if self._space.room() == 0:
            raise StorageFull(
                "no room for a new job: the data directory's disk has"
                f" {self._space.free()} bytes free, and the last"
                f" {self._space.reserve} are kept for job records"
            )
        self.confinement.check(spec.limits)
        record = Job(
            id=new_job_id(),
            owner=owner,
            spec=spec,
            status=JobStatus.RUNNING,
            created_at=utc_now(),
            run_as=run_as,
        )
        try:
            output = OutputLog.create(self._job_dir(record.id), self._clock)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            shutil.rmtree(self._job_dir(record.id), ignore_errors=True)
            raise StorageFull(f"no room for a new job's output: {e}") from e
        job = RunningJob(
            record,
            output,
            self._clock,
            self._save,
            self.settings.output_limit,
            self.settings.default_grace,
            space=self._space,
        )
        # The record is written before the process exists: a crash from here
        # on leaves a record to reconcile, never an unknown process. A record
        # the database refuses means no job, unlike _save's later records.
        try:
            self.store.save(record)
        except sqlite3.OperationalError as e:
            output.close()
            shutil.rmtree(self._job_dir(record.id), ignore_errors=True)
            if e.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            raise StorageFull(f"no room for a new job's record: {e}") from e
        self._live[record.id] = job
        job.ended.when_fired().addBoth(self._forget, record.id)
        try:
            self._spawn(job)
        except OutOfDescriptors:
            self._abandon(job)
            raise
        return await job.started.when_fired()

    def _abandon(self, job: RunningJob) -> None:
        """
        Undo a start that found no descriptors for the job's pipes: the
        server is busy, not the job wrong, so nothing of it is kept (the
        caller is told to try again), as if refused before its record.
        """
        self._live.pop(job.id, None)
        job.output.close()
        shutil.rmtree(self._job_dir(job.id), ignore_errors=True)
        self.store.delete(job.id)

    def prepare_users(self, names: Iterable[str]) -> None:
        """
        Look up the users jobs may run as, once, before serving: the lookup
        may block (NSS, directory services) and an unknown user is a
        configuration error to report at start-up. Raises ``UnknownUser``.
        """
        for name in names:
            self._users[name] = resolve_user(name)

    def _user(self, name: str) -> User:
        if name not in self._users:
            self._users[name] = resolve_user(name)
        return self._users[name]

    def _spawn(self, job: RunningJob) -> None:
        spec = job.record.spec
        env = {"PATH": self.settings.job_path, **spec.env}
        user = None if job.record.run_as is None else self._user(job.record.run_as)
        try:
            confinement = self.confinement.create(job.id, spec.limits)
        except CgroupError as e:
            if e.errno in OUT_OF_DESCRIPTORS:
                raise OutOfDescriptors(e.errno, str(e)) from e
            job.fail_to_start(f"cgroup: {e}")
            return
        if confinement is not None:
            job.confine(confinement)
        request = LaunchRequest(
            executable=spec.command,  # a bare name: the helper looks it up
            cgroup_procs=() if confinement is None else confinement.procs_paths(),
            argv=(spec.command, *spec.args),
            env=env,
            cwd=spec.cwd,
            isolate=self.settings.isolate,
            network=spec.isolation.network,
            uid=None if user is None else user.uid,
            gid=None if user is None else user.gid,
            groups=() if user is None else user.groups,
        )
        job.request = request
        try:
            assert self._launcher is not None
            self._launcher.launch(JobProcessProtocol(job), request)
        except OSError as e:
            if e.errno in OUT_OF_DESCRIPTORS:
                if confinement is not None:
                    confinement.finish()  # removes the unused cgroup
                raise OutOfDescriptors(e.errno, e.strerror) from e
            job.fail_to_start(describe_os_error("spawn", spec.command, e.errno or 0))
            return
        job.attach()

    def _forget(self, result: object, job_id: str) -> object:
        self._live.pop(job_id, None)
        if isinstance(result, Job):
            # An ended record no longer changes: the next reads of it (the
            # waiters and followers that saw it end) need not ask SQLite.
            self._ended[job_id] = result
            if len(self._ended) > RECENTLY_ENDED:
                self._ended.popitem(last=False)
        return result

    def _job_dir(self, job_id: str) -> Path:
        return self.data_dir / JOBS / job_id

    def get(self, job_id: str) -> Job:
        live = self._live.get(job_id)
        if live is not None:
            return live.record
        if job_id in self._unsaved:
            return self._unsaved[job_id]
        if job_id in self._ended:
            return self._ended[job_id]
        job = self.store.get(job_id) if _plausible_id(job_id) else None
        if job is None:
            raise JobNotFound(job_id)
        return job

    def list(
        self, owner: str | None = None, statuses: set[JobStatus] | None = None
    ) -> list[Job]:
        """Jobs oldest first, filtered by owner and status."""
        if not self._unsaved:
            jobs = self.store.list(owner, statuses)
            return [self._live[j.id].record if j.id in self._live else j for j in jobs]
        # Some stored statuses are out of date: filter the current records.
        current = [self.get(j.id) for j in self.store.list(owner)]
        return [j for j in current if statuses is None or j.status in statuses]

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
        self._unsaved.pop(job_id, None)
        self._ended.pop(job_id, None)
        self.store.delete(job_id)

    def running_count(self) -> int:
        return len(self._live)

    # Shutdown

    async def shutdown(self) -> None:
        """Stop every job with its grace period, then close the store."""
        self._closing = True
        live = list(self._live.values())
        for job in live:
            job.stop(None)
        if live:
            await DeferredList([job.ended.when_fired() for job in live])
        if self._store is not None and self._unsaved:
            self._save_again()  # a last try; what still fails is lost
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._store is not None:
            self._store.close()
            self._store = None


async def with_deadline(
    waiting: Deferred[None], seconds: float, clock: IReactorTime
) -> None:
    """
    Wait for ``waiting`` at most ``seconds``; a timeout is not an error. A
    cancel from outside (the reader went away) still raises ``CancelledError``:
    there is then nobody to answer.
    """
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        waiting.cancel()

    deadline = clock.callLater(seconds, expire)
    try:
        await waiting
    except CancelledError:
        if not expired:
            raise
    finally:
        if deadline.active():
            deadline.cancel()


def kill_session(pid: int | None, start_time: int | None) -> int:
    """
    SIGKILL every process of the session ``pid`` led, if that is still the
    session of the job (the start time tells it from a reused number).
    Returns how many were signalled.
    """
    if not pid:
        return 0
    killed = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        other = int(entry)
        if session_of(other) != pid:
            continue
        started = process_start_time(other)
        if start_time is not None and started is not None and started < start_time:
            continue
        try:
            os.kill(other, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[3])


def _plausible_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
