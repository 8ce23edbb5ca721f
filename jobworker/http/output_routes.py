"""
``/v1/jobs/{id}/output``: a job's bytes from an offset, at once or once
there are some (a long-poll, ``wait``), or as they come (``follow``).
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import NOT_DONE_YET

from jobworker.auth.policy import Action
from jobworker.http.endpoint import Call, JobRoute
from jobworker.http.follow import FOLLOW_CHUNK, FollowStream
from jobworker.http.parsing import Query
from jobworker.http.responses import OCTETS
from jobworker.jobs.output import OffsetOutOfRange
from jobworker.wire import COMPLETE_HEADER, NEXT_OFFSET_HEADER, OFFSET_HEADER


class OutputEndpoint(JobRoute):
    """``/v1/jobs/{id}/output``: read, long-poll or follow a job's output."""

    actions = {"GET": Action.READ}

    async def handle_GET(self, call: Call) -> Any:
        settings, request = self.api.settings, call.request
        query = Query(request, {"stream", "offset", "wait", "limit", "follow"})
        stream = query.stream()
        offset = query.integer("offset", 0, minimum=0)
        follow = query.boolean("follow")
        wait = query.number("wait", 0.0, maximum=settings.max_wait)
        limit = query.integer(
            "limit", settings.default_limit, minimum=1, maximum=settings.max_limit
        )
        self.visible_job(call, Action.READ)
        output = self.api.jobs.output_log(self.job_id)
        if follow:
            if offset > output.size(stream) and output.closed:
                raise OffsetOutOfRange(stream, offset, output.size(stream))
            return FollowStream(
                request, self.job_id, output, stream, offset, self.api.followers
            ).start()
        # The first piece, once there is one (or the wait is over); a larger
        # answer is sent on piece by piece as the client takes it: one large
        # write costs more per byte (allocations, copies) and holds the whole
        # answer in memory, twice over once encrypted.
        chunk = await self.api.jobs.read_output(
            self.job_id, stream, offset, min(limit, FOLLOW_CHUNK), wait
        )
        whole = limit if len(chunk.data) == FOLLOW_CHUNK else len(chunk.data)
        span = output.span(stream, offset, whole)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", OCTETS)
        request.setHeader(OFFSET_HEADER, str(span.offset).encode())
        request.setHeader(NEXT_OFFSET_HEADER, str(span.end).encode())
        request.setHeader(COMPLETE_HEADER, b"true" if span.complete else b"false")
        request.setHeader(b"Content-Length", str(span.end - span.offset).encode())
        if span.end > chunk.next_offset:
            # From the first byte again (one piece read twice): a producer
            # registered after a write that filled the transport's buffer is
            # never paused by twisted.web, and would write the whole answer.
            return FollowStream(
                request, self.job_id, output, stream, offset, end=span.end
            ).start()
        request.write(chunk.data)
        request.finish()
        return NOT_DONE_YET
