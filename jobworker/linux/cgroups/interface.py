"""
What the rest of the server sees of job cgroups: the errors, a job's limits
and usage, and the two protocols every driver (v1, v2) implements. Nothing
here touches cgroupfs.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

# The directory, under the server's own cgroup, that holds the job cgroups.
JOBS_DIR = "jobworker"

Device = tuple[int, int]


class CgroupError(Exception):
    """A cgroup could not be found, made, configured, read or removed."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class CgroupUnavailable(CgroupError):
    """Neither cgroup v2 nor v1 is usable here; the message says why."""


@dataclasses.dataclass(frozen=True)
class CgroupLimits:
    """
    What a job may use. ``None`` is no limit. ``cpu`` is in cores (0.5 is
    half of one CPU's time), ``memory`` in bytes, ``pids`` counts processes
    and threads; IO limits are bytes or operations per second, per device.
    """

    cpu: float | None = None
    memory: int | None = None
    pids: int | None = None
    read_bps: int | None = None
    write_bps: int | None = None
    read_iops: int | None = None
    write_iops: int | None = None

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive: {value!r}")

    def io(self) -> dict[str, int]:
        """The IO limits that are set, by their v2 ``io.max`` key."""
        keys = {
            "rbps": self.read_bps,
            "wbps": self.write_bps,
            "riops": self.read_iops,
            "wiops": self.write_iops,
        }
        return {key: value for key, value in keys.items() if value is not None}


@dataclasses.dataclass(frozen=True)
class CgroupUsage:
    """What a job's cgroup counted, and whether the OOM killer struck."""

    cpu_seconds: float
    memory_peak: int | None
    io_read_bytes: int
    io_write_bytes: int
    oom_killed: bool


class JobCgroup(Protocol):
    """One job's cgroup, in every hierarchy the driver uses."""

    @property
    def job_id(self) -> str: ...

    def procs_paths(self) -> list[str]:
        """
        The files a single-threaded process writes ``0`` into to join
        (``cgroup.procs``, or v1's ``tasks``).
        """

    def set_limits(self, limits: CgroupLimits) -> None:
        """Apply ``limits``; once, before any process joins."""

    def pids(self) -> set[int]:
        """The processes in the cgroup now."""

    def signal_all(self, sig: int) -> int:
        """Send ``sig`` to every process in it; how many were signalled."""

    def kill_all(self) -> bool:
        """
        SIGKILL every process in it, none able to fork away meanwhile. False
        when that is not certain (a freezer still freezing): call again soon.
        """

    def is_empty(self) -> bool:
        """Whether no live process is left in it."""

    def usage(self) -> CgroupUsage:
        """What the cgroup has counted so far."""

    def remove(self) -> bool:
        """Remove it; False if some part is still busy (try again later)."""


class CgroupDriver(Protocol):
    """Makes and finds job cgroups under the server's own cgroup."""

    @property
    def version(self) -> int:
        """1 or 2."""

    @property
    def io_devices(self) -> tuple[Device, ...]:
        """The block devices IO limits apply to."""

    def prepare(self) -> None:
        """Make the ``jobworker`` parent ready; raises ``CgroupError``."""

    def create(self, job_id: str) -> JobCgroup:
        """A new, empty cgroup for ``job_id``."""

    def open(self, job_id: str) -> JobCgroup:
        """The existing cgroup of ``job_id`` (e.g. one of ``leftovers()``)."""

    def leftovers(self) -> list[str]:
        """Ids of the job cgroups that exist, sorted."""

    def available(self) -> tuple[str, ...]:
        """The limits enforced: cpu, memory, swap, pids, io."""

    def describe(self) -> str:
        """One line for the start-up log."""
