"""
:class:`JobworkerClient`: one method per call of the jobworker HTTPS API,
on treq, with typed results and errors.

The HTTP client and the clock are passed in, so tests run the real client
against a resource tree in memory (``treq.testing.StubTreq``) and a
``task.Clock``; :meth:`JobworkerClient.from_files` builds the real ones.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import treq
from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IResponse

from jobworker.client.connection import cancelled, translated
from jobworker.client.errors import error_response, unexpected_response
from jobworker.client.following import Cursor, follow_output
from jobworker.client.records import Health, JobRecord
from jobworker.tls import StrPath, client_tls_policy
from jobworker.wire import (
    COMPLETE_HEADER,
    NEXT_OFFSET_HEADER,
    OFFSET_HEADER,
    OutputChunk,
    Stream,
)

DEFAULT_SERVER = "https://127.0.0.1:8443"
# Ask for this long per long-poll: well under the server's limit (300 s), so
# a proxy or NAT that drops idle connections is less likely to cut it.
LONG_POLL_SECONDS = 30.0
CONNECT_TIMEOUT = 10.0
COMBINED = Stream.COMBINED.value


class JobworkerClient:
    """
    One method per API call. ``http`` is treq's ``HTTPClient`` (or
    ``StubTreq`` in tests); ``clock`` times the pauses between reconnection
    attempts in :meth:`follow`.
    """

    def __init__(
        self,
        base_url: str,
        http: HTTPClient,
        clock: IReactorTime,
        pool: HTTPConnectionPool | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._http = http
        self._clock = clock
        self._pool = pool

    @classmethod
    def from_files(
        cls,
        reactor: Any,
        server: str,
        ca: StrPath,
        cert: StrPath,
        key: StrPath,
    ) -> JobworkerClient:
        """
        A client that trusts the CA in ``ca`` and presents ``cert``/``key``.
        Connections are kept alive between requests. Raises
        ``jobworker.tls.TLSConfigError`` naming a file that cannot be used.
        """
        policy = client_tls_policy(ca, cert, key)
        pool = HTTPConnectionPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
        agent = Agent(  # type: ignore[no-untyped-call]
            reactor, contextFactory=policy, pool=pool, connectTimeout=CONNECT_TIMEOUT
        )
        return cls(server, HTTPClient(agent), reactor, pool)

    async def close(self) -> None:
        """Close kept-alive connections."""
        if self._pool is not None:
            await self._pool.closeCachedConnections()  # type: ignore[no-untyped-call]

    # Jobs

    async def start(self, spec: Mapping[str, Any]) -> JobRecord:
        """Start a job from a request as the API takes it (command, args, ...)."""
        return JobRecord.from_json(await self._json("POST", "/v1/jobs", body=spec))

    async def stop(self, job_id: str, grace: float | None = None) -> JobRecord:
        """Ask a running job to stop: SIGTERM, ``grace`` seconds, SIGKILL."""
        body = None if grace is None else {"grace": grace}
        path = f"{_job_path(job_id)}/stop"
        return JobRecord.from_json(await self._json("POST", path, body=body))

    async def status(self, job_id: str) -> JobRecord:
        return JobRecord.from_json(await self._json("GET", _job_path(job_id)))

    async def list(
        self, status: str | None = None, owner: str | None = None
    ) -> builtins.list[JobRecord]:
        """Jobs our role may read; ``status`` may name several, comma-separated."""
        params = [(k, v) for k, v in (("status", status), ("owner", owner)) if v]
        body = await self._json("GET", "/v1/jobs", params=params)
        jobs = body.get("jobs") if isinstance(body, dict) else None
        if not isinstance(jobs, builtins.list):
            raise unexpected_response(200, "no list of jobs in the answer")
        return [JobRecord.from_json(j) for j in jobs]

    async def purge(self, job_id: str) -> None:
        """Delete an ended job's record and output."""
        await self._call("DELETE", _job_path(job_id))

    async def health(self) -> Health:
        return Health.from_json(await self._json("GET", "/v1/healthz"))

    # Output

    async def read(
        self,
        job_id: str,
        stream: str = COMBINED,
        offset: int = 0,
        wait: float = 0,
        limit: int | None = None,
    ) -> OutputChunk:
        """
        What ``stream`` holds from ``offset`` now, or, if nothing yet and the
        job runs, once something arrives (at most ``wait`` seconds).
        """
        params = [("stream", stream), ("offset", str(offset))]
        if wait:
            params.append(("wait", f"{wait:g}"))
        if limit is not None:
            params.append(("limit", str(limit)))
        response, data = await self._call(
            "GET", f"{_job_path(job_id)}/output", params=params
        )
        return OutputChunk(
            data=data,
            offset=_int_header(response, OFFSET_HEADER, offset),
            next_offset=_int_header(response, NEXT_OFFSET_HEADER, offset + len(data)),
            complete=_header(response, COMPLETE_HEADER) == "true",
        )

    async def follow(
        self,
        job_id: str,
        write: Callable[[bytes], None],
        stream: str = COMBINED,
        offset: int = 0,
    ) -> int:
        """
        Hand ``stream``'s bytes from ``offset`` to ``write`` as they arrive,
        until the job has ended and everything is delivered; returns the
        offset after the last byte.

        If the connection drops mid-stream, follow again from the next
        undelivered byte: nothing is lost or repeated. Consecutive failures
        without progress are retried after the pauses in ``RETRY_DELAYS``,
        then the last error is raised. The first request is not retried: a
        server that cannot be reached at all is reported at once.
        """

        async def attempt(cursor: Cursor) -> None:
            await self._follow_once(job_id, stream, cursor)

        async def read(offset: int) -> OutputChunk:
            return await self.read(job_id, stream, offset)

        return await follow_output(attempt, read, self._clock, write, offset)

    async def _follow_once(self, job_id: str, stream: str, cursor: Cursor) -> None:
        params = [
            ("stream", stream),
            ("offset", str(cursor.offset)),
            ("follow", "true"),
        ]
        url = self._base + f"{_job_path(job_id)}/output"
        try:
            response = await self._http.request(
                "GET", url, params=params, unbuffered=True
            )
            if response.code != 200:
                data = await treq.content(response)
                raise error_response(response.code, response.phrase, data)
            cursor.answered = True
            await treq.collect(response, cursor.deliver)
        except Exception as e:
            if cancelled(e):
                # treq's collect cannot be cancelled: stop writing now, and
                # let the next chunk close the connection.
                cursor.abandoned = True
            ours = translated(e)
            if ours is e:
                raise
            raise ours from e

    async def wait(self, job_id: str) -> JobRecord:
        """
        The job's final record, once it has ended.

        The API has no long-poll on a record, so this long-polls the output
        (which completes when the job ends), skipping what was written before
        it was called. Output that arrives meanwhile is read and dropped.
        """
        record = await self.status(job_id)
        offset = record.stdout_bytes + record.stderr_bytes
        while not record.ended:
            chunk = await self.read(job_id, COMBINED, offset, wait=LONG_POLL_SECONDS)
            offset = chunk.next_offset
            if chunk.complete:
                record = await self.status(job_id)
        return record

    # HTTP

    async def _json(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: builtins.list[tuple[str, str]] | None = None,
    ) -> Any:
        response, data = await self._call(method, path, body, params)
        try:
            return json.loads(data)
        except ValueError:
            raise unexpected_response(response.code, "the answer is not JSON") from None

    async def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: builtins.list[tuple[str, str]] | None = None,
    ) -> tuple[IResponse, bytes]:
        """One request: the response and its whole body, or one of our errors."""
        kwargs: dict[str, Any] = {"params": params or []}
        if body is not None:
            kwargs["json"] = dict(body)
        try:
            response = await self._http.request(method, self._base + path, **kwargs)
            data = await treq.content(response)
        except Exception as e:
            ours = translated(e)
            if ours is e:
                raise
            raise ours from e
        if response.code >= 400:
            raise error_response(response.code, response.phrase, data)
        return response, data


def _job_path(job_id: str) -> str:
    # A job id is hex, but the user types it: never let it leave its segment.
    return "/v1/jobs/" + quote(job_id, safe="")


def _header(response: IResponse, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return None if not values else values[0].decode("ascii", "replace")


def _int_header(response: IResponse, name: bytes, default: int) -> int:
    value = _header(response, name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise unexpected_response(
            response.code, f"bad {name.decode().lower()} header"
        ) from None
