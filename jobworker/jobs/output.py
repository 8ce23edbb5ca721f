"""
A job's output: append-only files, byte offsets, and waiters.

Each job has two data files, ``stdout`` and ``stderr``, holding each stream's
raw bytes. The ``combined`` view (both, in the order the server read them) is
not a third copy: ``combined.index`` records where the view switches from one
stream to the other, as fixed-size records (offset in the view, stream, offset
in that stream). A job that writes to one stream only has a one-record index,
and every byte is written to disk once.

A byte's offset in its view is the only cursor a reader needs: reading
history and then waiting for more is one operation, so there is no gap or
duplicate between the two.

Readers that are ahead of the writer wait on a Deferred. The writer wakes them
in a later reactor turn (never re-entrantly from inside ``write``), once per
turn however many writes arrived. Nothing here holds output in memory beyond
one read's ``limit``.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from jobworker.jobs.datadir import NOFOLLOW, PRIVATE_FILE, private_directory
from jobworker.jobs.errors import StorageFull
from jobworker.wire import OutputChunk, Stream

WRITTEN_STREAMS = (Stream.STDOUT, Stream.STDERR)
INDEX_FILE = "combined.index"
# One index record: where a segment starts in the combined view, and where it
# starts in its stream, with the stream in the top bit (set for stderr).
INDEX_RECORD = struct.Struct("<QQ")
STDERR_BIT = 1 << 63


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
class OutputSpan:
    """Where a read from ``offset`` would end now, without reading the bytes."""

    offset: int
    end: int
    # The job has ended and the span reaches the end of its output.
    complete: bool


class OutputLog:
    """The output files of one job, and the readers waiting on them."""

    def __init__(self, directory: Path, reactor: IReactorTime, writable: bool) -> None:
        self.directory = directory
        self._reactor = reactor
        self._fds: dict[Stream, int] = {}
        self._index_fd: int | None = None
        self._sizes: dict[Stream, int] = {}
        self._last_stream: Stream | None = None
        self._waiters: dict[Stream, list[tuple[int, Deferred[None]]]] = {
            s: [] for s in Stream
        }
        self._wake_call: IDelayedCall | None = None
        self.closed = not writable
        if writable:
            # The files are made at their first byte (see _append): making a
            # file costs more than most short jobs' whole output, and a
            # missing one reads as empty.
            private_directory(directory)
        for stream in WRITTEN_STREAMS:
            self._sizes[stream] = _size_or_zero(self.path(stream))

    @classmethod
    def create(cls, directory: Path, reactor: IReactorTime) -> OutputLog:
        """
        A new, growing log for a job about to run; ``StorageFull`` if the
        disk has no room for it, and then nothing of it is left.
        """
        try:
            return cls(directory, reactor, writable=True)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            shutil.rmtree(directory, ignore_errors=True)
            raise StorageFull(f"no room for a new job's output: {e}") from e

    def remove(self) -> None:
        """Close the log and delete it: the job it was for never was."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    @classmethod
    def open_ended(cls, directory: Path, reactor: IReactorTime) -> OutputLog:
        """The finished log of an ended job; missing files read as empty."""
        return cls(directory, reactor, writable=False)

    def path(self, stream: Stream) -> Path:
        """The data file of stdout or stderr."""
        if stream not in WRITTEN_STREAMS:
            raise ValueError(f"{stream.value} has no file of its own")
        return self.directory / stream.value

    def size(self, stream: Stream) -> int:
        if stream is Stream.COMBINED:
            return self.total
        return self._sizes[stream]

    def sizes(self) -> dict[str, int]:
        """Bytes written per stream, as the job record shows them."""
        return {s.value: self._sizes[s] for s in WRITTEN_STREAMS}

    @property
    def total(self) -> int:
        return self._sizes[Stream.STDOUT] + self._sizes[Stream.STDERR]

    def write(self, stream: Stream, data: bytes) -> None:
        """
        Append ``data`` to ``stream`` (and so to the combined view).

        Raises ``OSError`` (e.g. ENOSPC) if the disk refuses; whatever part
        was written stays and is counted.
        """
        if self.closed:
            raise OutputClosed(self.directory.name)
        if stream not in WRITTEN_STREAMS:
            raise ValueError(f"cannot write to {stream.value}")
        try:
            if stream is not self._last_stream:
                # The record goes first: after a crash between the two writes
                # it describes an empty segment, which reads as nothing.
                self._write_index_record(stream)
                self._last_stream = stream
            self._append(stream, data)
        finally:
            self._schedule_wake()

    def _write_index_record(self, stream: Stream) -> None:
        tag = STDERR_BIT if stream is Stream.STDERR else 0
        record = INDEX_RECORD.pack(self.total, tag | self._sizes[stream])
        if self._index_fd is None:
            self._index_fd = _open_append(self.directory / INDEX_FILE)
        if os.write(self._index_fd, record) != len(record):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _append(self, stream: Stream, data: bytes) -> None:
        view = memoryview(data)
        fd = self._fds.get(stream)
        if fd is None:
            fd = self._fds[stream] = _open_append(self.path(stream))
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
        if self._index_fd is not None:
            os.close(self._index_fd)
            self._index_fd = None
        self._schedule_wake()

    def read(self, stream: Stream, offset: int, limit: int) -> OutputChunk:
        """What ``stream`` holds from ``offset`` now: at most ``limit`` bytes."""
        size = self.size(stream)
        if offset > size and self.closed:
            raise OffsetOutOfRange(stream, offset, size)
        data = b""
        if offset < size and limit > 0:
            length = min(limit, size - offset)
            if stream is Stream.COMBINED:
                data = self._read_combined(offset, length)
            else:
                data = _pread(self.path(stream), length, offset)
        end = offset + len(data)
        return OutputChunk(
            data=data,
            offset=offset,
            next_offset=end,
            complete=self.closed and end >= size,
        )

    def span(self, stream: Stream, offset: int, limit: int) -> OutputSpan:
        """
        The bytes ``read`` would answer now, as offsets: for a reader that
        sends them on piece by piece rather than holding them all at once.
        """
        size = self.size(stream)
        if offset > size and self.closed:
            raise OffsetOutOfRange(stream, offset, size)
        end = max(offset, min(size, offset + max(limit, 0)))
        return OutputSpan(offset, end, complete=self.closed and end >= size)

    def _read_combined(self, offset: int, length: int) -> bytes:
        """Stitch ``length`` bytes of the combined view from the two files."""
        size = self.total
        pieces: list[bytes] = []
        with CombinedIndex(self.directory / INDEX_FILE) as index:
            i = index.find(offset)
            while length > 0 and i < index.count:
                start, stream, stream_offset = index.record(i)
                end = index.record(i + 1)[0] if i + 1 < index.count else size
                take = min(length, end - offset)
                if take > 0:
                    where = stream_offset + offset - start
                    piece = _pread(self.path(stream), take, where)
                    pieces.append(piece)
                    if len(piece) < take:
                        break  # a crash cut the segment short
                    offset += take
                    length -= take
                i += 1
        return b"".join(pieces)

    def wait(self, stream: Stream, offset: int) -> Deferred[None]:
        """
        Fire once ``stream`` holds bytes past ``offset`` or the log is closed.

        Cancelling the Deferred (the reader went away) forgets the waiter.
        """
        if self.closed or self.size(stream) > offset:
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
            size = self.size(stream)
            ready = [w for (o, w) in waiters if self.closed or size > o]
            waiters[:] = [(o, w) for (o, w) in waiters if not (self.closed or size > o)]
            for waiter in ready:
                waiter.callback(None)


class CombinedIndex:
    """Read access to ``combined.index``: records by number, binary search."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1
        self.count = 0

    def __enter__(self) -> CombinedIndex:
        try:
            self._fd = os.open(self._path, os.O_RDONLY | NOFOLLOW)
        except FileNotFoundError:
            return self
        # A trailing partial record (a crash mid-write) is ignored.
        self.count = os.fstat(self._fd).st_size // INDEX_RECORD.size
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)

    def record(self, i: int) -> tuple[int, Stream, int]:
        raw = os.pread(self._fd, INDEX_RECORD.size, i * INDEX_RECORD.size)
        start, tagged = INDEX_RECORD.unpack(raw)
        stream = Stream.STDERR if tagged & STDERR_BIT else Stream.STDOUT
        return start, stream, tagged & ~STDERR_BIT

    def find(self, offset: int) -> int:
        """The last record starting at or before ``offset``."""
        low, high = 0, self.count - 1
        while low < high:
            middle = (low + high + 1) // 2
            if self.record(middle)[0] <= offset:
                low = middle
            else:
                high = middle - 1
        return low


def _size_or_zero(path: Path) -> int:
    try:
        return path.lstat().st_size
    except FileNotFoundError:
        return 0


def _open_append(path: Path) -> int:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | NOFOLLOW
    return os.open(path, flags, PRIVATE_FILE)


def _pread(path: Path, length: int, offset: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)
