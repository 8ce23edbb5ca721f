"""
One running job: its process, its output, its timers and its record.

``RunningJob`` owns all of a job's life after its first record is written:
the state transitions of the record (each persisted before it is acted on),
the phase of the process (spawning, launching, running, finished; one table
says which may follow which), the timeout and grace timers, stopping, and
the one place where the job is finished, guarded against finishing twice.
The process protocol (``jobworker.jobs.protocol``) only forwards events.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from jobworker.jobs.diskspace import DiskSpace
from jobworker.jobs.errors import OUT_OF_DESCRIPTORS, OutOfDescriptors
from jobworker.jobs.observer import Observer
from jobworker.jobs.output import OutputLog
from jobworker.jobs.protocol import JobProcessProtocol
from jobworker.jobs.record import Job, Usage, utc_now
from jobworker.linux.launcher import (
    Launcher,
    LaunchRequest,
    describe_launch_error,
    describe_os_error,
)
from jobworker.linux.proc import process_start_time
from jobworker.linux.uids import UidReservation
from jobworker.wire import JobStatus, Stream


class Phase(enum.Enum):
    """Where a job's process is; its record's status says what users see."""

    SPAWNING = "spawning"  # built; its process is not spawned yet
    LAUNCHING = "launching"  # the helper runs; the command is not exec'd yet
    LAUNCH_FAILED = "launch_failed"  # the helper could not run the command
    RUNNING = "running"  # the command was exec'd
    FINISHED = "finished"  # the record is final


# Which phase may follow which. A spawn that fails finishes the job at once;
# a helper that ends without a word (killed by a stop before the exec) has
# ended the job all the same.
PHASES: dict[Phase, frozenset[Phase]] = {
    Phase.SPAWNING: frozenset({Phase.LAUNCHING, Phase.FINISHED}),
    Phase.LAUNCHING: frozenset({Phase.RUNNING, Phase.LAUNCH_FAILED, Phase.FINISHED}),
    Phase.LAUNCH_FAILED: frozenset({Phase.FINISHED}),
    Phase.RUNNING: frozenset({Phase.FINISHED}),
    Phase.FINISHED: frozenset(),
}


class IllegalPhase(Exception):
    """A job's process was moved to a phase that cannot follow its own."""


@dataclass(frozen=True)
class JobBounds:
    """What the server allows every job: output, and how long a stop waits."""

    output_limit: int
    default_grace: float


@dataclass(frozen=True)
class Ending:
    """How the job's end will be recorded, once its process is gone."""

    status: JobStatus = JobStatus.EXITED
    error: str | None = None


class Killer(Protocol):
    """Signals every process of one job."""

    def signal(self, number: int) -> None: ...

    def leader_exited(self) -> None:
        """The spawned process was reaped; its pid is no longer ours."""


class Confined(Killer, Protocol):
    """A job's cgroup: signals every process, and counts what they used."""

    def finish(self) -> tuple[Usage | None, bool]:
        """Usage and whether the OOM killer struck; cleans up."""


class ProcessGroupKiller:
    """
    Reach a job's processes through the session and process group that the
    launch helper makes the job lead (pgid = the spawned pid).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._leader_alive = True

    def signal(self, number: int) -> None:
        # The group outlives its reaped leader, and the kernel keeps its number
        # from reuse while it has members, so killpg stays safe after the exit.
        # Before the exit the leader may not have called setsid yet: signal it
        # directly too (not after: its number may then belong to another).
        sends = [os.killpg, os.kill] if self._leader_alive else [os.killpg]
        for send in sends:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                send(self.pid, number)

    def leader_exited(self) -> None:
        self._leader_alive = False


class RunningJob:
    """The live side of a job, from its spawn to its final record."""

    log = Logger()

    def __init__(
        self,
        record: Job,
        output: OutputLog,
        clock: IReactorTime,
        save: Callable[[Job], None],
        bounds: JobBounds,
        request: LaunchRequest,
        confinement: Confined | None = None,
        space: DiskSpace | None = None,
        make_killer: Callable[[int], Killer] | None = None,
        uid: UidReservation | None = None,
    ) -> None:
        self.record = record
        self.output = output
        self.request = request
        self._clock = clock
        self._save = save
        self._bounds = bounds
        self._space = space
        self._confinement = confinement
        if confinement is not None:
            # Reach the job's processes through its cgroup, not their PIDs.
            make_killer = lambda pid: confinement  # noqa: E731
        self._make_killer = make_killer or ProcessGroupKiller
        # A uid of the job's own: the server holds it until the helper does,
        # then the helper until the job's last process is gone; released at
        # the end, whatever it was.
        self._uid = uid
        self.phase = Phase.SPAWNING
        self._launch_error: str | None = None
        self._ending = Ending()
        self._output_cut = False
        self._killer: Killer | None = None
        self._timers: list[IDelayedCall] = []
        # The record once the command runs or could not be run; at the end.
        self.started: Observer[Job] = Observer()
        self.ended: Observer[Job] = Observer()

    @property
    def id(self) -> str:
        return self.record.id

    def _enter(self, phase: Phase) -> None:
        if phase not in PHASES[self.phase]:
            raise IllegalPhase(f"job {self.id}: {self.phase.value} -> {phase.value}")
        self.phase = phase

    def _set(self, **changes: Any) -> None:
        """Change the record and persist it before anything acts on it."""
        self.record = self.record.evolve(**changes)
        self._save(self.record)

    # Launch

    def launch(self, launcher: Launcher) -> None:
        """
        Spawn the job's process through the helper. A spawn the OS refuses
        fails the job's start, except for a lack of descriptors: the server
        is busy then, not the job wrong, and ``OutOfDescriptors`` tells the
        caller to undo the job (its cgroup is already gone).
        """
        try:
            launcher.launch(JobProcessProtocol(self), self.request)
        except OSError as e:
            if e.errno in OUT_OF_DESCRIPTORS:
                if self._confinement is not None:
                    self._confinement.finish()  # removes the unused cgroup
                if self._uid is not None:
                    self._uid.release()
                raise OutOfDescriptors(e.errno, e.strerror) from e
            command = self.record.spec.command
            self.fail_to_start(describe_os_error("spawn", command, e.errno or 0))
        if self._uid is not None:
            self._uid.close()  # the helper's copy holds the lock from here on

    def spawned(self, transport: IProcessTransport) -> None:
        """
        The process exists. Called from the protocol's connectionMade: for a
        process that ends at once Twisted may report its end before
        spawnProcess even returns, so this cannot wait for that.
        """
        self._enter(Phase.LAUNCHING)
        assert transport.pid is not None
        self._killer = self._make_killer(transport.pid)
        self._set(pid=transport.pid, pid_start_time=process_start_time(transport.pid))
        if self.record.spec.timeout is not None:
            self._timers.append(
                self._clock.callLater(self.record.spec.timeout, self._time_out)
            )
        # Only now that the record names the process may it go on (see the
        # go-ahead in exec.c): a crash of the server before this line leaves
        # a helper that exits at end of file, not a job no one can find.
        # The go-ahead carries the job's environment; then stdin closes:
        # jobs get no input, it reads as end of file.
        transport.writeToChild(0, self.request.go_ahead)
        transport.closeStdin()

    def launch_report(self, line: str) -> None:
        if line == "running":  # an isolated job's init exec'd the command
            self.launch_confirmed()
        elif line.startswith("error ") and self.phase is Phase.LAUNCHING:
            self._launch_error = describe_launch_error(line, self.request)
            self._enter(Phase.LAUNCH_FAILED)

    def launch_confirmed(self) -> None:
        """The status pipe closed: the command was exec'd, unless it said not."""
        if self.phase is Phase.LAUNCHING:
            self._enter(Phase.RUNNING)
            self._set(started_at=utc_now())
            self.started.fire(self.record)

    def fail_to_start(self, error: str) -> None:
        """The process could not even be spawned."""
        self._launch_error = error
        self._finish(exit_code=None, signal_number=None)

    # Output

    def output_received(self, stream: Stream, data: bytes) -> None:
        # Once some output was dropped, all that follows is: what is kept must
        # be exactly the start of what the job wrote, never a piece after a
        # gap (were the disk to have room again while the job is stopping).
        if self.phase is Phase.FINISHED or self._output_cut:
            return
        room = self._bounds.output_limit - self.output.total
        if len(data) > room:
            data = data[: max(room, 0)]
            limit = self._bounds.output_limit
            self._cut_output(f"output limit of {limit} bytes reached")
        if self._space is not None:
            granted = self._space.claim(len(data))
            if granted < len(data):
                data = data[:granted]
                self._cut_output(
                    "writing output failed: no space left on the data directory's"
                    f" disk (the last {self._space.reserve} bytes are kept for job"
                    " records)"
                )
        if not data:
            return
        try:
            self.output.write(stream, data)
        except OSError as e:
            self.log.error(
                "job {job_id}: cannot write output: {error}", job_id=self.id, error=e
            )
            self._cut_output(f"writing output failed: {e.strerror}")

    def _cut_output(self, error: str) -> None:
        """Keep no more output, and stop the job at once saying why."""
        self._output_cut = True
        self._stop_for(error, grace=0)

    # Stopping

    def stop(self, grace: float | None, status: JobStatus = JobStatus.STOPPED) -> None:
        """SIGTERM every process of the job; SIGKILL what is left after grace."""
        if self.record.status is not JobStatus.RUNNING:
            return
        self._ending = Ending(status, self._ending.error)
        self._set(status=JobStatus.STOPPING)
        self.signal(signal.SIGTERM)
        grace = self._bounds.default_grace if grace is None else grace
        self._timers.append(self._clock.callLater(grace, self.kill))

    def _stop_for(self, error: str, grace: float) -> None:
        if self._ending.error is None:
            self._ending = Ending(self._ending.status, error)
        self.stop(grace)

    def _time_out(self) -> None:
        self.stop(None, JobStatus.TIMED_OUT)

    def signal(self, number: int) -> None:
        if self._killer is not None:
            self._killer.signal(number)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def process_exited(self) -> None:
        """
        The command ended. Descendants it left behind would keep the output
        pipes open and the job alive forever: end them, as the end of a PID
        namespace's init would.
        """
        if self._killer is not None:
            self._killer.leader_exited()
        self.kill()

    # Ending

    def process_ended(self, reason: Failure) -> None:
        value = reason.value
        exit_code = signal_number = None
        if isinstance(value, ProcessDone):
            exit_code = 0
        elif isinstance(value, ProcessTerminated):
            exit_code, signal_number = value.exitCode, value.signal
        self._finish(exit_code, signal_number)

    def _finish(self, exit_code: int | None, signal_number: int | None) -> None:
        if self.phase is Phase.FINISHED:
            return
        self._enter(Phase.FINISHED)
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self.output.close()
        # The whole end in one record, written once.
        ending: dict[str, Any] = {}
        if self._confinement is not None:
            ending["usage"], ending["oom_killed"] = self._confinement.finish()
        if self._uid is not None:
            self._uid.release()  # the helper, which held it too, has exited
        if self._launch_error is not None:
            ending.update(status=JobStatus.FAILED_TO_START, error=self._launch_error)
        else:
            ending.update(
                status=self._ending.status,
                exit_code=None if signal_number is not None else exit_code,
                signal=signal_number,
                error=self._ending.error,
            )
        self._set(ended_at=utc_now(), **ending)
        self.log.info(
            "job {job_id} {status} exit_code={exit_code} signal={signal}",
            job_id=self.id,
            status=self.record.status.value,
            exit_code=self.record.exit_code,
            signal=self.record.signal,
        )
        self.ended.fire(self.record)
        self.started.fire(self.record)
