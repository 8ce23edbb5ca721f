"""
Output sent on as the client takes it: a follow stream (``follow=true``),
until the job ends; or the rest of a long answer to a plain read.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from jobworker.http.library import JobOutput
from jobworker.http.responses import OCTETS
from jobworker.wire import OFFSET_HEADER, Stream

# The most read from the output, and written to the connection, at once.
FOLLOW_CHUNK = 256 * 1024
# Module level: a Logger that is a class attribute takes its class's name.
log = Logger()


@implementer(IPushProducer)
class FollowStream:
    """
    Stream a job's output from an offset until the job ends; or, given an
    ``end``, the rest of a long-poll answer: the bytes up to ``end``, which
    are all there already, after the handler has set the headers.

    Bytes go from the output to the connection chunk by chunk. When the
    client reads slowly, the transport pauses us and we stop reading; we
    wait on the output when we have caught up with the writer. Nothing is
    buffered here beyond one chunk.
    """

    def __init__(
        self,
        request: Request,
        job_id: str,
        output: JobOutput,
        stream: Stream,
        offset: int,
        registry: set[FollowStream] | None = None,
        end: int | None = None,
    ) -> None:
        self._request = request
        self._job_id = job_id
        self._output = output
        self._stream = stream
        self.offset = offset
        self._registry = registry if registry is not None else set()
        self._end = end
        self.paused = False
        self._waiting: Deferred[None] | None = None
        self._done = False

    def start(self) -> Any:
        """Begin sending (with the headers of a follow stream, if it is one)."""
        request = self._request
        if self._end is None:
            request.setResponseCode(200)
            request.setHeader(b"Content-Type", OCTETS)
            request.setHeader(OFFSET_HEADER, str(self.offset).encode())
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(self._client_gone)
        self._registry.add(self)
        self._pump()
        return NOT_DONE_YET

    def _pump(self) -> None:
        while not self.paused and not self._done:
            want = FOLLOW_CHUNK
            if self._end is not None:
                want = min(want, self._end - self.offset)
                if want <= 0:
                    self._finish()
                    return
            try:
                chunk = self._output.read(self._stream, self.offset, want)
            except OSError as e:  # the files went away: the job was purged
                self._abort(e)
                return
            if chunk.data:
                self.offset = chunk.next_offset
                self._request.write(chunk.data)
                continue
            if self._end is not None:
                self._abort(None)  # fewer bytes than the answer promised
                return
            if chunk.complete:
                self._finish()
                return
            self._waiting = self._output.wait(self._stream, self.offset)
            self._waiting.addCallbacks(self._woken, lambda f: f.trap(CancelledError))
            return

    def _woken(self, _: None) -> None:
        self._waiting = None
        self._pump()

    def _finish(self) -> None:
        self._done = True
        self._registry.discard(self)
        self._request.unregisterProducer()
        self._request.finish()

    def _abort(self, error: OSError | None) -> None:
        """The body cannot be completed: cut the connection, so it shows."""
        log.warn(
            "output of {job_id} cut short at offset {offset}: {error}",
            job_id=self._job_id,
            offset=self.offset,
            error=error or "bytes missing",
        )
        self._done = True
        self._registry.discard(self)
        self._request.unregisterProducer()
        self._request.loseConnection()

    def _client_gone(self, reason: Failure) -> None:
        self._done = True
        self._registry.discard(self)
        if self._waiting is not None:
            self._waiting.cancel()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if self.paused and not self._done:
            self.paused = False
            if self._waiting is None:
                self._pump()

    def stopProducing(self) -> None:
        self._client_gone(Failure(CancelledError()))
