"""
jobworker-client: run and watch jobs on a jobworker server.

Usage:

    jobworker-client run -- make test        start, follow, exit with its code
    jobworker-client start -- sleep 60       start one job; prints its id
    jobworker-client start --job 'make lint' --job 'make docs'
                                             start several; one id per line
    jobworker-client output -f ID            follow a job's output
    jobworker-client status ID [ID...]       records of jobs
    jobworker-client list [--status running] [--owner NAME | --all]
                                             our jobs; --all: all we may read
    jobworker-client stop [--grace 5] ID [ID...]
    jobworker-client wait ID                 block until it ends; exit with its code
    jobworker-client purge ID [ID...]        delete ended jobs and their output

The server and credentials come from --server, --ca, --cert and --key, or
JOBWORKER_SERVER, JOBWORKER_CA, JOBWORKER_CERT and JOBWORKER_KEY. Without
them: https://127.0.0.1:8443 and the development PKI in ./certs: ca.pem,
and USER.pem and USER.key for --user (or JOBWORKER_USER, default alice).

Every command takes --json for scripts. start, stop and status print one
record per line; list prints {"jobs": [...]}; wait prints {"event":
"ended", "job": ...}. output and run print JSON lines: {"event": "output",
"offset": N, "data": BASE64} per chunk, then output ends with {"event":
"end", "next_offset": N, "complete": true|false} and run with its "ended"
line (run begins with {"event": "started", "job": ...}).

A job's output is written to stdout byte for byte, as it arrives.
Errors are one line on stderr.

Exit codes:
  0    success
  1    unexpected error (a bug: please report it)
  2    invalid arguments, unusable certificate or key files, or a request
       the server refused as invalid (400, 413, 416)
  3    cannot reach the server: refused, unreachable, connection lost
  4    the server's certificate is not trusted (other CA, other host name)
  5    the server refused our certificate (other CA, expired, missing)
  6    permission denied (403)
  7    no such job, or not one we may see (404)
  8    conflict (409): stopping an ended job, purging a running one
  9    other server error (429 too many jobs, 503 shutting down, 5xx)
  141  stdout was closed (broken pipe)
run and wait exit with the job's outcome instead:
  N        the job exited with code N (a job's code may equal one above)
  128+N    the job was killed by signal N (137: SIGKILL, 143: SIGTERM)
  124      the job timed out
  125      the job was lost: the server stopped while it ran
  127      the job failed to start (command not found, not executable)
  130      interrupted by Ctrl-C (run first stops the job, waits for it)
"""

from __future__ import annotations

import argparse
import base64
import enum
import json
import os
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, NoReturn

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import react
from twisted.python.failure import Failure

from jobworker.client import (
    DEFAULT_SERVER,
    AccessDenied,
    BadRequest,
    CertificateRejected,
    Conflict,
    ConnectionFailed,
    ErrorResponse,
    JobRecord,
    JobworkerClient,
    NotFound,
    ServerNotTrusted,
)
from jobworker.jobs.spec import ENV_NAME, InvalidSpec, parse_size
from jobworker.tls import TLSConfigError
from jobworker.wire import JobStatus

PROG = "jobworker-client"
STREAMS = ("combined", "stdout", "stderr")
STATUSES = tuple(status.value for status in JobStatus)


class Exit(enum.IntEnum):
    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    CONNECTION = 3
    SERVER_NOT_TRUSTED = 4
    CERTIFICATE_REJECTED = 5
    FORBIDDEN = 6
    NOT_FOUND = 7
    CONFLICT = 8
    SERVER_ERROR = 9
    TIMED_OUT = 124
    LOST = 125
    FAILED_TO_START = 127
    INTERRUPTED = 130
    BROKEN_PIPE = 141


class UsageError(Exception):
    """The command line cannot be used; the message says why."""


# What a command works with


class Console:
    """Where a command writes: job output and lines to stdout, errors to stderr."""

    def __init__(self, stdout: IO[bytes], stderr: IO[str]) -> None:
        self.stdout = stdout
        self.stderr = stderr

    def output(self, data: bytes) -> None:
        """Job output: raw, and flushed at once so a reader sees it live."""
        self.stdout.write(data)
        self.stdout.flush()

    def line(self, text: str) -> None:
        # Through the same byte stream as job output, so the two keep order.
        self.output(text.encode("utf-8", "surrogateescape") + b"\n")

    def json(self, value: Any) -> None:
        self.line(json.dumps(value, sort_keys=True))

    def error(self, text: str) -> None:
        self.stderr.write(f"{PROG}: {text}\n")
        self.stderr.flush()


class Interrupt:
    """
    What Ctrl-C does. The first press runs ``first`` if the command set one
    (``run`` stops its job and keeps following); otherwise, and on a second
    press, ``cancel`` ends the command.
    """

    def __init__(self) -> None:
        self.first: Callable[[], None] | None = None
        self.cancel: Callable[[], None] = lambda: None
        self.presses = 0

    def __call__(self) -> None:
        self.presses += 1
        if self.presses == 1 and self.first is not None:
            self.first()
        else:
            self.cancel()


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


@dataclass(frozen=True)
class Connection:
    """Where the server is and which files prove who we are."""

    server: str
    ca: str
    cert: str
    key: str


Command = Callable[[Invocation], Awaitable[int]]
Connect = Callable[[Connection], JobworkerClient]


# Commands


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
        if job.status == "failed_to_start":
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
    return certificate_name(run.connection.cert)


def certificate_name(path: str) -> str:
    """Who the server takes us for: the subject CN of our certificate."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TLSConfigError(
            f"cannot read client certificate {path}: {e.strerror}"
        ) from None
    try:
        leaf = x509.load_pem_x509_certificates(data)[0]
    except ValueError:
        raise TLSConfigError(
            f"client certificate {path} is not a PEM certificate"
        ) from None
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = names[0].value if len(names) == 1 else None
    if not (isinstance(name, str) and name):
        raise UsageError(
            f"client certificate {path} has no single subject CN: "
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
    if job.status != "failed_to_start":
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


# Job requests and what jobs did


def job_spec(argv: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    """The API's job request from a command line and the job options."""
    argv = list(argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise UsageError("give the command to run (after --)")
    spec: dict[str, Any] = {"command": argv[0], "args": argv[1:]}
    if args.env:
        spec["env"] = dict(args.env)
    if args.cwd is not None:
        spec["cwd"] = args.cwd
    if args.timeout is not None:
        spec["timeout"] = args.timeout
    limits = present(cpu=args.cpu, memory=args.memory, pids=args.pids)
    io = present(
        read_bps=args.io_read_bps,
        write_bps=args.io_write_bps,
        read_iops=args.io_read_iops,
        write_iops=args.io_write_iops,
    )
    if io:
        limits["io"] = io
    if limits:
        spec["limits"] = limits
    if args.network is not None:
        spec["isolation"] = {"network": args.network}
    return spec


def present(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def job_exit_code(job: JobRecord) -> int:
    """The exit code that tells how a job ended, as a shell would."""
    if job.status == "failed_to_start":
        return Exit.FAILED_TO_START
    if job.status == "timed_out":
        return Exit.TIMED_OUT
    if job.status == "lost":
        return Exit.LOST
    if job.signal is not None:
        return 128 + job.signal
    if job.exit_code is not None:
        return job.exit_code
    return Exit.UNEXPECTED


def ending_note(job: JobRecord) -> str | None:
    """A line for stderr when a job ended other than by exiting."""
    what = f"job {job.id}"
    if job.status == "failed_to_start":
        return f"{what} failed to start: {job.error or 'unknown error'}"
    notes = {
        "timed_out": f"{what} timed out",
        "lost": f"{what} was lost: the server stopped while it ran",
        "stopped": f"{what} was stopped",
    }
    note = notes.get(job.status)
    if job.signal is not None:
        killed = f"{what} was killed by {signal_name(job.signal)}"
        note = f"{note} ({signal_name(job.signal)})" if note else killed
    if job.oom_killed:
        note = f"{note or what}: out of memory (the OOM killer ended it)"
    if job.error and note:
        note = f"{note}: {job.error}"
    elif job.error:
        note = f"{what}: {job.error}"
    return note


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# Human output


def show_record(run: Invocation, job: JobRecord, short: bool = False) -> None:
    if run.json:
        run.console.json(dict(job.raw))
    elif short:
        run.console.line(f"{job.id} {job.status}")
    else:
        for name, value in describe(job):
            run.console.line(f"{name + ':':<9} {value}")


def describe(job: JobRecord) -> list[tuple[str, str]]:
    """A record as labelled lines, for people."""
    lines = [
        ("id", job.id),
        ("owner", job.owner),
        ("command", shlex.join(job.argv)),
        ("status", outcome(job)),
        ("created", when(job.created_at)),
        ("started", when(job.started_at)),
        ("ended", when(job.ended_at)),
        ("run as", job.run_as or "-"),
        ("output", f"stdout {size(job.stdout_bytes)}, stderr {size(job.stderr_bytes)}"),
    ]
    if job.usage is not None:
        usage = job.usage
        peak = "-" if usage.memory_peak is None else size(usage.memory_peak)
        lines.append(
            (
                "usage",
                f"cpu {usage.cpu_seconds:.2f} s, memory peak {peak}, "
                f"read {size(usage.io_read_bytes)}, "
                f"written {size(usage.io_write_bytes)}",
            )
        )
    if job.error:
        lines.append(("error", job.error))
    return lines


def outcome(job: JobRecord) -> str:
    details = []
    if job.exit_code is not None:
        details.append(f"exit code {job.exit_code}")
    if job.signal is not None:
        details.append(signal_name(job.signal))
    if job.oom_killed:
        details.append("out of memory")
    return job.status + (f" ({', '.join(details)})" if details else "")


def table(jobs: Sequence[JobRecord]) -> list[str]:
    """The rows of ``list``: aligned columns, the command last and whole."""
    rows = [("ID", "OWNER", "STATUS", "EXIT", "STARTED (UTC)", "COMMAND")]
    for job in jobs:
        rows.append(
            (
                job.id,
                job.owner,
                job.status,
                exit_column(job),
                when(job.started_at or job.created_at),
                shlex.join(job.argv),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]


def exit_column(job: JobRecord) -> str:
    if job.signal is not None:
        return signal_name(job.signal)
    return "-" if job.exit_code is None else str(job.exit_code)


def when(timestamp: str | None) -> str:
    """An API time (UTC, ISO 8601) to the second, for reading."""
    if not timestamp:
        return "-"
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def json_chunks(console: Console, offset: int) -> Callable[[bytes], None]:
    """A follow writer that emits each chunk as a JSON line."""
    position = offset

    def write(data: bytes) -> None:
        nonlocal position
        encoded = base64.b64encode(data).decode("ascii")
        console.json({"event": "output", "offset": position, "data": encoded})
        position += len(data)

    return write


# Errors


def explain(error: BaseException, server: str) -> tuple[int, str | None]:
    """
    The one place where an error becomes an exit code and a one-line
    message (None: say nothing, the code says it all).
    """
    where = f"{server}: " if server else ""
    if isinstance(error, UsageError):
        return Exit.USAGE, str(error)
    if isinstance(error, TLSConfigError):
        return Exit.USAGE, (
            f"{error} (give --ca, --cert and --key, or set JOBWORKER_CA, "
            "JOBWORKER_CERT and JOBWORKER_KEY)"
        )
    if isinstance(error, ConnectionFailed):
        return Exit.CONNECTION, f"cannot reach {server or 'the server'}: {error}"
    if isinstance(error, ServerNotTrusted):
        return Exit.SERVER_NOT_TRUSTED, (
            f"{where}{error} (is --ca the CA that signed the server's certificate?)"
        )
    if isinstance(error, CertificateRejected):
        return Exit.CERTIFICATE_REJECTED, (
            f"{where}{error} (is --cert signed by the server's client CA, "
            "and still valid?)"
        )
    if isinstance(error, AccessDenied):
        return Exit.FORBIDDEN, f"permission denied: {error.message}"
    if isinstance(error, NotFound):
        return Exit.NOT_FOUND, error.message
    if isinstance(error, Conflict):
        return Exit.CONFLICT, error.message
    if isinstance(error, BadRequest):
        return Exit.USAGE, f"invalid request: {error.message}"
    if isinstance(error, ErrorResponse):
        return Exit.SERVER_ERROR, (
            f"server error {error.status} ({error.code}): {error.message}"
        )
    if isinstance(error, CancelledError | KeyboardInterrupt):
        return Exit.INTERRUPTED, None
    if isinstance(error, BrokenPipeError):
        return Exit.BROKEN_PIPE, None
    return Exit.UNEXPECTED, f"unexpected error: {type(error).__name__}: {error}"


async def dispatch(
    args: argparse.Namespace,
    connect: Connect,
    console: Console,
    interrupt: Interrupt,
    environ: Mapping[str, str],
) -> int:
    """Run the command ``args`` name; any error becomes a line and a code."""
    server = ""
    try:
        connection = connection_from(args, environ)
        server = connection.server
        client = connect(connection)
        try:
            return await COMMANDS[args.name](
                Invocation(args, client, console, interrupt, connection)
            )
        finally:
            await client.close()
    except Exception as e:
        code, message = explain(e, server)
        if message:
            console.error(message)
        return code


def connection_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Connection:
    """Flags first, then the environment, then the development PKI in certs/."""
    user = args.user or environ.get("JOBWORKER_USER") or "alice"
    server = args.server or environ.get("JOBWORKER_SERVER") or DEFAULT_SERVER
    return Connection(
        server=server_url(server),
        ca=args.ca or environ.get("JOBWORKER_CA") or os.path.join("certs", "ca.pem"),
        cert=args.cert
        or environ.get("JOBWORKER_CERT")
        or os.path.join("certs", f"{user}.pem"),
        key=args.key
        or environ.get("JOBWORKER_KEY")
        or os.path.join("certs", f"{user}.key"),
    )


def server_url(text: str) -> str:
    """``host:port`` or an https URL; the API is under /v1 of it."""
    if "://" not in text:
        text = "https://" + text
    if not text.startswith("https://"):
        raise UsageError(f"--server {text}: the server speaks HTTPS only")
    return text.rstrip("/")


# The command line


class ArgumentParser(argparse.ArgumentParser):
    """Usage errors raise instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()
        raise UsageError(f"{command}: {message}" if command else message)


def shlex_split(text: str) -> list[str]:
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise UsageError(f"--job {text!r}: {e}") from None
    if not argv:
        raise UsageError("--job: give a command")
    return argv


def size_value(text: str) -> int:
    try:
        return parse_size(text, "size")
    except InvalidSpec:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size such as 268435456, 512K, 256M or 2G"
        ) from None


def positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return value

    convert.__name__ = kind.__name__
    return convert


def non_negative_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def grace_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError("give seconds from 0 to 3600")
    return value


def env_pair(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not ENV_NAME.match(name):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def status_names(text: str) -> list[str]:
    names = [s for s in text.split(",") if s]
    for name in names:
        if name not in STATUSES:
            raise argparse.ArgumentTypeError(
                f"{name!r} is not one of {', '.join(STATUSES)}"
            )
    return names


def owner_name(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("give a name (or --all for everyone's)")
    return text


def add_common(parser: argparse.ArgumentParser, top: bool) -> None:
    """
    Connection options and --json, accepted before and after the command.
    After it, they default to SUPPRESS so that they do not hide a value
    given before it.
    """
    default = None if top else argparse.SUPPRESS
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--server",
        metavar="URL",
        default=default,
        help=f"server URL (env JOBWORKER_SERVER; default {DEFAULT_SERVER})",
    )
    group.add_argument(
        "--ca",
        metavar="FILE",
        default=default,
        help="CA certificate of the server (env JOBWORKER_CA; default certs/ca.pem)",
    )
    group.add_argument(
        "--cert",
        metavar="FILE",
        default=default,
        help="our certificate (env JOBWORKER_CERT; default certs/USER.pem)",
    )
    group.add_argument(
        "--key",
        metavar="FILE",
        default=default,
        help="our private key (env JOBWORKER_KEY; default certs/USER.key)",
    )
    group.add_argument(
        "--user",
        metavar="USER",
        default=default,
        help="who to be with the dev PKI in certs/ (env JOBWORKER_USER; default alice)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="machine-readable output (see jobworker-client --help)",
    )


def add_job_options(parser: argparse.ArgumentParser) -> None:
    job = parser.add_argument_group("job")
    job.add_argument(
        "--env",
        metavar="NAME=VALUE",
        type=env_pair,
        action="append",
        default=[],
        help="environment variable (repeatable); the job gets only these",
    )
    job.add_argument("--cwd", metavar="DIR", help="working directory (absolute)")
    job.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=positive(float),
        help="stop the job after this long",
    )
    job.add_argument(
        "--network",
        choices=("none", "host"),
        help="none: only its own loopback (default); host: if policy allows",
    )
    limits = parser.add_argument_group("limits (default: the server's)")
    limits.add_argument("--cpu", metavar="CPUS", type=positive(float), help="e.g. 0.5")
    limits.add_argument("--memory", metavar="SIZE", type=size_value, help="e.g. 256M")
    limits.add_argument(
        "--pids", metavar="N", type=positive(int), help="processes and threads"
    )
    for name, metavar, kind, example in [
        ("io-read-bps", "SIZE", size_value, "bytes read per second, e.g. 20M"),
        ("io-write-bps", "SIZE", size_value, "bytes written per second, e.g. 10M"),
        ("io-read-iops", "N", positive(int), "read operations per second"),
        ("io-write-iops", "N", positive(int), "write operations per second"),
    ]:
        limits.add_argument(f"--{name}", metavar=metavar, type=kind, help=example)


def command_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND [ARG...]",
        help="the command and its arguments; no shell is involved "
        "(use -- sh -c '...' for one)",
    )


def parser() -> ArgumentParser:
    doc = __doc__ or ""
    top = ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run and watch jobs on a jobworker server.",
        epilog=doc[doc.index("The server and") :],
    )
    commands = top.add_subparsers(
        title="commands",
        dest="name",
        metavar="COMMAND",
        required=True,
        parser_class=ArgumentParser,
    )
    add_common(top, top=True)

    def command(name: str, summary: str, details: str = "") -> ArgumentParser:
        sub: ArgumentParser = commands.add_parser(
            name,
            help=summary,
            description=summary + ("\n\n" + details if details else ""),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_common(sub, top=False)
        return sub

    start = command(
        "start",
        "start one or several jobs; print their ids",
        "One job:      jobworker-client start [options] -- COMMAND [ARG...]\n"
        "Several jobs: jobworker-client start [options] --job 'CMD ARG' "
        "--job 'CMD ARG'\n\n"
        "Each --job is split into words as a shell would (quotes, "
        "backslashes),\nbut no shell runs it. The options apply to every "
        "job. A job that\nfailed to start is reported, and the exit code "
        "is 127.",
    )
    add_job_options(start)
    start.add_argument(
        "--job",
        metavar="'CMD ARG...'",
        action="append",
        default=[],
        help="a job as one string (repeatable)",
    )
    command_argument(start)

    run = command(
        "run",
        "start a job, follow its output, exit with its exit code",
        "jobworker-client run [options] -- COMMAND [ARG...]\n\n"
        "The job's output (stdout and stderr, in order) goes to stdout.\n"
        "Ctrl-C stops the job (SIGTERM, then SIGKILL after the grace "
        "period),\nwaits for it to end and exits 130; Ctrl-C again leaves "
        "at once.",
    )
    add_job_options(run)
    command_argument(run)

    stop = command("stop", "stop jobs: SIGTERM, then SIGKILL after the grace")
    stop.add_argument(
        "--grace",
        metavar="SECONDS",
        type=grace_value,
        help="seconds from SIGTERM to SIGKILL (default: the server's, 10)",
    )
    stop.add_argument("ids", nargs="+", metavar="ID")

    status = command("status", "show jobs' records")
    status.add_argument("ids", nargs="+", metavar="ID")

    listing = command(
        "list",
        "list our jobs, or with --all every job our role may read",
        "Our jobs are those owned by the subject CN of our certificate (--cert).",
    )
    listing.add_argument(
        "--status",
        type=status_names,
        action="extend",
        metavar="STATUS[,STATUS...]",
        help=f"only these: {', '.join(STATUSES)}",
    )
    whose = listing.add_mutually_exclusive_group()
    whose.add_argument(
        "--owner", metavar="NAME", type=owner_name, help="only this owner's jobs"
    )
    whose.add_argument(
        "--all",
        action="store_true",
        help="every job our role may read, whoever owns it",
    )

    output = command(
        "output",
        "write a job's output to stdout",
        "Without -f: what is there now. With -f: until the job ends, "
        "reconnecting\nif the connection drops, without losing or "
        "repeating a byte.",
    )
    output.add_argument("-f", "--follow", action="store_true", help="follow it")
    output.add_argument("--stream", choices=STREAMS, default="combined")
    output.add_argument(
        "--offset",
        metavar="N",
        type=non_negative_int,
        default=0,
        help="start at this byte of the stream",
    )
    output.add_argument("id", metavar="ID")

    wait = command("wait", "wait for a job to end; exit with its exit code")
    wait.add_argument("id", metavar="ID")

    purge = command("purge", "delete ended jobs and their output")
    purge.add_argument("ids", nargs="+", metavar="ID")
    return top


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line, or raise UsageError naming what is wrong."""
    args = parser().parse_args(argv)
    command = getattr(args, "command", None)
    if command is not None:
        args.command = command[1:] if command[:1] == ["--"] else command
        if args.name == "run" and not args.command:
            raise UsageError("run: give the command to run: run [options] -- CMD")
        if args.name == "start" and not (args.command or args.job):
            raise UsageError("start: give a command (-- CMD ARG...) or --job")
        # Parse them now: a bad one should stop everything before any starts.
        for text in getattr(args, "job", []):
            shlex_split(text)
    return args


# The entry point


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``jobworker-client`` console script."""
    console = Console(sys.stdout.buffer, sys.stderr)
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        console.error(f"{e} (see {PROG} --help)")
        raise SystemExit(Exit.USAGE) from None

    def run(reactor: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(_main(reactor, args, console))

    react(run)


async def _main(reactor: Any, args: argparse.Namespace, console: Console) -> None:
    interrupt = Interrupt()

    def on_sigint(number: int, frame: object) -> None:
        reactor.callFromThread(interrupt)

    def connect(connection: Connection) -> JobworkerClient:
        return JobworkerClient.from_files(
            reactor, connection.server, connection.ca, connection.cert, connection.key
        )

    # After the reactor's own handler, which would stop the reactor and exit 0.
    signal.signal(signal.SIGINT, on_sigint)
    running = Deferred.fromCoroutine(
        dispatch(args, connect, console, interrupt, os.environ)
    )
    interrupt.cancel = running.cancel
    code = await running
    if code == Exit.BROKEN_PIPE:
        # Nothing reads stdout: keep the interpreter's last flush from failing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(code)
