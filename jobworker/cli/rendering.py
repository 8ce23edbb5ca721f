"""
Records, tables, sizes and times for people, how a job ended in one line,
and output chunks as JSON lines for scripts.
"""

from __future__ import annotations

import base64
import shlex
import signal
from collections.abc import Callable, Sequence
from datetime import datetime

from jobworker.cli.console import Console
from jobworker.client import JobRecord
from jobworker.wire import JobStatus


def ending_note(job: JobRecord) -> str | None:
    """A line for stderr when a job ended other than by exiting."""
    what = f"job {job.id}"
    if job.status == JobStatus.FAILED_TO_START.value:
        return f"{what} failed to start: {job.error or 'unknown error'}"
    notes = {
        JobStatus.TIMED_OUT.value: f"{what} timed out",
        JobStatus.LOST.value: f"{what} was lost: the server stopped while it ran",
        JobStatus.STOPPED.value: f"{what} was stopped",
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
        ("run as", run_as(job)),
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


def run_as(job: JobRecord) -> str:
    """``nobody (uid 65534, gid 65534)``; the ids alone for a job's own."""
    ids = None if job.uid is None else f"uid {job.uid}, gid {job.gid}"
    if job.run_as and ids:
        return f"{job.run_as} ({ids})"
    return job.run_as or ids or "-"


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
