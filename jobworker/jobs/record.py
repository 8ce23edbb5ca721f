"""
A job's record and the states it moves through.

The record is a frozen value: every change makes a new one (``evolve``), which
the manager persists before acting on it. The allowed transitions live in one
table; anything else is a bug and raises.
"""

from __future__ import annotations

import dataclasses
import secrets
from datetime import UTC, datetime
from typing import Any

from jobworker.jobs.spec import JobSpec
from jobworker.wire import JobStatus

ENDINGS = frozenset(
    {JobStatus.EXITED, JobStatus.STOPPED, JobStatus.TIMED_OUT, JobStatus.LOST}
)

# Which status may follow which. A job is created RUNNING (its record is
# written just before its process is spawned) or FAILED_TO_START. A stop (or
# a timeout) may come before the helper has exec'd the command, whose exec
# may then fail: the command never ran, so the job failed to start.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.RUNNING: ENDINGS | {JobStatus.STOPPING, JobStatus.FAILED_TO_START},
    JobStatus.STOPPING: ENDINGS | {JobStatus.FAILED_TO_START},
    JobStatus.EXITED: frozenset(),
    JobStatus.STOPPED: frozenset(),
    JobStatus.TIMED_OUT: frozenset(),
    JobStatus.FAILED_TO_START: frozenset(),
    JobStatus.LOST: frozenset(),
}


class IllegalTransition(Exception):
    """A job was asked to move to a status that cannot follow its own."""


def new_job_id() -> str:
    return secrets.token_hex(16)


def utc_now() -> str:
    """The current time as the API shows it: ISO 8601, milliseconds, UTC."""
    return format_time(datetime.now(UTC))


def format_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclasses.dataclass(frozen=True)
class Usage:
    """Resources a job consumed, as its cgroup counted them."""

    cpu_seconds: float = 0.0
    memory_peak: int | None = None
    io_read_bytes: int = 0
    io_write_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Job:
    """Everything the service knows about one job."""

    id: str
    owner: str
    spec: JobSpec
    status: JobStatus
    created_at: str
    run_as: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    error: str | None = None
    usage: Usage | None = None
    # Where to find the job's processes after a crash: the launch helper's pid,
    # which is also its session and process group id, and that process's start
    # time (to tell it from a later process that reuses the number).
    pid: int | None = None
    pid_start_time: int | None = None
    # The ids its command runs as: its run_as user's, one of its own (run_as
    # None on an isolating root server), or the server's.
    uid: int | None = None
    gid: int | None = None

    def evolve(self, **changes: Any) -> Job:
        """A copy with ``changes``; a change of status must be allowed."""
        status = changes.get("status", self.status)
        if status is not self.status and status not in TRANSITIONS[self.status]:
            raise IllegalTransition(
                f"job {self.id}: {self.status.value} -> {status.value}"
            )
        return dataclasses.replace(self, **changes)

    def to_json(self, output_bytes: dict[str, int] | None = None) -> dict[str, Any]:
        """The record as every endpoint returns it."""
        return {
            "id": self.id,
            "owner": self.owner,
            "command": self.spec.command,
            "args": list(self.spec.args),
            "env": dict(self.spec.env),
            "cwd": self.spec.cwd,
            "timeout": self.spec.timeout,
            "status": self.status.value,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "oom_killed": self.oom_killed,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "limits": self.spec.limits.to_json(),
            "isolation": self.spec.isolation.to_json(),
            "run_as": self.run_as,
            "uid": self.uid,
            "gid": self.gid,
            "usage": None if self.usage is None else self.usage.to_json(),
            "output_bytes": output_bytes or {"stdout": 0, "stderr": 0},
        }
