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
- ``Usage.memory_peak`` is ``None`` where the kernel does not track it (v2
  before Linux 5.19, which added ``memory.peak``).
- Signals go through pidfds (Linux 5.3), so that a PID reused by another
  process in the meantime is never signalled.
- On v1, buffered writes are written back by the kernel's flusher threads,
  outside the job's cgroup: v1 neither throttles nor counts them, only
  reads, direct and synchronous IO. v2 attributes write-back to the job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import signal
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from twisted.logger import Logger

JOBS_DIR = "jobworker"
# The leaf a v2 server moves itself into when its own cgroup must hand
# controllers down (see CgroupV2Driver.prepare).
SERVER_DIR = "server"
CPU_PERIOD_US = 100_000
# The kernel refuses CFS quotas below 1 ms.
MIN_CPU_QUOTA_US = 1_000
V2_CONTROLLERS = ("cpu", "io", "memory", "pids")
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "blkio", "pids", "freezer")
# Signals are sent through pidfds opened in batches: at most this many open
# descriptors at a time.
SIGNAL_BATCH = 256

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

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
class Usage:
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

    def usage(self) -> Usage:
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


# -- cgroupfs files ---------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise CgroupError(f"read {path}: {e.strerror}", e.errno) from e


def _write(path: Path, text: str) -> None:
    """
    ``text`` as one line in one ``write()``: files such as ``io.max`` take
    one entry per write. No ``O_CREAT``: a missing control file is an error,
    not a new file. ``O_APPEND`` changes nothing for cgroupfs, and lets a
    fake tree in the tests keep every line written.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            os.write(fd, f"{text}\n".encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise CgroupError(f"write {text!r} to {path}: {e.strerror}", e.errno) from e


def _keyed(text: str) -> dict[str, int]:
    """``key value`` lines (``cpu.stat``, ``memory.events``...) as a dict."""
    pairs = (line.split() for line in text.splitlines())
    return {pair[0]: int(pair[1]) for pair in pairs if len(pair) == 2}


def _procs(path: Path) -> set[int]:
    return {int(line) for line in _read(path / "cgroup.procs").split()}


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno == errno.EBUSY:
            return False
        raise CgroupError(f"remove {path}: {e.strerror}", e.errno) from e
    return True


def _mkdir(path: Path) -> None:
    try:
        path.mkdir()
    except OSError as e:
        raise CgroupError(f"create {path}: {e.strerror}", e.errno) from e


def _check_job_id(job_id: str) -> str:
    # It becomes a directory name: nothing that could leave the parent.
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return job_id


def _children(parent: Path) -> set[str]:
    try:
        return {p.name for p in parent.iterdir() if p.is_dir()}
    except FileNotFoundError:
        return set()


def cpu_max(cores: float) -> tuple[int, int]:
    """``cores`` as a CFS (quota, period) in microseconds."""
    return max(MIN_CPU_QUOTA_US, round(cores * CPU_PERIOD_US)), CPU_PERIOD_US


# -- signalling -------------------------------------------------------------


def _signal_members(list_pids: Callable[[], set[int]], sig: int) -> int:
    """
    Signal every process ``list_pids`` reports, and nothing else: a PID read
    from ``cgroup.procs`` may belong to another process by the time it is
    signalled, so each is pinned with a pidfd and signalled only if it is
    still listed once pinned.
    """
    signalled = 0
    pids = sorted(list_pids())
    for start in range(0, len(pids), SIGNAL_BATCH):
        batch = pids[start : start + SIGNAL_BATCH]
        signalled += _signal_batch(list_pids, batch, sig)
    return signalled


def _signal_batch(list_pids: Callable[[], set[int]], pids: list[int], sig: int) -> int:
    pinned: dict[int, int] = {}
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                pinned[pid] = os.pidfd_open(pid)
        members = list_pids()
        signalled = 0
        for pid, fd in pinned.items():
            if pid in members:
                try:
                    signal.pidfd_send_signal(fd, sig)
                    signalled += 1
                except ProcessLookupError:
                    pass
        return signalled
    finally:
        for fd in pinned.values():
            os.close(fd)


def _kill_frozen(
    freeze: Callable[[bool], None],
    is_frozen: Callable[[], bool],
    list_pids: Callable[[], set[int]],
) -> bool:
    """
    SIGKILL every process ``list_pids`` reports, with the cgroup frozen so
    that none forks a child that would not be listed; the kills land when it
    thaws. Freezing takes a moment (each process stops on its way back to
    user space; one in uninterruptible sleep only once it wakes), and a child
    forked meanwhile may be missed. Nothing waits here (this runs on the
    reactor's thread): the state is checked again after signalling, and once
    frozen what is listed is everything, so it is signalled again (SIGKILL
    twice is harmless). Still freezing: False, and the caller calls again a
    little later. Always thawed before returning: a cgroup left frozen would
    hold its killed processes, and the job, forever if no call came.
    """
    freeze(True)
    try:
        frozen = is_frozen()
        _signal_members(list_pids, signal.SIGKILL)
        if not frozen and is_frozen():
            _signal_members(list_pids, signal.SIGKILL)
            frozen = True
        return frozen
    finally:
        freeze(False)


# -- /proc/self/mountinfo and /proc/self/cgroup -----------------------------


@dataclasses.dataclass(frozen=True)
class Mount:
    """One line of ``/proc/self/mountinfo``."""

    device: Device
    root: str
    mount_point: str
    options: frozenset[str]
    fstype: str
    source: str
    super_options: frozenset[str]


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts ``/proc/self/mountinfo`` lists, in its order."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-", 6)
        major, minor = fields[2].split(":")
        mounts.append(
            Mount(
                device=(int(major), int(minor)),
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                options=frozenset(fields[5].split(",")),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]),
                super_options=frozenset(fields[sep + 3].split(",")),
            )
        )
    return mounts


def parse_proc_cgroup(text: str) -> dict[frozenset[str], str]:
    """
    ``/proc/self/cgroup`` as {controllers of a hierarchy: own path}; the v2
    hierarchy's key is the empty set, named v1 hierarchies keep their
    ``name=...`` entry.
    """
    own = {}
    for line in text.splitlines():
        if line:
            _, controllers, path = line.split(":", 2)
            own[frozenset(filter(None, controllers.split(",")))] = path
    return own


def _own_dir(mount: Mount, own: str, fs_root: Path) -> Path | None:
    """Where the cgroup ``own`` lies under ``mount``, if it is visible there."""
    if "/.." in own or not own.startswith("/"):
        return None
    root = mount.root.rstrip("/")
    if own != root and not own.startswith(root + "/"):
        return None
    relative = own[len(root) :].strip("/")
    return fs_root / mount.mount_point.lstrip("/") / relative


# -- block devices ----------------------------------------------------------


def whole_disk(device: Device, sys_root: str = "/sys") -> Device | None:
    """The disk ``device`` is or is a partition of; None if no block device."""
    entry = Path(sys_root, "dev", "block", f"{device[0]}:{device[1]}")
    if not entry.exists():
        return None
    real = entry.resolve()
    if not (real / "partition").exists():
        return device
    major, minor = (real.parent / "dev").read_text().strip().split(":")
    return int(major), int(minor)


def default_io_devices(
    path: str,
    *,
    sys_root: str = "/sys",
    mountinfo: str = "/proc/self/mountinfo",
) -> list[Device]:
    """
    The whole disk holding the filesystem of ``path``, as IO limits need
    it: a partition resolves to its disk (the kernel throttles whole disks
    only, so the limit covers the disk's other partitions too). A
    filesystem whose device number is not a block device (btrfs, for one)
    is looked up by its mount's source; one with no block device at all
    (tmpfs, NFS) gives an empty list.
    """
    st_dev = os.stat(path).st_dev
    disk = whole_disk((os.major(st_dev), os.minor(st_dev)), sys_root)
    if disk is None:
        disk = _mount_source_disk(path, sys_root, mountinfo)
    return [] if disk is None else [disk]


def _mount_source_disk(path: str, sys_root: str, mountinfo: str) -> Device | None:
    real = os.path.realpath(path)
    mounts = parse_mountinfo(Path(mountinfo).read_text())
    covering = [m for m in mounts if _covers(m.mount_point, real)]
    if not covering:
        return None
    # The deepest mount point holds the path; of mounts stacked on one
    # point, the last listed is the one on top.
    deepest = max(len(m.mount_point) for m in covering)
    source = [m for m in covering if len(m.mount_point) == deepest][-1].source
    try:
        st = os.stat(source)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return whole_disk((os.major(st.st_rdev), os.minor(st.st_rdev)), sys_root)


def _covers(mount_point: str, path: str) -> bool:
    return (
        mount_point == "/" or path == mount_point or path.startswith(mount_point + "/")
    )


# -- cgroup v2 --------------------------------------------------------------


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
            _mkdir(self.base)
        self._enable(self.base)
        self._prepared = True

    def _enable(self, cgroup: Path) -> None:
        control = cgroup / "cgroup.subtree_control"
        missing = set(V2_CONTROLLERS) - set(_read(control).split())
        if not missing:
            return
        try:
            _write(control, " ".join(f"+{c}" for c in sorted(missing)))
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
        others = _procs(self.own) - {os.getpid()}
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
            _mkdir(leaf)
        _write(leaf / "cgroup.procs", "0")
        self.log.info("cgroup v2: moved the server into {leaf}", leaf=str(leaf))

    def create(self, job_id: str) -> CgroupV2Job:
        if not self._prepared:
            self.prepare()
        job = self.open(job_id)
        _mkdir(job.path)
        return job

    def open(self, job_id: str) -> CgroupV2Job:
        return CgroupV2Job(_check_job_id(job_id), self.base / job_id, self.io_devices)

    def leftovers(self) -> list[str]:
        return sorted(_children(self.base))

    def available(self) -> tuple[str, ...]:
        # The root cgroup has no memory.swap.max: look in the parent we made.
        probe = self.base if self.base.is_dir() else self.own
        swap = (probe / "memory.swap.max").exists()
        return _available(swap=swap, io=bool(self.io_devices))

    def describe(self) -> str:
        return f"cgroup v2: jobs in {self.base}; limits: " + _describe_limits(
            self.available(), self.io_devices
        )


def _available(*, swap: bool, io: bool) -> tuple[str, ...]:
    kinds = ["cpu", "memory"]
    if swap:
        kinds.append("swap")
    kinds.append("pids")
    if io:
        kinds.append("io")
    return tuple(kinds)


def _describe_limits(kinds: Sequence[str], devices: Sequence[Device]) -> str:
    words = list(kinds)
    if "swap" in words:
        words.remove("swap")
        words[words.index("memory")] = "memory (swap included)"
    if devices:
        words[words.index("io")] = "io on " + ", ".join(f"{a}:{b}" for a, b in devices)
    else:
        words.append("no io (no block device)")
    return ", ".join(words)


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
            _write(self.path / "cpu.max", f"{quota} {period}")
        if limits.memory is not None:
            _write(self.path / "memory.max", str(limits.memory))
            _write(self.path / "memory.oom.group", "1")
            if (self.path / "memory.swap.max").exists():
                _write(self.path / "memory.swap.max", "0")
        if limits.pids is not None:
            _write(self.path / "pids.max", str(limits.pids))
        io = " ".join(f"{key}={value}" for key, value in limits.io().items())
        for major, minor in self.io_devices if io else ():
            _write(self.path / "io.max", f"{major}:{minor} {io}")

    def pids(self) -> set[int]:
        return _procs(self.path)

    def signal_all(self, sig: int) -> int:
        return _signal_members(self.pids, sig)

    def kill_all(self) -> bool:
        if (self.path / "cgroup.kill").exists():
            # The kernel kills every member, and any child being forked.
            _write(self.path / "cgroup.kill", "1")
            return True
        # Before Linux 5.14: the same, by hand, frozen so nothing forks.
        return _kill_frozen(
            lambda frozen: _write(self.path / "cgroup.freeze", str(int(frozen))),
            lambda: _keyed(_read(self.path / "cgroup.events")).get("frozen") == 1,
            self.pids,
        )

    def is_empty(self) -> bool:
        return _keyed(_read(self.path / "cgroup.events"))["populated"] == 0

    def usage(self) -> Usage:
        cpu = _keyed(_read(self.path / "cpu.stat"))["usage_usec"]
        peak_file = self.path / "memory.peak"
        peak = int(_read(peak_file)) if peak_file.exists() else None
        read, written = _v2_io_bytes(_read(self.path / "io.stat"))
        events = _keyed(_read(self.path / "memory.events"))
        oom = events.get("oom_kill", 0) + events.get("oom_group_kill", 0)
        return Usage(cpu / 1e6, peak, read, written, oom > 0)

    def remove(self) -> bool:
        return _rmdir(self.path)


def _v2_io_bytes(text: str) -> tuple[int, int]:
    """Bytes read and written, summed over the devices of ``io.stat``."""
    read = written = 0
    for line in text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        read += int(fields.get("rbytes", 0))
        written += int(fields.get("wbytes", 0))
    return read, written


# -- cgroup v1 --------------------------------------------------------------


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
                _mkdir(hierarchy.base)
        self._prepared = True

    def create(self, job_id: str) -> CgroupV1Job:
        if not self._prepared:
            self.prepare()
        job = self.open(job_id)
        made: list[Path] = []
        try:
            for path in job.dirs():
                _mkdir(path)
                made.append(path)
        except CgroupError:
            for path in made:
                _rmdir(path)
            raise
        return job

    def open(self, job_id: str) -> CgroupV1Job:
        _check_job_id(job_id)
        paths = {
            controller: h.base / job_id
            for h in self.hierarchies
            for controller in h.controllers
        }
        return CgroupV1Job(job_id, paths, self.io_devices)

    def leftovers(self) -> list[str]:
        found: set[str] = set()
        for hierarchy in self.hierarchies:
            found |= _children(hierarchy.base)
        return sorted(found)

    def available(self) -> tuple[str, ...]:
        memory = next(h for h in self.hierarchies if "memory" in h.controllers)
        probe = memory.base if memory.base.is_dir() else memory.own
        swap = (probe / "memory.memsw.limit_in_bytes").exists()
        return _available(swap=swap, io=bool(self.io_devices))

    def describe(self) -> str:
        bases = " ".join(
            f"{','.join(sorted(h.controllers))}={h.base}" for h in self.hierarchies
        )
        return f"cgroup v1: jobs in {bases}; limits: " + _describe_limits(
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
            _write(self.paths["cpu"] / "cpu.cfs_period_us", str(period))
            _write(self.paths["cpu"] / "cpu.cfs_quota_us", str(quota))
        if limits.memory is not None:
            self._limit_memory(limits.memory)
        if limits.pids is not None:
            _write(self.paths["pids"] / "pids.max", str(limits.pids))
        throttles = {
            "read_bps_device": limits.read_bps,
            "write_bps_device": limits.write_bps,
            "read_iops_device": limits.read_iops,
            "write_iops_device": limits.write_iops,
        }
        for name, value in throttles.items():
            for major, minor in self.io_devices if value is not None else ():
                path = self.paths["blkio"] / f"blkio.throttle.{name}"
                _write(path, f"{major}:{minor} {value}")

    def _limit_memory(self, limit: int) -> None:
        memory = self.paths["memory"]
        files = [memory / "memory.limit_in_bytes"]
        # Memory plus swap, equal to the memory limit: no swap to escape to.
        if (memory / "memory.memsw.limit_in_bytes").exists():
            files.append(memory / "memory.memsw.limit_in_bytes")
        # The kernel keeps memory <= memory+swap at every step: lower the
        # memory limit first, or raise the memory+swap one first.
        try:
            for path in files:
                _write(path, str(limit))
        except CgroupError as e:
            if e.errno != errno.EINVAL:
                raise
            for path in reversed(files):
                _write(path, str(limit))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.dirs():
            try:
                found |= _procs(path)
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
            return _procs(self.paths["freezer"])
        except CgroupError as e:
            if e.errno != errno.ENOENT:
                raise
            return self.pids()  # a removal cut short: ask the others

    def signal_all(self, sig: int) -> int:
        return _signal_members(self.members, sig)

    def kill_all(self) -> bool:
        if not self.members():
            return True  # the usual case once a job's command has ended
        state = self.paths["freezer"] / "freezer.state"
        return _kill_frozen(
            lambda frozen: _write(state, "FROZEN" if frozen else "THAWED"),
            # Reading the state is also what makes v1 notice it is frozen.
            lambda: _read(state).strip() == "FROZEN",
            self.members,
        )

    def is_empty(self) -> bool:
        return not self.pids()

    def usage(self) -> Usage:
        cpu_ns = int(_read(self.paths["cpuacct"] / "cpuacct.usage"))
        memory = self.paths["memory"]
        peak = int(_read(memory / "memory.max_usage_in_bytes"))
        read, written = _v1_io_bytes(self.paths["blkio"])
        oom = _keyed(_read(memory / "memory.oom_control")).get("oom_kill", 0)
        return Usage(cpu_ns / 1e9, peak, read, written, oom > 0)

    def remove(self) -> bool:
        # Every directory is tried, so a busy one does not keep the rest.
        return all([_rmdir(path) for path in self.dirs()])


def _v1_io_bytes(blkio: Path) -> tuple[int, int]:
    name = "blkio.throttle.io_service_bytes_recursive"
    if not (blkio / name).exists():
        name = "blkio.throttle.io_service_bytes"
    read = written = 0
    for line in _read(blkio / name).splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] == "Read":
            read += int(fields[2])
        elif len(fields) == 3 and fields[1] == "Write":
            written += int(fields[2])
    return read, written


# -- detection --------------------------------------------------------------


def detect(
    *,
    mountinfo: str = "/proc/self/mountinfo",
    proc_self_cgroup: str = "/proc/self/cgroup",
    fs_root: str = "/",
    io_devices: Sequence[Device] = (),
    parent: str = JOBS_DIR,
) -> CgroupDriver:
    """
    The driver for this host: v2 if the server's own v2 cgroup offers cpu,
    io, memory and pids, else v1 if the v1 hierarchies of cpu, cpuacct,
    memory, blkio, pids and freezer are mounted and writable. Raises
    ``CgroupUnavailable`` saying why neither is usable. Reads only: nothing
    is created until ``prepare``. Job cgroups go in ``parent`` under the
    server's own cgroup. ``fs_root`` prefixes the mount points read (for
    tests on a fake tree).
    """
    _check_job_id(parent)
    mounts = parse_mountinfo(Path(mountinfo).read_text())
    own = parse_proc_cgroup(Path(proc_self_cgroup).read_text())
    root = Path(fs_root)
    v2 = _detect_v2(mounts, own, root)
    if isinstance(v2, Path):
        return CgroupV2Driver(v2, io_devices, parent)
    v1 = _detect_v1(mounts, own, root)
    if not isinstance(v1, str):
        hierarchies = [dataclasses.replace(h, parent=parent) for h in v1]
        return CgroupV1Driver(hierarchies, io_devices)
    raise CgroupUnavailable(f"no usable cgroups: {v2}; {v1}")


def _detect_v2(
    mounts: Sequence[Mount], own: Mapping[frozenset[str], str], root: Path
) -> Path | str:
    """The server's own v2 cgroup directory, or why it will not do."""
    if frozenset() not in own:
        return "cgroup v2: the server is in no v2 hierarchy"
    places = [
        path
        for m in mounts
        if m.fstype == "cgroup2"
        and (path := _own_dir(m, own[frozenset()], root)) is not None
    ]
    if not places:
        return "cgroup v2: not mounted where the server's cgroup is visible"
    path = places[0]
    try:
        available = set(_read(path / "cgroup.controllers").split())
    except CgroupError as e:
        return f"cgroup v2: {e}"
    missing = [c for c in V2_CONTROLLERS if c not in available]
    if missing:
        return (
            f"cgroup v2 at {path}: no {' '.join(missing)} controller"
            f" (available: {' '.join(sorted(available)) or 'none'})"
        )
    return path


def _detect_v1(
    mounts: Sequence[Mount], own: Mapping[frozenset[str], str], root: Path
) -> list[V1Hierarchy] | str:
    """The v1 hierarchies of the controllers needed, or why they will not do."""
    hierarchies: dict[frozenset[str], V1Hierarchy] = {}
    for controller in V1_CONTROLLERS:
        found = _v1_hierarchy(controller, mounts, own, root)
        if isinstance(found, str):
            return f"cgroup v1: {found}"
        hierarchies.setdefault(found.controllers, found)
    return list(hierarchies.values())


def _v1_hierarchy(
    controller: str,
    mounts: Sequence[Mount],
    own: Mapping[frozenset[str], str],
    root: Path,
) -> V1Hierarchy | str:
    candidates = [
        m for m in mounts if m.fstype == "cgroup" and controller in m.super_options
    ]
    if not candidates:
        return f"no {controller} hierarchy mounted"
    controllers = next((k for k in own if controller in k), None)
    if controllers is None:
        return f"the server is in no {controller} hierarchy"
    for mount in candidates:
        path = _own_dir(mount, own[controllers], root)
        if path is None:
            continue
        if not path.is_dir():
            return f"{controller} hierarchy has no {path}"
        if "ro" in mount.options or not os.access(path, os.W_OK):
            return f"{controller} hierarchy at {path} is not writable"
        return V1Hierarchy(controllers, path)
    return f"the server's {controller} cgroup is not visible where it is mounted"
