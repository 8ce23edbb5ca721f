"""
Job cgroups on cgroup v2, the unified hierarchy: one directory per job, under
``<own>/jobworker``, with cpu, io, memory and pids handed down to it.

A job's OOM kills the whole job (``memory.oom.group``), as the job is one
unit. ``CgroupUsage.memory_peak`` is ``None`` before Linux 5.19, which added
``memory.peak``. Write-back of buffered writes is attributed to the job.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Sequence
from pathlib import Path

from twisted.logger import Logger

from jobworker.linux.cgroups import files
from jobworker.linux.cgroups.interface import (
    JOBS_DIR,
    CgroupError,
    CgroupLimits,
    CgroupUsage,
    Device,
)
from jobworker.linux.cgroups.limits import cpu_max, describe_limits, enforced
from jobworker.linux.cgroups.members import kill_frozen, signal_members

V2_CONTROLLERS = ("cpu", "io", "memory", "pids")
# The leaf a server moves itself into when its own cgroup must hand
# controllers down (see CgroupV2Driver.prepare).
SERVER_DIR = "server"


class CgroupV2Driver:
    """Job cgroups on the unified hierarchy."""

    log = Logger()
    version = 2

    def __init__(
        self, own: Path, io_devices: Sequence[Device] = (), parent: str = JOBS_DIR
    ) -> None:
        self.own = own
        self.base = own / parent
        self.io_devices = tuple(io_devices)
        self._prepared = False

    def prepare(self) -> None:
        """
        Hand cpu, io, memory and pids down to ``jobworker`` and its
        children. cgroup v2 lets a cgroup other than the root do that only
        while it holds no processes, so a server alone in its own cgroup
        moves itself into the leaf ``server`` beside ``jobworker``, as
        systemd asks of services it delegates a cgroup to. Raises
        ``CgroupError`` saying what is wrong otherwise.
        """
        try:
            self._enable(self.own)
        except CgroupError as e:
            if e.errno != errno.EBUSY:
                raise
            self._leave_own_cgroup()
            self._enable(self.own)
        if not self.base.is_dir():
            files.mkdir(self.base)
        self._enable(self.base)
        self._prepared = True

    def _enable(self, cgroup: Path) -> None:
        control = cgroup / "cgroup.subtree_control"
        missing = set(V2_CONTROLLERS) - set(files.read(control).split())
        if not missing:
            return
        try:
            files.write(control, " ".join(f"+{c}" for c in sorted(missing)))
        except CgroupError as e:
            why = {
                errno.ENOENT: "not all are available there",
                errno.EBUSY: "it holds processes",
            }.get(e.errno or 0, str(e))
            raise CgroupError(
                f"cgroup v2: cannot enable {' '.join(sorted(missing))}"
                f" for the children of {cgroup}: {why}",
                e.errno,
            ) from e

    def _leave_own_cgroup(self) -> None:
        others = files.procs(self.own) - {os.getpid()}
        if others:
            raise CgroupError(
                f"cgroup v2: {self.own} must hand controllers down to job"
                f" cgroups, but it holds processes other than the server"
                f" ({len(others)}); run the server in a cgroup of its own"
                " (systemd: a service with Delegate=yes)",
                errno.EBUSY,
            )
        leaf = self.own / SERVER_DIR
        if not leaf.is_dir():
            files.mkdir(leaf)
        files.write(leaf / "cgroup.procs", "0")
        self.log.info("cgroup v2: moved the server into {leaf}", leaf=str(leaf))

    def create(self, job_id: str) -> CgroupV2Job:
        if not self._prepared:
            self.prepare()
        job = self.open(job_id)
        files.mkdir(job.path)
        return job

    def open(self, job_id: str) -> CgroupV2Job:
        return CgroupV2Job(
            files.check_job_id(job_id), self.base / job_id, self.io_devices
        )

    def leftovers(self) -> list[str]:
        return sorted(files.children(self.base))

    def available(self) -> tuple[str, ...]:
        # The root cgroup has no memory.swap.max: look in the parent we made.
        probe = self.base if self.base.is_dir() else self.own
        swap = (probe / "memory.swap.max").exists()
        return enforced(swap=swap, io=bool(self.io_devices))

    def describe(self) -> str:
        return f"cgroup v2: jobs in {self.base}; limits: " + describe_limits(
            self.available(), self.io_devices
        )


@dataclasses.dataclass(frozen=True)
class CgroupV2Job:
    """A job's cgroup on the unified hierarchy."""

    job_id: str
    path: Path
    io_devices: tuple[Device, ...] = ()

    def procs_paths(self) -> list[str]:
        return [str(self.path / "cgroup.procs")]

    def set_limits(self, limits: CgroupLimits) -> None:
        if limits.cpu is not None:
            quota, period = cpu_max(limits.cpu)
            files.write(self.path / "cpu.max", f"{quota} {period}")
        if limits.memory is not None:
            files.write(self.path / "memory.max", str(limits.memory))
            files.write(self.path / "memory.oom.group", "1")
            if (self.path / "memory.swap.max").exists():
                files.write(self.path / "memory.swap.max", "0")
        if limits.pids is not None:
            files.write(self.path / "pids.max", str(limits.pids))
        io = " ".join(f"{key}={value}" for key, value in limits.io().items())
        for major, minor in self.io_devices if io else ():
            files.write(self.path / "io.max", f"{major}:{minor} {io}")

    def pids(self) -> set[int]:
        return files.procs(self.path)

    def signal_all(self, sig: int) -> int:
        return signal_members(self.pids, sig)

    def kill_all(self) -> bool:
        if (self.path / "cgroup.kill").exists():
            # The kernel kills every member, and any child being forked.
            files.write(self.path / "cgroup.kill", "1")
            return True
        # Before Linux 5.14: the same, by hand, frozen so nothing forks.
        return kill_frozen(
            lambda frozen: files.write(self.path / "cgroup.freeze", str(int(frozen))),
            lambda: files.read_keyed(self.path / "cgroup.events").get("frozen") == 1,
            self.pids,
        )

    def is_empty(self) -> bool:
        return files.read_keyed(self.path / "cgroup.events")["populated"] == 0

    def usage(self) -> CgroupUsage:
        cpu = files.read_keyed(self.path / "cpu.stat")["usage_usec"]
        peak_file = self.path / "memory.peak"
        peak = int(files.read(peak_file)) if peak_file.exists() else None
        read, written = _v2_io_bytes(files.read(self.path / "io.stat"))
        events = files.read_keyed(self.path / "memory.events")
        oom = events.get("oom_kill", 0) + events.get("oom_group_kill", 0)
        return CgroupUsage(cpu / 1e6, peak, read, written, oom > 0)

    def remove(self) -> bool:
        return files.rmdir(self.path)


def _v2_io_bytes(text: str) -> tuple[int, int]:
    """Bytes read and written, summed over the devices of ``io.stat``."""
    read = written = 0
    for line in text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        read += int(fields.get("rbytes", 0))
        written += int(fields.get("wbytes", 0))
    return read, written
