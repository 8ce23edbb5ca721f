"""
A job's record as a row of the store's ``jobs`` table, and back.

The database keeps a form of its own, so that the API's JSON
(``Job.to_json``) and the database can change apart: nothing here goes
through a ``to_json`` or the request parser. What changes over a job's life
is one column a field. The request it was started with, which never
changes, is one JSON document in the ``spec`` column, its keys this
module's; JSON because a request's numbers may be larger than SQLite's
64-bit integers.

``COLUMNS`` must be the table's columns at the newest version of
``jobworker.jobs.schema``; a test holds the two together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from jobworker.jobs.record import Job, Usage
from jobworker.jobs.spec import IOLimits, Isolation, JobSpec, Limits
from jobworker.wire import JobStatus

COLUMNS = (
    "id",
    "owner",
    "status",
    "created_at",
    "run_as",
    "started_at",
    "ended_at",
    "exit_code",
    "signal",
    "oom_killed",
    "error",
    "pid",
    "pid_start_time",
    # NULL when the job has no usage: cpu_seconds is always counted.
    "usage_cpu_seconds",
    "usage_memory_peak",
    "usage_io_read_bytes",
    "usage_io_write_bytes",
    "spec",
    "uid",
    "gid",
)
# What a save may change once the row exists: everything but its key.
UPDATED = tuple(name for name in COLUMNS if name != "id")


def job_to_row(job: Job) -> dict[str, Any]:
    """``job`` as column values, by column name."""
    usage = job.usage
    return {
        "id": job.id,
        "owner": job.owner,
        "status": job.status.value,
        "created_at": job.created_at,
        "run_as": job.run_as,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "exit_code": job.exit_code,
        "signal": job.signal,
        "oom_killed": int(job.oom_killed),
        "error": job.error,
        "pid": job.pid,
        "pid_start_time": job.pid_start_time,
        "usage_cpu_seconds": None if usage is None else usage.cpu_seconds,
        "usage_memory_peak": None if usage is None else usage.memory_peak,
        "usage_io_read_bytes": None if usage is None else usage.io_read_bytes,
        "usage_io_write_bytes": None if usage is None else usage.io_write_bytes,
        "spec": json.dumps(spec_to_document(job.spec), separators=(",", ":")),
        "uid": job.uid,
        "gid": job.gid,
    }


def job_from_row(row: Mapping[str, Any]) -> Job:
    """Rebuild the job that :func:`job_to_row` made ``row`` of."""
    return Job(
        id=row["id"],
        owner=row["owner"],
        spec=spec_from_document(json.loads(row["spec"])),
        status=JobStatus(row["status"]),
        created_at=row["created_at"],
        run_as=row["run_as"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        exit_code=row["exit_code"],
        signal=row["signal"],
        oom_killed=bool(row["oom_killed"]),
        error=row["error"],
        usage=_usage_from_row(row),
        pid=row["pid"],
        pid_start_time=row["pid_start_time"],
        uid=row["uid"],
        gid=row["gid"],
    )


def _usage_from_row(row: Mapping[str, Any]) -> Usage | None:
    if row["usage_cpu_seconds"] is None:
        return None
    return Usage(
        cpu_seconds=row["usage_cpu_seconds"],
        memory_peak=row["usage_memory_peak"],
        io_read_bytes=row["usage_io_read_bytes"],
        io_write_bytes=row["usage_io_write_bytes"],
    )


def spec_to_document(spec: JobSpec) -> dict[str, Any]:
    """The ``spec`` column's document: one flat object."""
    limits = spec.limits
    return {
        "command": spec.command,
        "args": list(spec.args),
        "env": dict(spec.env),
        "cwd": spec.cwd,
        "timeout": spec.timeout,
        "cpu": limits.cpu,
        "memory": limits.memory,
        "pids": limits.pids,
        "read_bps": limits.io.read_bps,
        "write_bps": limits.io.write_bps,
        "read_iops": limits.io.read_iops,
        "write_iops": limits.io.write_iops,
        "network": spec.isolation.network,
    }


def spec_from_document(document: Mapping[str, Any]) -> JobSpec:
    """The request :func:`spec_to_document` made ``document`` of."""
    return JobSpec(
        command=document["command"],
        args=tuple(document["args"]),
        env=dict(document["env"]),
        cwd=document["cwd"],
        timeout=_float(document["timeout"]),
        limits=Limits(
            cpu=_float(document["cpu"]),
            memory=document["memory"],
            pids=document["pids"],
            io=IOLimits(
                read_bps=document["read_bps"],
                write_bps=document["write_bps"],
                read_iops=document["read_iops"],
                write_iops=document["write_iops"],
            ),
        ),
        isolation=Isolation(network=document["network"]),
    )


def _float(value: float | None) -> float | None:
    """A float, as the record's type says, though a whole number was given."""
    return None if value is None else float(value)
