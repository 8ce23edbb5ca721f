"""
The process protocol of a job: thin, as Twisted's procmon and buildbot's
worker keep theirs. It turns the helper's pipes into calls on the job (bytes
of each stream, the status lines of the launch, the end) and decides nothing.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from jobworker.linux.launcher import STATUS_FD
from jobworker.wire import Stream

STREAM_OF_FD = {1: Stream.STDOUT, 2: Stream.STDERR}


class ProcessEvents(Protocol):
    """What a job hears of its process (see :class:`RunningJob`)."""

    def spawned(self, transport: IProcessTransport) -> None: ...
    def output_received(self, stream: Stream, data: bytes) -> None: ...
    def launch_report(self, line: str) -> None: ...
    def launch_confirmed(self) -> None: ...
    def process_exited(self) -> None: ...
    def process_ended(self, reason: Failure) -> None: ...


class JobProcessProtocol(ProcessProtocol):
    """Forward a job process's events to its job."""

    def __init__(self, job: ProcessEvents) -> None:
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
