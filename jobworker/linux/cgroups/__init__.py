"""
Job cgroups: one small interface, a driver for cgroup v2 and one for v1.

Each job gets ``<own>/jobworker/<job id>``, where ``<own>`` is the server's
own cgroup (as ``/proc/self/cgroup`` names it) in each hierarchy used: one
directory on v2, one per v1 hierarchy (cpu, cpuacct, memory, blkio, pids,
freezer; cpuset and devices are left alone). Hierarchies are found in
``/proc/self/mountinfo``, not assumed at fixed paths.

Everything here is a handful of small reads and writes of cgroupfs files, so
the server calls it from its reactor thread. Nothing waits: where waiting
would be needed (a killed process takes a moment to leave its cgroup, a
freezer a moment to freeze), there is a check the caller polls (``is_empty``)
and a step that may be repeated (``kill_all``, which says whether it is sure
to have reached every process, and ``remove``).

Choices worth knowing:

- Memory limits include swap, so a job cannot escape its limit by swapping:
  v2 sets ``memory.swap.max`` to 0, v1 sets ``memory.memsw.limit_in_bytes``
  equal to ``memory.limit_in_bytes``. Where the kernel keeps no swap
  accounting (the files are absent) only memory is limited; ``available()``
  then lacks ``"swap"``.
- On v2 a job's OOM kills the whole job (``memory.oom.group``), as the job is
  one unit; v1 has no such switch and its OOM killer picks one process.
- IO limits apply to the block devices the driver is given (see
  ``default_io_devices``): whole disks, since the kernel's throttling refuses
  partitions. A filesystem without a block device (tmpfs, NFS, overlay on
  one of those) cannot be throttled; ``available()`` then lacks ``"io"``.
- ``CgroupUsage.memory_peak`` is ``None`` where the kernel does not track it
  (v2 before Linux 5.19, which added ``memory.peak``).
- Signals go through pidfds (Linux 5.3), so that a PID reused by another
  process in the meantime is never signalled.
- On v1, buffered writes are written back by the kernel's flusher threads,
  outside the job's cgroup: v1 neither throttles nor counts them, only
  reads, direct and synchronous IO. v2 attributes write-back to the job.

The modules: ``interface`` (errors, limits, usage, the two protocols),
``files`` (cgroupfs reads and writes), ``members`` (signalling a cgroup's
processes), ``limits`` (limits as the kernel takes them), ``mounts``
(``/proc/self/mountinfo`` and ``/proc/self/cgroup``), ``devices`` (the disks
IO limits apply to), ``v1`` and ``v2`` (the drivers), ``detection`` (which
driver this host gets). This package re-exports what the rest of the server
uses.
"""

from __future__ import annotations

from jobworker.linux.cgroups.detection import detect
from jobworker.linux.cgroups.devices import default_io_devices, whole_disk
from jobworker.linux.cgroups.interface import (
    JOBS_DIR,
    CgroupDriver,
    CgroupError,
    CgroupLimits,
    CgroupUnavailable,
    CgroupUsage,
    Device,
    JobCgroup,
)
from jobworker.linux.cgroups.limits import cpu_max
from jobworker.linux.cgroups.mounts import Mount, parse_mountinfo, parse_proc_cgroup
from jobworker.linux.cgroups.v1 import CgroupV1Driver, CgroupV1Job, V1Hierarchy
from jobworker.linux.cgroups.v2 import CgroupV2Driver, CgroupV2Job

__all__ = [
    "JOBS_DIR",
    "CgroupDriver",
    "CgroupError",
    "CgroupLimits",
    "CgroupUnavailable",
    "CgroupUsage",
    "CgroupV1Driver",
    "CgroupV1Job",
    "CgroupV2Driver",
    "CgroupV2Job",
    "Device",
    "JobCgroup",
    "Mount",
    "V1Hierarchy",
    "cpu_max",
    "default_io_devices",
    "detect",
    "parse_mountinfo",
    "parse_proc_cgroup",
    "whole_disk",
]
