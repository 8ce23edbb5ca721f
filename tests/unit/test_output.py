"""OutputLog: offsets, waiters fired by the writer, binary safety."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from jobworker.jobs.output import (
    INDEX_RECORD,
    WRITTEN_STREAMS,
    OffsetOutOfRange,
    OutputClosed,
    OutputLog,
)
from jobworker.wire import Stream

ALL_BYTES = bytes(range(256))


class OutputLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.dir = Path(self.mktemp())
        self.log = OutputLog.create(self.dir, self.clock)
        self.addCleanup(self.log.close)

    def test_offsets_per_stream_and_combined(self) -> None:
        """Each stream has its own offsets; combined keeps the arrival order."""
        self.log.write(Stream.STDOUT, b"out1 ")
        self.log.write(Stream.STDERR, b"err ")
        self.log.write(Stream.STDOUT, b"out2")
        assert self.log.read(Stream.STDOUT, 0, 100).data == b"out1 out2"
        assert self.log.read(Stream.STDERR, 0, 100).data == b"err "
        assert self.log.read(Stream.COMBINED, 0, 100).data == b"out1 err out2"
        assert self.log.sizes() == {"stdout": 9, "stderr": 4}
        assert self.log.total == 13

    def test_files_are_made_at_their_first_byte(self) -> None:
        """A stream nothing was written to has no file (making one costs a
        short job more than its output), and reads as empty, also after
        the log is opened again."""
        self.log.write(Stream.STDOUT, b"out")
        self.log.close()
        assert sorted(p.name for p in self.dir.iterdir()) == [
            "combined.index", "stdout",
        ]  # fmt: skip
        again = OutputLog.open_ended(self.dir, self.clock)
        assert again.read(Stream.STDERR, 0, 10).data == b""
        assert again.read(Stream.COMBINED, 0, 10).data == b"out"
        silent = OutputLog.create(Path(self.mktemp()), self.clock)
        silent.close()
        assert list(silent.directory.iterdir()) == []
        assert silent.read(Stream.COMBINED, 0, 10).complete

    def test_read_from_offset_with_limit(self) -> None:
        """A read starts at its offset, stops at its limit, says where to go on."""
        self.log.write(Stream.STDOUT, b"0123456789")
        chunk = self.log.read(Stream.STDOUT, 3, 4)
        assert (chunk.data, chunk.offset, chunk.next_offset) == (b"3456", 3, 7)
        assert not chunk.complete

    def test_every_byte_value_round_trips(self) -> None:
        """All 256 byte values and invalid UTF-8 come back exactly."""
        data = ALL_BYTES + b"\xff\xfe\xc3\x28" + ALL_BYTES[::-1]
        self.log.write(Stream.STDOUT, data)
        assert self.log.read(Stream.STDOUT, 0, 10_000).data == data
        assert (self.dir / "stdout").read_bytes() == data

    def test_waiter_fires_in_a_later_turn(self) -> None:
        """A waiting reader is woken by a write, but not from inside write()."""
        waiting = self.log.wait(Stream.STDOUT, 0)
        self.log.write(Stream.STDOUT, b"x")
        self.assertNoResult(waiting)
        self.clock.advance(0)
        self.successResultOf(waiting)

    def test_waiter_ignores_other_stream(self) -> None:
        """A reader of stdout is not woken by stderr bytes."""
        waiting = self.log.wait(Stream.STDOUT, 0)
        self.log.write(Stream.STDERR, b"x")
        self.clock.advance(0)
        self.assertNoResult(waiting)

    def test_combined_waiter_woken_by_either_stream(self) -> None:
        """A reader of the combined view is woken by stderr too."""
        waiting = self.log.wait(Stream.COMBINED, 0)
        self.log.write(Stream.STDERR, b"x")
        self.clock.advance(0)
        self.successResultOf(waiting)

    def test_waiter_ahead_of_writer_keeps_waiting(self) -> None:
        """A reader at offset 5 is not woken by bytes that end before it."""
        self.log.write(Stream.STDOUT, b"abc")
        waiting = self.log.wait(Stream.STDOUT, 5)
        self.log.write(Stream.STDOUT, b"de")
        self.clock.advance(0)
        self.assertNoResult(waiting)
        self.log.write(Stream.STDOUT, b"f")
        self.clock.advance(0)
        self.successResultOf(waiting)

    def test_data_already_there_answers_at_once(self) -> None:
        """Waiting for bytes already written does not wait."""
        self.log.write(Stream.STDOUT, b"abc")
        self.successResultOf(self.log.wait(Stream.STDOUT, 2))

    def test_many_readers_woken_once_per_turn(self) -> None:
        """Any number of readers wait; many writes in one turn wake them once."""
        waiters = [self.log.wait(Stream.COMBINED, 0) for _ in range(100)]
        for _ in range(10):
            self.log.write(Stream.STDOUT, b"x")
        assert len(self.clock.getDelayedCalls()) == 1
        self.clock.advance(0)
        for waiting in waiters:
            self.successResultOf(waiting)
        assert self.log.waiter_count() == 0

    def test_cancelled_wait_leaves_nothing(self) -> None:
        """A reader that goes away leaves no waiter behind."""
        waiting = self.log.wait(Stream.STDOUT, 0)
        assert self.log.waiter_count() == 1
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        assert self.log.waiter_count() == 0
        self.log.write(Stream.STDOUT, b"x")
        assert self.clock.getDelayedCalls() == []

    def test_close_wakes_every_waiter(self) -> None:
        """Closing the log answers every reader, and reads say complete."""
        waiters = [self.log.wait(s, 0) for s in Stream]
        self.log.write(Stream.STDOUT, b"x")
        self.log.close()
        self.clock.advance(0)
        for waiting in waiters:
            self.successResultOf(waiting)
        assert self.log.read(Stream.STDOUT, 0, 10).complete
        assert not self.log.read(Stream.STDOUT, 0, 0).complete
        assert self.log.read(Stream.STDERR, 0, 10).complete

    def test_offset_past_end_of_closed_log(self) -> None:
        """Past the end of output that will not grow is an error, not a wait."""
        self.log.write(Stream.STDOUT, b"abc")
        assert self.log.read(Stream.STDOUT, 3, 10).data == b""
        self.log.close()
        with pytest.raises(OffsetOutOfRange):
            self.log.read(Stream.STDOUT, 4, 10)
        assert self.log.read(Stream.STDOUT, 3, 10).complete

    def test_write_after_close_refused(self) -> None:
        """A closed log takes no more bytes."""
        self.log.close()
        with pytest.raises(OutputClosed):
            self.log.write(Stream.STDOUT, b"late")

    def test_reopen_after_restart(self) -> None:
        """An ended job's files read back the same from a new log object."""
        self.log.write(Stream.STDOUT, ALL_BYTES)
        self.log.write(Stream.STDERR, b"e")
        self.log.close()
        again = OutputLog.open_ended(self.dir, self.clock)
        assert again.closed
        assert again.sizes() == {"stdout": 256, "stderr": 1}
        assert again.read(Stream.COMBINED, 0, 1000).data == ALL_BYTES + b"e"

    def test_missing_files_read_as_empty(self) -> None:
        """A job that never wrote (or never ran) has empty, complete output."""
        log = OutputLog.open_ended(Path(self.mktemp()), self.clock)
        chunk = log.read(Stream.COMBINED, 0, 10)
        assert (chunk.data, chunk.complete) == (b"", True)


WRITES = st.lists(
    st.tuples(st.sampled_from(WRITTEN_STREAMS), st.binary(min_size=1, max_size=40)),
    max_size=30,
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(writes=WRITES, offset=st.integers(0, 1300), limit=st.integers(1, 1300))
def test_combined_view_matches_arrival_order(
    tmp_path_factory: pytest.TempPathFactory,
    writes: list[tuple[Stream, bytes]],
    offset: int,
    limit: int,
) -> None:
    """Any read of the combined view equals the same slice of all writes in order."""
    log = OutputLog.create(tmp_path_factory.mktemp("out"), Clock())
    for stream, data in writes:
        log.write(stream, data)
    everything = b"".join(data for _, data in writes)
    assert log.size(Stream.COMBINED) == len(everything)
    if offset <= len(everything):
        assert (
            log.read(Stream.COMBINED, offset, limit).data
            == everything[offset : offset + limit]
        )
    log.close()
    again = OutputLog.open_ended(log.directory, Clock())
    whole = again.read(Stream.COMBINED, 0, 1 << 20)
    assert (whole.data, whole.complete) == (everything, True)


def test_combined_is_not_a_copy(tmp_path: Path) -> None:
    """One stream's bytes are written once; the index only marks switches."""
    log = OutputLog.create(tmp_path, Clock())
    for _ in range(100):
        log.write(Stream.STDOUT, b"x" * 1000)
    log.write(Stream.STDERR, b"e")
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "combined.index",
        "stderr",
        "stdout",
    ]
    assert (tmp_path / "combined.index").stat().st_size == 2 * INDEX_RECORD.size


def test_index_torn_by_a_crash_reads_what_is_there(tmp_path: Path) -> None:
    """A partial index record, or a record whose bytes never came, reads cleanly."""
    log = OutputLog.create(tmp_path, Clock())
    log.write(Stream.STDOUT, b"out")
    log.write(Stream.STDERR, b"err")
    log.close()
    with open(tmp_path / "combined.index", "ab") as index:
        # a switch back to stdout was recorded, its bytes were not written,
        # and a further record was cut short
        index.write(INDEX_RECORD.pack(6, 3))
        index.write(b"\x01\x02")
    again = OutputLog.open_ended(tmp_path, Clock())
    assert again.read(Stream.COMBINED, 0, 100).data == b"outerr"
