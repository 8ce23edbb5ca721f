"""
Job cgroups on cgroup v1: one directory per job in each hierarchy of cpu,
cpuacct, memory, blkio, pids and freezer (co-mounted ones share it), under
``<own>/jobworker`` in each. cpuset and devices are left alone.

v1 has no ``memory.oom.group``: its OOM killer picks one process, not the
job. Buffered writes are written back by the kernel's flusher threads,
outside the job's cgroup: v1 neither throttles nor counts them, only reads,
direct and synchronous IO.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Iterable, Mapping, Sequence
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

V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "blkio", "pids", "freezer")


@dataclasses.dataclass(frozen=True)
class V1Hierarchy:
    """A v1 hierarchy: its controllers and the server's cgroup in it."""

    controllers: frozenset[str]
    own: Path
    # The directory under ``own`` holding the job cgroups.
    parent: str = JOBS_DIR

    @property
    def base(self) -> Path:
        return self.own / self.parent


class CgroupV1Driver:
    """Job cgroups across the v1 hierarchies of the controllers needed."""

    log = Logger()
    version = 1

    def __init__(
        self, hierarchies: Iterable[V1Hierarchy], io_devices: Sequence[Device] = ()
    ) -> None:
        self.hierarchies = tuple(hierarchies)
        self.io_devices = tuple(io_devices)
        self._prepared = False

    def prepare(self) -> None:
        for hierarchy in self.hierarchies:
            if not hierarchy.base.is_dir():
                files.mkdir(hierarchy.base)
        self._prepared = True

    def create(self, job_id: str) -> CgroupV1Job:
        if not self._prepared:
            self.prepare()
        job = self.open(job_id)
        made: list[Path] = []
        try:
            for path in job.dirs():
                files.mkdir(path)
                made.append(path)
        except CgroupError:
            for path in made:
                files.rmdir(path)
            raise
        return job

    def open(self, job_id: str) -> CgroupV1Job:
        files.check_job_id(job_id)
        paths = {
            controller: h.base / job_id
            for h in self.hierarchies
            for controller in h.controllers
        }
        return CgroupV1Job(job_id, paths, self.io_devices)

    def leftovers(self) -> list[str]:
        found: set[str] = set()
        for hierarchy in self.hierarchies:
            found |= files.children(hierarchy.base)
        return sorted(found)

    def available(self) -> tuple[str, ...]:
        memory = next(h for h in self.hierarchies if "memory" in h.controllers)
        probe = memory.base if memory.base.is_dir() else memory.own
        swap = (probe / "memory.memsw.limit_in_bytes").exists()
        return enforced(swap=swap, io=bool(self.io_devices))

    def describe(self) -> str:
        bases = " ".join(
            f"{','.join(sorted(h.controllers))}={h.base}" for h in self.hierarchies
        )
        return f"cgroup v1: jobs in {bases}; limits: " + describe_limits(
            self.available(), self.io_devices
        )


@dataclasses.dataclass(frozen=True)
class CgroupV1Job:
    """A job's cgroups, one in each v1 hierarchy."""

    job_id: str
    # By controller; co-mounted controllers (cpu,cpuacct) share a directory.
    paths: Mapping[str, Path]
    io_devices: tuple[Device, ...] = ()

    def dirs(self) -> list[Path]:
        """One directory per hierarchy."""
        return sorted(set(self.paths.values()))

    def procs_paths(self) -> list[str]:
        # "tasks", not "cgroup.procs": the helper joins while it is one
        # thread, so moving that thread moves the process. A move through
        # cgroup.procs takes the kernel's threadgroup lock for writing, which
        # waits for an RCU grace period after the cgroups were idle: 4-10 ms
        # here, most of a job's start; one through "tasks" moving the caller
        # itself needs no such lock on recent kernels (older ones lock as for
        # cgroup.procs, so it is never slower): ~0.05 ms.
        return [str(path / "tasks") for path in self.dirs()]

    def set_limits(self, limits: CgroupLimits) -> None:
        if limits.cpu is not None:
            quota, period = cpu_max(limits.cpu)
            files.write(self.paths["cpu"] / "cpu.cfs_period_us", str(period))
            files.write(self.paths["cpu"] / "cpu.cfs_quota_us", str(quota))
        if limits.memory is not None:
            self._limit_memory(limits.memory)
        if limits.pids is not None:
            files.write(self.paths["pids"] / "pids.max", str(limits.pids))
        throttles = {
            "read_bps_device": limits.read_bps,
            "write_bps_device": limits.write_bps,
            "read_iops_device": limits.read_iops,
            "write_iops_device": limits.write_iops,
        }
        for name, value in throttles.items():
            for major, minor in self.io_devices if value is not None else ():
                path = self.paths["blkio"] / f"blkio.throttle.{name}"
                files.write(path, f"{major}:{minor} {value}")

    def _limit_memory(self, limit: int) -> None:
        memory = self.paths["memory"]
        limit_files = [memory / "memory.limit_in_bytes"]
        # Memory plus swap, equal to the memory limit: no swap to escape to.
        if (memory / "memory.memsw.limit_in_bytes").exists():
            limit_files.append(memory / "memory.memsw.limit_in_bytes")
        # The kernel keeps memory <= memory+swap at every step: lower the
        # memory limit first, or raise the memory+swap one first.
        try:
            for path in limit_files:
                files.write(path, str(limit))
        except CgroupError as e:
            if e.errno != errno.EINVAL:
                raise
            for path in reversed(limit_files):
                files.write(path, str(limit))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.dirs():
            try:
                found |= files.procs(path)
            except CgroupError as e:
                # Gone from this hierarchy, so empty there: a removal cut
                # short (the server died midway) leaves some directories
                # only, and the leftover must still be found empty.
                if e.errno != errno.ENOENT:
                    raise
        return found

    def members(self) -> set[int]:
        """
        The job's processes as its freezer cgroup lists them. Every hierarchy
        lists the same ones (the helper joins them all before the command's
        first instruction, and children inherit them; an unprivileged job
        cannot move), so signalling reads one file, not one per hierarchy;
        ``pids`` still asks every hierarchy, to be sure a job is gone.
        """
        try:
            return files.procs(self.paths["freezer"])
        except CgroupError as e:
            if e.errno != errno.ENOENT:
                raise
            return self.pids()  # a removal cut short: ask the others

    def signal_all(self, sig: int) -> int:
        return signal_members(self.members, sig)

    def kill_all(self) -> bool:
        if not self.members():
            return True  # the usual case once a job's command has ended
        state = self.paths["freezer"] / "freezer.state"
        return kill_frozen(
            lambda frozen: files.write(state, "FROZEN" if frozen else "THAWED"),
            # Reading the state is also what makes v1 notice it is frozen.
            lambda: files.read(state).strip() == "FROZEN",
            self.members,
        )

    def is_empty(self) -> bool:
        return not self.pids()

    def usage(self) -> CgroupUsage:
        cpu_ns = int(files.read(self.paths["cpuacct"] / "cpuacct.usage"))
        memory = self.paths["memory"]
        peak = int(files.read(memory / "memory.max_usage_in_bytes"))
        read, written = _v1_io_bytes(self.paths["blkio"])
        oom = files.read_keyed(memory / "memory.oom_control").get("oom_kill", 0)
        return CgroupUsage(cpu_ns / 1e9, peak, read, written, oom > 0)

    def remove(self) -> bool:
        # Every directory is tried, so a busy one does not keep the rest.
        return all([files.rmdir(path) for path in self.dirs()])


def _v1_io_bytes(blkio: Path) -> tuple[int, int]:
    name = "blkio.throttle.io_service_bytes_recursive"
    if not (blkio / name).exists():
        name = "blkio.throttle.io_service_bytes"
    read = written = 0
    for line in files.read(blkio / name).splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] == "Read":
            read += int(fields[2])
        elif len(fields) == 3 and fields[1] == "Write":
            written += int(fields[2])
    return read, written
