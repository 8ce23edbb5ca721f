"""
Each job's cgroup, from creation to removal, as the job library needs it.

The manager asks for a job's confinement before spawning; the launch helper
joins the job to it before the command's first instruction (the
``cgroup.procs`` paths go into the launch request). Stopping signals every
process of the cgroup, so nothing a job forked, double-forked or ``setsid``-ed
escapes. When the job ends, its usage is read, anything left is killed, and
the cgroup is removed; a cgroup whose last process is still dying is tried
again a little later, a bounded number of times. What is still left then
(a process stuck in the kernel) is reclaimed at the next start.

Where no cgroups can be had, jobs still run, but a job that asks for limits is
refused (``LimitsUnavailable``): a limit that silently does nothing is worse
than a clear no.
"""

from __future__ import annotations

import signal
from collections.abc import Container

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from jobworker.jobs.record import Usage
from jobworker.jobs.spec import Limits
from jobworker.linux.cgroups import (
    CgroupDriver,
    CgroupError,
    CgroupLimits,
    CgroupUnavailable,
    JobCgroup,
    default_io_devices,
    detect,
)

# A cgroup whose processes are still being torn down is removed again after
# these delays (seconds); past the last one it is left for the next start.
REMOVE_RETRIES = (0.05, 0.2, 1.0, 5.0)
# A kill that could not be sure to reach every process (the freezer was still
# freezing, and nothing on the reactor's thread waits for it) is done again
# after these delays (seconds), while the job still has processes.
KILL_RETRIES = (0.01, 0.1, 1.0, 5.0)


class LimitsUnavailable(Exception):
    """A job asked for limits this host cannot enforce."""


class JobConfinement:
    """One job's cgroup: its limits, its signals, its usage."""

    log = Logger()

    def __init__(self, cgroup: JobCgroup, clock: IReactorTime) -> None:
        self.cgroup = cgroup
        self._clock = clock
        self._kill_again: IDelayedCall | None = None

    def procs_paths(self) -> tuple[str, ...]:
        return tuple(self.cgroup.procs_paths())

    # The runner's Killer interface: every process of the job, through the
    # cgroup, never a PID that may since belong to someone else.

    def signal(self, number: int) -> None:
        try:
            if number != signal.SIGKILL:
                self.cgroup.signal_all(number)
            elif not self.cgroup.kill_all() and self._kill_again is None:
                # A child forked while freezing may have been missed; it
                # would hold the job's output open, and the job, forever.
                self._schedule_kill(0)
        except CgroupError as e:
            self._cannot_signal(e)

    def _cannot_signal(self, error: CgroupError) -> None:
        self.log.error(
            "job {job_id}: cannot signal its cgroup: {error}",
            job_id=self.cgroup.job_id,
            error=error,
        )

    def _schedule_kill(self, attempt: int) -> None:
        delay = KILL_RETRIES[attempt]
        self._kill_again = self._clock.callLater(delay, self._kill, attempt)

    def _kill(self, attempt: int) -> None:
        self._kill_again = None
        try:
            if self.cgroup.is_empty() or self.cgroup.kill_all():
                return
        except CgroupError as e:
            self._cannot_signal(e)
            return
        if attempt + 1 < len(KILL_RETRIES):
            self._schedule_kill(attempt + 1)
        else:
            self.log.warn(
                "job {job_id}: its cgroup is still freezing; processes forked"
                " meanwhile may live on",
                job_id=self.cgroup.job_id,
            )

    def leader_exited(self) -> None:
        """Nothing to forget: the cgroup knows its members, not our PID."""

    def finish(self) -> tuple[Usage | None, bool]:
        """Read usage, end what is left, remove the cgroup (maybe later)."""
        # From here on removal kills whatever it finds, as often as it tries.
        if self._kill_again is not None:
            self._kill_again.cancel()
            self._kill_again = None
        try:
            counted = self.cgroup.usage()
        except CgroupError as e:
            self.log.error(
                "job {job_id}: cannot read its usage: {error}",
                job_id=self.cgroup.job_id,
                error=e,
            )
            self._remove(0)
            return None, False
        self._remove(0)
        usage = Usage(
            cpu_seconds=round(counted.cpu_seconds, 6),
            memory_peak=counted.memory_peak,
            io_read_bytes=counted.io_read_bytes,
            io_write_bytes=counted.io_write_bytes,
        )
        return usage, counted.oom_killed

    def _remove(self, attempt: int) -> None:
        try:
            # A cgroup with processes cannot be removed (EBUSY): only then is
            # there anything to kill.
            if self.cgroup.remove():
                return
            self.cgroup.kill_all()
            if self.cgroup.remove():
                return
        except CgroupError as e:
            self.log.warn(
                "job {job_id}: removing its cgroup: {error}",
                job_id=self.cgroup.job_id,
                error=e,
            )
        if attempt < len(REMOVE_RETRIES):
            self._clock.callLater(REMOVE_RETRIES[attempt], self._remove, attempt + 1)
        else:
            self.log.warn(
                "job {job_id}: its cgroup is still busy; left for the next start",
                job_id=self.cgroup.job_id,
            )


class Confinement:
    """The host's cgroups, or the reason there are none."""

    log = Logger()

    def __init__(
        self, driver: CgroupDriver | None, reason: str, clock: IReactorTime
    ) -> None:
        self.driver = driver
        self.reason = reason
        self._clock = clock

    @classmethod
    def detect(cls, data_dir: str, clock: IReactorTime) -> Confinement:
        """Find this host's cgroups; IO limits apply to the data dir's disk."""
        try:
            driver = detect(io_devices=default_io_devices(data_dir))
            driver.prepare()
        except (CgroupUnavailable, CgroupError, OSError) as e:
            cls.log.warn(
                "no cgroups: jobs asking for limits will be refused ({reason})",
                reason=e,
            )
            return cls(None, str(e), clock)
        cls.log.info("cgroups: {driver}", driver=driver.describe())
        return cls(driver, "", clock)

    @classmethod
    def none(cls, clock: IReactorTime, reason: str) -> Confinement:
        return cls(None, reason, clock)

    def check(self, limits: Limits) -> None:
        """Refuse limits that cannot be enforced here."""
        if limits.is_empty():
            return
        if self.driver is None:
            raise LimitsUnavailable(f"limits cannot be enforced: {self.reason}")
        available = set(self.driver.available())
        wanted = {
            "cpu": limits.cpu is not None,
            "memory": limits.memory is not None,
            "pids": limits.pids is not None,
            "io": not limits.io.is_empty(),
        }
        missing = sorted(
            name for name, asked in wanted.items() if asked and name not in available
        )
        if missing:
            raise LimitsUnavailable(
                f"limits.{missing[0]} cannot be enforced on this host"
                f" (cgroups here offer: {', '.join(sorted(available)) or 'nothing'})"
            )

    def create(self, job_id: str, limits: Limits) -> JobConfinement | None:
        """A cgroup for a new job, limited; None where there are no cgroups."""
        if self.driver is None:
            return None
        cgroup = self.driver.create(job_id)
        try:
            cgroup.set_limits(
                CgroupLimits(
                    cpu=limits.cpu,
                    memory=limits.memory,
                    pids=limits.pids,
                    read_bps=limits.io.read_bps,
                    write_bps=limits.io.write_bps,
                    read_iops=limits.io.read_iops,
                    write_iops=limits.io.write_iops,
                )
            )
        except BaseException:
            cgroup.remove()
            raise
        return JobConfinement(cgroup, self._clock)

    def kill_lost(self, job_id: str) -> int | None:
        """
        At start-up, what is left of a job lost with the server, killed
        through its cgroup: every process of the job is in it, whatever the
        PIDs on record say now. How many there were; None where the job has
        no cgroup left. Raises ``CgroupError``; ``reclaim`` removes it later.
        """
        if self.driver is None or job_id not in self.driver.leftovers():
            return None
        cgroup = self.driver.open(job_id)
        members = cgroup.pids()
        # Not sure to have reached all (a freezer still freezing): removal
        # kills again, as often as it tries.
        cgroup.kill_all()
        return len(members)

    def reclaim(self, job_ids: Container[str]) -> int:
        """
        At start-up, before any job starts: kill what is left in the job
        cgroups an earlier run left behind, and remove them (later, if their
        processes take a while to go); how many were found.

        ``job_ids`` are this server's jobs (its store's): any of them, lost
        with the server or ended with a cgroup still busy when removal gave
        up, since none runs any more. Nothing else is touched, even under
        the server's own ``jobworker`` parent: that parent is shared by every
        server in the same cgroup (on v1, often the root cgroup of a
        hierarchy), and their running jobs are theirs.
        """
        if self.driver is None:
            return 0
        reclaimed = 0
        for job_id in (j for j in self.driver.leftovers() if j in job_ids):
            self.log.info(
                "job {job_id}: its cgroup was left from before: emptying and"
                " removing it",
                job_id=job_id,
            )
            try:
                cgroup = self.driver.open(job_id)
                JobConfinement(cgroup, self._clock)._remove(0)
                reclaimed += 1
            except CgroupError as e:
                self.log.warn(
                    "leftover cgroup of job {job_id}: {error}", job_id=job_id, error=e
                )
        return reclaimed
