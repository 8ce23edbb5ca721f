"""
A job's output: append-only files, byte offsets, and waiters.

Each job has three files: ``stdout`` and ``stderr`` hold each stream's raw
bytes, ``combined`` both in the order the server read them. A byte's offset in
its file is the only cursor a reader needs: reading history and then waiting
for more is one operation, so there is no gap or duplicate between the two.

Readers that are ahead of the writer wait on a Deferred. The writer wakes them
in a later reactor turn (never re-entrantly from inside ``write``), once per
turn however many writes arrived. Nothing here holds output in memory beyond
one read's ``limit``.
"""

from __future__ import annotations

import enum
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Stream(enum.Enum):
    STDOUT = "stdout"
    STDERR = "stderr"
    COMBINED = "combined"


WRITTEN_STREAMS = (Stream.STDOUT, Stream.STDERR)
FILE_MODE = 0o640


class OffsetOutOfRange(Exception):
    """A read started past the end of output that will never grow."""

    def __init__(self, stream: Stream, offset: int, size: int) -> None:
        super().__init__(
            f"offset {offset} is past the end of {stream.value} ({size} bytes)"
        )
        self.size = size


class OutputClosed(Exception):
    """A write arrived after the log was closed."""


@dataclass(frozen=True)
class OutputChunk:
    """Bytes read from one stream, and where to read next."""

    data: bytes
    offset: int
    next_offset: int
    # The job has ended and this chunk reaches the end of its output.
    complete: bool


class OutputLog:
    """The output files of one job, and the readers waiting on them."""

    def __init__(self, directory: Path, reactor: IReactorTime, writable: bool) -> None:
        self.directory = directory
        self._reactor = reactor
        self._fds: dict[Stream, int] = {}
        self._sizes: dict[Stream, int] = {}
        self._waiters: dict[Stream, list[tuple[int, Deferred[None]]]] = {
            s: [] for s in Stream
        }
        self._wake_call: IDelayedCall | None = None
        self.closed = not writable
        if writable:
            directory.mkdir(parents=True, exist_ok=True)
        for stream in Stream:
            path = self.path(stream)
            if writable:
                fd = os.open(
                    path,
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                    FILE_MODE,
                )
                self._fds[stream] = fd
                self._sizes[stream] = os.fstat(fd).st_size
            else:
                self._sizes[stream] = _size_or_zero(path)

    @classmethod
    def create(cls, directory: Path, reactor: IReactorTime) -> OutputLog:
        """A new, growing log for a job about to run."""
        return cls(directory, reactor, writable=True)

    @classmethod
    def open_ended(cls, directory: Path, reactor: IReactorTime) -> OutputLog:
        """The finished log of an ended job; missing files read as empty."""
        return cls(directory, reactor, writable=False)

    def path(self, stream: Stream) -> Path:
        return self.directory / stream.value

    def size(self, stream: Stream) -> int:
        return self._sizes[stream]

    def sizes(self) -> dict[str, int]:
        """Bytes written per stream, as the job record shows them."""
        return {s.value: self._sizes[s] for s in WRITTEN_STREAMS}

    @property
    def total(self) -> int:
        return sum(self._sizes[s] for s in WRITTEN_STREAMS)

    def write(self, stream: Stream, data: bytes) -> None:
        """
        Append ``data`` to ``stream`` and the combined view.

        Raises ``OSError`` (e.g. ENOSPC) if the disk refuses; whatever part
        was written stays and is counted.
        """
        if self.closed:
            raise OutputClosed(self.directory.name)
        if stream not in WRITTEN_STREAMS:
            raise ValueError(f"cannot write to {stream.value}")
        try:
            self._append(stream, data)
            self._append(Stream.COMBINED, data)
        finally:
            self._schedule_wake()

    def _append(self, stream: Stream, data: bytes) -> None:
        view = memoryview(data)
        fd = self._fds[stream]
        while view:
            try:
                written = os.write(fd, view)
            except InterruptedError:
                continue
            if written == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._sizes[stream] += written
            view = view[written:]

    def close(self) -> None:
        """No more bytes will come: wake every waiter, release the files."""
        if self.closed:
            return
        self.closed = True
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._schedule_wake()

    def read(self, stream: Stream, offset: int, limit: int) -> OutputChunk:
        """What ``stream`` holds from ``offset`` now: at most ``limit`` bytes."""
        size = self._sizes[stream]
        if offset > size and self.closed:
            raise OffsetOutOfRange(stream, offset, size)
        data = b""
        if offset < size and limit > 0:
            data = _pread(self.path(stream), min(limit, size - offset), offset)
        end = offset + len(data)
        return OutputChunk(
            data=data,
            offset=offset,
            next_offset=end,
            complete=self.closed and end >= size,
        )

    def wait(self, stream: Stream, offset: int) -> Deferred[None]:
        """
        Fire once ``stream`` holds bytes past ``offset`` or the log is closed.

        Cancelling the Deferred (the reader went away) forgets the waiter.
        """
        if self.closed or self._sizes[stream] > offset:
            return succeed(None)
        waiters = self._waiters[stream]

        def forget(d: Deferred[None]) -> None:
            waiters[:] = [(o, w) for (o, w) in waiters if w is not d]

        waiter: Deferred[None] = Deferred(forget)
        waiters.append((offset, waiter))
        return waiter

    def waiter_count(self) -> int:
        """How many readers are waiting (for tests and metrics)."""
        return sum(len(w) for w in self._waiters.values())

    def _schedule_wake(self) -> None:
        if self._wake_call is None and any(self._waiters.values()):
            self._wake_call = self._reactor.callLater(0, self._wake)

    def _wake(self) -> None:
        self._wake_call = None
        for stream, waiters in self._waiters.items():
            size = self._sizes[stream]
            ready = [w for (o, w) in waiters if self.closed or size > o]
            waiters[:] = [(o, w) for (o, w) in waiters if not (self.closed or size > o)]
            for waiter in ready:
                waiter.callback(None)


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _pread(path: Path, length: int, offset: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)
