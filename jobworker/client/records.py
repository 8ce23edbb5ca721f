"""
What the server's answers describe, parsed: a job's record with its
resource usage, and the health report.

A record keeps its JSON as received (``raw``), so that a field a newer
server adds reaches ``--json`` output, and its status stays a string, so
that a status a newer server adds does not break this client. A body of
another shape is an ``ErrorResponse`` with the client's own code
``unexpected_response``, never a ``KeyError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from jobworker.client.errors import unexpected_response
from jobworker.wire import JobStatus, Stream

ENDED = frozenset(status.value for status in JobStatus if status.ended)


@dataclass(frozen=True)
class UsageReport:
    """Resources a job consumed, as the server's cgroup counted them."""

    cpu_seconds: float
    memory_peak: int | None
    io_read_bytes: int
    io_write_bytes: int


@dataclass(frozen=True)
class JobRecord:
    """A job as the server describes it; ``raw`` is the JSON as received."""

    id: str
    owner: str
    command: str
    args: tuple[str, ...]
    status: str
    exit_code: int | None
    signal: int | None
    oom_killed: bool
    error: str | None
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    run_as: str | None
    uid: int | None
    gid: int | None
    usage: UsageReport | None
    stdout_bytes: int
    stderr_bytes: int
    raw: Mapping[str, Any]

    @property
    def ended(self) -> bool:
        """True once the job will not change any more (no process left)."""
        return self.status in ENDED

    @property
    def argv(self) -> tuple[str, ...]:
        return (self.command, *self.args)

    @classmethod
    def from_json(cls, data: Any) -> JobRecord:
        """Read a record; a shape we do not understand is an ``ErrorResponse``."""
        try:
            usage = data.get("usage")
            sizes = data.get("output_bytes") or {}
            return cls(
                id=str(data["id"]),
                owner=str(data["owner"]),
                command=str(data["command"]),
                args=tuple(str(a) for a in data.get("args", [])),
                status=str(data["status"]),
                exit_code=_optional_int(data.get("exit_code")),
                signal=_optional_int(data.get("signal")),
                oom_killed=bool(data.get("oom_killed")),
                error=data.get("error"),
                created_at=data.get("created_at"),
                started_at=data.get("started_at"),
                ended_at=data.get("ended_at"),
                run_as=data.get("run_as"),
                uid=_optional_int(data.get("uid")),
                gid=_optional_int(data.get("gid")),
                usage=None if usage is None else UsageReport(**usage),
                stdout_bytes=int(sizes.get(Stream.STDOUT.value, 0)),
                stderr_bytes=int(sizes.get(Stream.STDERR.value, 0)),
                raw=MappingProxyType(dict(data)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise unexpected_response(200, f"not a job record: {e}") from None


@dataclass(frozen=True)
class Health:
    """The server's health report: is it up, and how busy."""

    status: str
    running_jobs: int
    followers: int

    @classmethod
    def from_json(cls, data: Any) -> Health:
        """Read a report; a shape we do not understand is an ``ErrorResponse``."""
        try:
            return cls(
                str(data["status"]), int(data["running_jobs"]), int(data["followers"])
            )
        except (KeyError, TypeError, ValueError) as e:
            raise unexpected_response(200, f"not a health report: {e}") from None


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
