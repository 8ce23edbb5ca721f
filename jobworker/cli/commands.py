"""
The commands of jobworker-client: each takes an :class:`Invocation` (its
arguments, a client, the console) and returns an exit code.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from jobworker.cli.connection import Connection
from jobworker.cli.console import Console, Interrupt
from jobworker.cli.exits import Exit, UsageError, explain, job_exit_code
from jobworker.cli.job_request import job_spec
from jobworker.cli.options import shlex_split
from jobworker.cli.rendering import describe, ending_note, json_chunks, table
from jobworker.client import Conflict, ErrorResponse, JobRecord, JobworkerClient
from jobworker.tls import certificate_common_name
from jobworker.wire import JobStatus

FAILED_TO_START = JobStatus.FAILED_TO_START.value


@dataclass(frozen=True)
class Invocation:
    """One command to run: its parsed arguments and what it may use."""

    args: argparse.Namespace
    client: JobworkerClient
    console: Console
    interrupt: Interrupt
    connection: Connection

    @property
    def json(self) -> bool:
        return bool(self.args.json)


Command = Callable[[Invocation], Awaitable[int]]


async def start_command(run: Invocation) -> int:
    """Start every job given; print each id (or record) in order."""
    argvs = [shlex_split(job) for job in run.args.job]
    if run.args.command:
        argvs.append(run.args.command)
    specs = [job_spec(argv, run.args) for argv in argvs]

    async def start(spec: dict[str, Any]) -> int:
        job = await run.client.start(spec)
        if run.json:
            run.console.json(dict(job.raw))
        else:
            run.console.line(job.id)
        if job.status == FAILED_TO_START:
            run.console.error(ending_note(job) or f"job {job.id} failed to start")
            return Exit.FAILED_TO_START
        return Exit.OK

    return await for_each(run, specs, start)


async def stop_command(run: Invocation) -> int:
    async def stop(job_id: str) -> int:
        show_record(run, await run.client.stop(job_id, run.args.grace), short=True)
        return Exit.OK

    return await for_each(run, run.args.ids, stop)


async def status_command(run: Invocation) -> int:
    first = True

    async def status(job_id: str) -> int:
        nonlocal first
        job = await run.client.status(job_id)
        if not (first or run.json):
            run.console.line("")
        first = False
        show_record(run, job)
        return Exit.OK

    return await for_each(run, run.args.ids, status)


def show_record(run: Invocation, job: JobRecord, short: bool = False) -> None:
    if run.json:
        run.console.json(dict(job.raw))
    elif short:
        run.console.line(f"{job.id} {job.status}")
    else:
        for name, value in describe(job):
            run.console.line(f"{name + ':':<9} {value}")


async def list_command(run: Invocation) -> int:
    """The jobs of --owner, all we may read (--all), or by default our own."""
    status = ",".join(run.args.status) if run.args.status else None
    jobs = await run.client.list(status=status, owner=list_owner(run))
    if run.json:
        run.console.json({"jobs": [dict(job.raw) for job in jobs]})
    elif not jobs:
        run.console.line("no jobs")
    else:
        for row in table(jobs):
            run.console.line(row)
    return Exit.OK


def list_owner(run: Invocation) -> str | None:
    """Whose jobs ``list`` asks for; None: every job our role may read."""
    if run.args.all:
        return None
    if run.args.owner is not None:
        return str(run.args.owner)
    name = certificate_common_name(run.connection.cert, "client certificate")
    if name is None:
        raise UsageError(
            f"client certificate {run.connection.cert} has no single subject CN: "
            "give list --owner NAME or --all"
        )
    return name


async def purge_command(run: Invocation) -> int:
    async def purge(job_id: str) -> int:
        await run.client.purge(job_id)
        if run.json:
            run.console.json({"id": job_id, "purged": True})
        else:
            run.console.line(f"{job_id} purged")
        return Exit.OK

    return await for_each(run, run.args.ids, purge)


async def output_command(run: Invocation) -> int:
    job_id, stream, offset = run.args.id, run.args.stream, run.args.offset
    write = json_chunks(run.console, offset) if run.json else run.console.output
    if run.args.follow:
        end = await run.client.follow(job_id, write, stream, offset)
        complete = True
    else:
        end, complete = await read_available(run.client, job_id, stream, offset, write)
    if run.json:
        run.console.json({"event": "end", "next_offset": end, "complete": complete})
    return Exit.OK


async def read_available(
    client: JobworkerClient,
    job_id: str,
    stream: str,
    offset: int,
    write: Callable[[bytes], None],
) -> tuple[int, bool]:
    """Write what the stream holds now, in as many reads as it takes."""
    while True:
        chunk = await client.read(job_id, stream, offset)
        if chunk.data:
            write(chunk.data)
        offset = chunk.next_offset
        if chunk.complete or not chunk.data:
            return offset, chunk.complete


async def run_command(run: Invocation) -> int:
    """Start a job, follow its output, and end as it ended."""
    spec = job_spec(run.args.command, run.args)
    stopper = StopOnInterrupt(run)
    run.interrupt.first = stopper
    job = await run.client.start(spec)
    stopper.started(job.id)
    if run.json:
        run.console.json({"event": "started", "job": dict(job.raw)})
    write = json_chunks(run.console, 0) if run.json else run.console.output
    if job.status != FAILED_TO_START:
        await run.client.follow(job.id, write)
    job = await run.client.wait(job.id)
    return finish(run, job, interrupted=stopper.requested)


async def wait_command(run: Invocation) -> int:
    job = await run.client.wait(run.args.id)
    return finish(run, job, interrupted=False)


def finish(run: Invocation, job: JobRecord, interrupted: bool) -> int:
    """Report how a job ended; the exit code that says it."""
    if run.json:
        run.console.json({"event": "ended", "job": dict(job.raw)})
    note = ending_note(job)
    if note and not interrupted:
        run.console.error(note)
    return Exit.INTERRUPTED if interrupted else job_exit_code(job)


class StopOnInterrupt:
    """``run``'s first Ctrl-C: stop the job (once it has an id), keep following."""

    def __init__(self, run: Invocation) -> None:
        self._run = run
        self._job_id: str | None = None
        self.requested = False

    def __call__(self) -> None:
        self.requested = True
        if self._job_id is not None:
            self._stop(self._job_id)

    def started(self, job_id: str) -> None:
        self._job_id = job_id
        if self.requested:
            self._stop(job_id)

    def _stop(self, job_id: str) -> None:
        self._run.console.error(
            f"stopping job {job_id} (Ctrl-C again to leave it and exit)"
        )
        stopping = Deferred.fromCoroutine(self._run.client.stop(job_id))
        stopping.addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, Conflict):
            return  # it ended by itself meanwhile
        assert error is not None
        _, message = explain(error, "")
        self._run.console.error(f"could not stop the job: {message}")


async def for_each(
    run: Invocation, items: Iterable[Any], action: Callable[[Any], Awaitable[int]]
) -> int:
    """
    Do ``action`` to each item; an error answer for one does not keep the
    others from being tried. The exit code is the first failure's.
    """
    codes = []
    for item in items:
        try:
            codes.append(await action(item))
        except ErrorResponse as e:
            code, message = explain(e, "")
            run.console.error(message or str(e))
            codes.append(code)
    return next((code for code in codes if code != Exit.OK), Exit.OK)


COMMANDS: Mapping[str, Command] = {
    "start": start_command,
    "run": run_command,
    "stop": stop_command,
    "status": status_command,
    "list": list_command,
    "output": output_command,
    "wait": wait_command,
    "purge": purge_command,
}
