"""
Following a job's output across dropped connections: where a follow is,
and when to try again.

A follow is a series of ``follow=true`` requests, each from the first byte
not yet delivered, so a dropped connection loses and repeats nothing. The
requests themselves are the client's (:meth:`JobworkerClient.follow`); this
module holds the position and the policy of retrying.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from jobworker.client.errors import ConnectionFailed, JobworkerError
from jobworker.wire import OutputChunk

# How long follow() waits before each consecutive reconnection attempt. A
# delivered byte resets the count: only a connection that keeps failing
# without progress gives up.
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


class Cursor:
    """Where a follow is: the next offset to deliver, and who to deliver to."""

    def __init__(self, offset: int, write: Callable[[bytes], None]) -> None:
        self.offset = offset
        self._write = write
        # The server has accepted a request of this follow (a 200).
        self.answered = False
        # The follow was cancelled: deliver nothing more.
        self.abandoned = False

    def deliver(self, data: bytes) -> None:
        if self.abandoned:
            raise CancelledError("follow was cancelled")
        # Count a byte only once it was written: if write raises, it is not
        # ours to skip on the next attempt (and the error ends the follow).
        self._write(data)
        self.offset += len(data)


# One follow=true request from the cursor's offset, delivering to it until
# the server ends the response; and a plain read from an offset.
Attempt = Callable[[Cursor], Awaitable[None]]
Read = Callable[[int], Awaitable[OutputChunk]]


async def follow_output(
    attempt: Attempt,
    read: Read,
    clock: IReactorTime,
    write: Callable[[bytes], None],
    offset: int,
) -> int:
    """
    Deliver a stream from ``offset`` to ``write`` until the job has ended and
    everything is delivered; the offset after the last byte.

    Consecutive failures without progress are retried after the pauses in
    ``RETRY_DELAYS``, then the last error is raised. The first request is not
    retried: a server that cannot be reached at all is reported at once.
    """
    cursor = Cursor(offset, write)
    failures = 0
    while True:
        before = cursor.offset
        try:
            await attempt(cursor)
            # The server ended the stream cleanly. That is normally the job's
            # end, but a body delimited by closing the connection ends
            # cleanly too when cut short: ask, and pick up the rest.
            if await _catch_up(read, cursor):
                return cursor.offset
            error: JobworkerError = ConnectionFailed("the follow stream ended early")
        except ConnectionFailed as e:
            if cursor.offset == offset and not cursor.answered:
                raise
            error = e
        if cursor.offset > before:
            failures = 0  # progress: reconnect at once
            continue
        failures += 1
        if failures > len(RETRY_DELAYS):
            raise error
        await deferLater(clock, RETRY_DELAYS[failures - 1])


async def _catch_up(read: Read, cursor: Cursor) -> bool:
    """Deliver what a cleanly ended stream left out; True if complete."""
    chunk = await read(cursor.offset)
    if chunk.data:
        cursor.deliver(chunk.data)
    return chunk.complete
