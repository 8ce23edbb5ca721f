"""RunningJob's state machine, timers and stopping, with a fake clock and process."""

from __future__ import annotations

import errno
import signal
from pathlib import Path
from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from jobworker.jobs.output import OutputLog
from jobworker.jobs.protocol import JobProcessProtocol
from jobworker.jobs.record import Job
from jobworker.jobs.running import JobBounds, Phase, RunningJob
from jobworker.jobs.spec import JobSpec
from jobworker.linux.launcher import LaunchRequest
from jobworker.wire import JobStatus, Stream


class FakeTransport:
    pid = 4242

    def __init__(self, saved: list[Job]) -> None:
        self.saved = saved
        self.stdin: list[tuple[bytes, int | None]] = []
        self.stdin_closed = False

    def writeToChild(self, fd: int, data: bytes) -> None:
        # Record which pid the stored record named when the bytes went out.
        assert fd == 0
        self.stdin.append((data, self.saved[-1].pid if self.saved else None))

    def closeStdin(self) -> None:
        self.stdin_closed = True


class FakeKiller:
    def __init__(self, job: RunningJobTests) -> None:
        self.test = job

    def signal(self, number: int) -> None:
        # Record the status the job had persisted when the signal went out.
        self.test.signals.append((number, self.test.saved[-1].status))

    def leader_exited(self) -> None:
        self.test.signals.append(("leader_exited", None))


class RunningJobTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.saved: list[Job] = []
        self.signals: list[tuple[Any, Any]] = []
        self.output = OutputLog.create(Path(self.mktemp()), self.clock)
        self.addCleanup(self.output.close)

    def make(
        self, timeout: float | None = None, output_limit: int = 1000
    ) -> RunningJob:
        record = Job(
            id="a" * 32,
            owner="alice",
            spec=JobSpec(command="sleep", args=("1000",), timeout=timeout),
            status=JobStatus.RUNNING,
            created_at="2026-11-22T10:00:00.000Z",
        )
        job = RunningJob(
            record,
            self.output,
            self.clock,
            self.saved.append,
            JobBounds(output_limit=output_limit, default_grace=10.0),
            LaunchRequest(
                "/bin/sleep", ("sleep", "1000"), env={"A": "1", "B": "x=y"}, cwd="/x"
            ),
            make_killer=lambda pid: FakeKiller(self),
        )
        self.protocol = JobProcessProtocol(job)
        transport = FakeTransport(self.saved)
        self.protocol.makeConnection(transport)
        # The go-ahead, with the job's environment, once the stored record
        # names the process; then EOF.
        go_ahead = b"A=1\0B=x=y\0\0"
        assert (transport.stdin, transport.stdin_closed) == ([(go_ahead, 4242)], True)
        assert job.phase is Phase.LAUNCHING
        return job

    def end(self, exit_code: int | None = 0, sig: int | None = None) -> None:
        self.protocol.processExited(Failure(ProcessDone(0)))
        if exit_code == 0 and sig is None:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(exit_code, sig))
        self.protocol.processEnded(reason)

    def test_started_once_status_pipe_closes(self) -> None:
        """The job counts as started when the helper's status pipe closes silently."""
        job = self.make()
        self.assertNoResult(job.started.when_fired())
        self.protocol.childConnectionLost(3)
        record = self.successResultOf(job.started.when_fired())
        assert record.status is JobStatus.RUNNING
        assert record.started_at is not None
        assert self.saved[-1] == record

    def test_launch_error_is_failed_to_start(self) -> None:
        """An error line from the helper: failed_to_start, with the OS error."""
        job = self.make()
        self.protocol.childDataReceived(3, b"error chdir 2\n")
        self.protocol.childConnectionLost(3)
        self.assertNoResult(job.started.when_fired())
        self.end(127)
        record = self.successResultOf(job.started.when_fired())
        assert record.status is JobStatus.FAILED_TO_START
        assert record.error == "chdir /x: No such file or directory (ENOENT)"
        assert record.exit_code is None

    def test_launch_error_after_a_stop_is_failed_to_start(self) -> None:
        """A stop (here its timeout) before the helper's exec, which then
        fails: failed_to_start, with the OS error, and the job ends."""
        job = self.make(timeout=1)
        self.clock.advance(1)
        assert job.record.status is JobStatus.STOPPING
        ended = job.ended.when_fired()
        self.protocol.childDataReceived(3, b"error exec 2\n")
        self.protocol.childConnectionLost(3)
        self.end(127)
        record = self.successResultOf(ended)
        assert (record.status, record.error) == (
            JobStatus.FAILED_TO_START,
            "exec sleep: No such file or directory (ENOENT)",
        )

    def test_exit_code_recorded(self) -> None:
        """A command that exits by itself is exited with its code."""
        job = self.make()
        self.protocol.childConnectionLost(3)
        ended = job.ended.when_fired()
        self.end(3)
        record = self.successResultOf(ended)
        assert (record.status, record.exit_code, record.signal) == (
            JobStatus.EXITED,
            3,
            None,
        )
        assert record.ended_at is not None

    def test_stop_terms_then_kills_after_grace(self) -> None:
        """Stop persists stopping, SIGTERMs, and SIGKILLs when the grace is over."""
        job = self.make()
        self.protocol.childConnectionLost(3)
        job.stop(grace=2)
        assert self.signals == [(signal.SIGTERM, JobStatus.STOPPING)]
        self.clock.advance(1.9)
        assert len(self.signals) == 1
        self.clock.advance(0.1)
        assert self.signals[-1] == (signal.SIGKILL, JobStatus.STOPPING)
        self.end(None, signal.SIGKILL)
        assert job.record.status is JobStatus.STOPPED
        assert job.record.signal == signal.SIGKILL

    def test_quick_exit_cancels_grace_timer(self) -> None:
        """A job that ends on SIGTERM leaves no timer behind."""
        job = self.make()
        job.stop(grace=5)
        self.end(None, signal.SIGTERM)
        assert self.clock.getDelayedCalls() == []
        assert (job.record.status, job.record.signal) == (JobStatus.STOPPED, 15)

    def test_stop_twice_is_one_stop(self) -> None:
        """A second stop while stopping sends nothing more."""
        job = self.make()
        job.stop(grace=5)
        job.stop(grace=5)
        assert len(self.signals) == 1

    def test_timeout(self) -> None:
        """A job past its timeout is stopped and ends timed_out."""
        job = self.make(timeout=30)
        self.clock.advance(29)
        assert self.signals == []
        self.clock.advance(1)
        assert self.signals == [(signal.SIGTERM, JobStatus.STOPPING)]
        self.end(None, signal.SIGTERM)
        assert job.record.status is JobStatus.TIMED_OUT

    def test_leftovers_killed_when_command_exits(self) -> None:
        """When the command exits, what it left behind is killed."""
        self.make()
        self.protocol.processExited(Failure(ProcessDone(0)))
        assert self.signals == [
            ("leader_exited", None),
            (signal.SIGKILL, JobStatus.RUNNING),
        ]

    def test_output_limit_stops_the_job(self) -> None:
        """Output beyond the limit is not kept; the job is stopped and says why."""
        job = self.make(output_limit=10)
        self.protocol.childDataReceived(1, b"12345678")
        self.protocol.childDataReceived(2, b"abcdef")
        assert self.output.sizes() == {"stdout": 8, "stderr": 2}
        assert self.signals[0] == (signal.SIGTERM, JobStatus.STOPPING)
        self.clock.advance(0)
        assert self.signals[-1][0] == signal.SIGKILL
        self.end(None, signal.SIGKILL)
        assert job.record.status is JobStatus.STOPPED
        assert job.record.error == "output limit of 10 bytes reached"

    def test_disk_full_stops_the_job(self) -> None:
        """A write the disk refuses stops the job with the reason in its record."""
        job = self.make()

        def refuse(stream: Stream, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.output.write = refuse  # type: ignore[method-assign]
        self.protocol.childDataReceived(1, b"x")
        self.end(None, signal.SIGTERM)
        assert job.record.status is JobStatus.STOPPED
        assert job.record.error == "writing output failed: No space left on device"

    def test_finishes_once(self) -> None:
        """A second end event changes nothing."""
        job = self.make()
        self.end(0)
        saves = len(self.saved)
        self.end(1)
        assert job.record.exit_code == 0
        assert len(self.saved) == saves
