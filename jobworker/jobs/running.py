"""
One running job: its process, its output, its timers and its record.

``JobProcessProtocol`` is thin: it forwards bytes and the end of the process.
``RunningJob`` owns the rest: the state transitions (each persisted before it
is acted on), the timeout and grace timers, stopping, and the one place where
the job is finished, guarded against finishing twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from jobworker.jobs.diskspace import DiskSpace
from jobworker.jobs.output import OutputLog
from jobworker.jobs.record import Job, Usage, utc_now
from jobworker.linux.launcher import STATUS_FD, LaunchRequest, describe_launch_error
from jobworker.wire import JobStatus, Stream

STREAM_OF_FD = {1: Stream.STDOUT, 2: Stream.STDERR}
T = TypeVar("T")


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


class JobProcessProtocol(ProcessProtocol):
    """Forward a job process's events to its :class:`RunningJob`."""

    def __init__(self, job: RunningJob) -> None:
        self._job = job
        self._status = b""
        # The command's end as an isolated job's init reported it.
        self._reported_end: Failure | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self._job.spawned(self.transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        stream = STREAM_OF_FD.get(childFD)
        if stream is not None:
            self._job.output_received(stream, data)
        elif childFD == STATUS_FD:
            self._status += data
            *lines, self._status = self._status.split(b"\n")
            for line in lines:
                self._status_line(line.decode("utf-8", "replace"))

    def _status_line(self, line: str) -> None:
        # An isolated job's helper stays as its init, whose own exit status
        # is not the command's: the command's comes as "exit N"/"signal N".
        word, _, number = line.partition(" ")
        ended: Exception | None = None
        if word == "exit" and number.isdigit():
            code = int(number)
            ended = (
                ProcessDone(0)  # type: ignore[no-untyped-call]
                if code == 0
                else ProcessTerminated(exitCode=code)  # type: ignore[no-untyped-call]
            )
        elif word == "signal" and number.isdigit():
            ended = ProcessTerminated(signal=int(number))  # type: ignore[no-untyped-call]
        if ended is None:
            self._job.launch_report(line)
        else:
            self._reported_end = Failure(ended)  # type: ignore[no-untyped-call]

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == STATUS_FD:
            self._job.launch_confirmed()

    def processExited(self, reason: Failure) -> None:
        self._job.process_exited()

    def processEnded(self, reason: Failure) -> None:
        self._job.process_ended(self._reported_end or reason)


class RunningJob:
    """The live side of a job, from spawn to its final record."""

    log = Logger()

    def __init__(
        self,
        record: Job,
        output: OutputLog,
        reactor: IReactorTime,
        save: Callable[[Job], None],
        output_limit: int,
        default_grace: float,
        make_killer: Callable[[int], Killer] | None = None,
        space: DiskSpace | None = None,
    ) -> None:
        self.record = record
        self.output = output
        self._reactor = reactor
        self._save = save
        self._output_limit = output_limit
        self._default_grace = default_grace
        self.transport: IProcessTransport | None = None
        self.request: LaunchRequest | None = None
        self._launch_error: str | None = None
        self._launched = False
        self._ending_status = JobStatus.EXITED
        self._ending_error: str | None = None
        self._timers: list[IDelayedCall] = []
        self._make_killer = make_killer or ProcessGroupKiller
        self._killer: Killer | None = None
        self._space = space
        self._output_cut = False
        self._confinement: Confined | None = None
        self._finished = False
        # The record once the command runs or could not be run; at the end.
        self.started: Observer[Job] = Observer()
        self.ended: Observer[Job] = Observer()

    @property
    def id(self) -> str:
        return self.record.id

    def _set(self, **changes: Any) -> None:
        """Change the record and persist it before anything acts on it."""
        self.record = self.record.evolve(**changes)
        self._save(self.record)

    # Launch

    def confine(self, confinement: Confined) -> None:
        """Reach the job's processes through its cgroup, not its PIDs."""
        self._confinement = confinement
        self._make_killer = lambda pid: confinement

    def spawned(self, transport: IProcessTransport) -> None:
        """
        The process exists. Called from the protocol's connectionMade: for a
        process that ends at once Twisted may report its end before
        spawnProcess even returns, so this cannot wait for that.
        """
        self.transport = transport
        assert transport.pid is not None
        self._killer = self._make_killer(transport.pid)
        self._set(pid=transport.pid, pid_start_time=process_start_time(transport.pid))
        # Only now that the record names the process may it go on (see the
        # go-ahead in exec.c): a crash of the server before this line leaves
        # a helper that exits at end of file, not a job no one can find.
        # The go-ahead carries the job's environment; then stdin closes:
        # jobs get no input, it reads as end of file.
        assert self.request is not None
        transport.writeToChild(0, self.request.go_ahead)
        transport.closeStdin()

    def attach(self) -> None:
        """spawnProcess returned: arm the timeout, unless it is all over."""
        if self._finished:
            return
        if self.record.spec.timeout is not None:
            self._timers.append(
                self._reactor.callLater(self.record.spec.timeout, self._time_out)
            )

    def launch_report(self, line: str) -> None:
        if line == "running":  # an isolated job's init exec'd the command
            self.launch_confirmed()
        elif line.startswith("error ") and not self._launched:
            assert self.request is not None
            self._launch_error = describe_launch_error(line, self.request)

    def launch_confirmed(self) -> None:
        """The status pipe closed: the command was exec'd, unless it said not."""
        if self._launch_error is None and not self._launched:
            self._launched = True
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
        if self._finished or self._output_cut:
            return
        room = self._output_limit - self.output.total
        if len(data) > room:
            data = data[: max(room, 0)]
            self._cut_output(f"output limit of {self._output_limit} bytes reached")
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
        self._ending_status = status
        self._set(status=JobStatus.STOPPING)
        self.signal(signal.SIGTERM)
        grace = self._default_grace if grace is None else grace
        self._timers.append(self._reactor.callLater(grace, self.kill))

    def _stop_for(self, error: str, grace: float) -> None:
        if self._ending_error is None:
            self._ending_error = error
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
        if self._finished:
            return
        self._finished = True
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self.output.close()
        # The whole end in one record, written once.
        ending: dict[str, Any] = {}
        if self._confinement is not None:
            ending["usage"], ending["oom_killed"] = self._confinement.finish()
        if self._launch_error is not None:
            ending.update(status=JobStatus.FAILED_TO_START, error=self._launch_error)
        else:
            ending.update(
                status=self._ending_status,
                exit_code=None if signal_number is not None else exit_code,
                signal=signal_number,
                error=self._ending_error,
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


class Observer(Generic[T]):
    """
    A result that many may wait for. Each waiter gets its own Deferred, so
    one that is cancelled (its client went away) affects no other.
    """

    def __init__(self) -> None:
        self._result: T | None = None
        self._fired = False
        self._waiters: list[Deferred[T]] = []

    def fire(self, result: T) -> None:
        """Fire once; later calls are ignored."""
        if self._fired:
            return
        self._fired, self._result = True, result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(result)

    def when_fired(self) -> Deferred[T]:
        if self._fired:
            return succeed(cast(T, self._result))

        def forget(d: Deferred[T]) -> None:
            self._waiters.remove(d)

        waiter: Deferred[T] = Deferred(forget)
        self._waiters.append(waiter)
        return waiter


def process_start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (``/proc/PID/stat``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])
