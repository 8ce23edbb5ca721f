"""
cgroup v2 limits, enforced by a real kernel: run inside the test VM only.

``tests/integration/test_vm.py`` boots a VM whose only cgroup hierarchy is cgroup2 with
cpu, io, memory and pids enabled at the root, and runs this file there as root
with ``JOBWORKER_CGROUP_V2_VM=1`` (where a skip counts as a failure). On any
other machine the whole module is skipped: the host's kernel gives no such
hierarchy. These tests use the cgroup files directly, to show what the kernel
does with each setting that jobworker's v2 driver writes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from jobworker.linux import cgroups

IN_VM = os.environ.get("JOBWORKER_CGROUP_V2_VM") == "1"
if not IN_VM:
    pytest.skip(
        "runs inside the cgroup v2 VM, through tests/integration/test_vm.py",
        allow_module_level=True,
    )
pytestmark = pytest.mark.root

ROOT = Path("/sys/fs/cgroup")
MIB = 1 << 20


def read_keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file ("key value" lines) as a dict."""
    pairs = (line.split() for line in path.read_text().splitlines())
    return {key: int(value) for key, value in pairs}


def wait_until_empty(cgroup: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while read_keyed(cgroup / "cgroup.events")["populated"]:
        assert time.monotonic() < deadline, f"{cgroup} still has processes"
        time.sleep(0.02)


@pytest.fixture
def cgroup() -> Iterator[Path]:
    """A fresh child of the root cgroup, emptied and removed afterwards."""
    path = ROOT / f"vmtest-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    try:
        yield path
    finally:
        (path / "cgroup.kill").write_text("1")
        wait_until_empty(path)
        path.rmdir()


def start_in(cgroup: Path, argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start argv inside cgroup: the shell joins it, then execs argv, so the
    command's first instruction already runs under the cgroup's limits."""
    join = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
    return subprocess.Popen(["/bin/sh", "-c", join, str(cgroup), *argv])


def run_in(cgroup: Path, argv: Sequence[str], timeout: float = 60.0) -> int:
    process = start_in(cgroup, argv)
    try:
        return process.wait(timeout)
    finally:
        process.kill()
        process.wait()


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_hierarchy_is_v2_only_with_the_controllers() -> None:
    assert Path("/proc/self/cgroup").read_text() == "0::/\n"
    for name in ("cgroup.controllers", "cgroup.subtree_control"):
        enabled = set((ROOT / name).read_text().split())
        assert {"cpu", "io", "memory", "pids"} <= enabled, name


def test_jobworker_finds_v2_with_every_limit(tmp_path: Path) -> None:
    """jobworker's detection picks the v2 driver here, with the scratch disk
    for IO: so the real cgroup tests, run in the VM too, test that driver."""
    driver = cgroups.detect(io_devices=cgroups.default_io_devices(str(tmp_path)))
    assert isinstance(driver, cgroups.CgroupV2Driver), driver.describe()
    assert {"cpu", "memory", "pids", "io"} <= set(driver.available())
    assert [f"{a}:{b}" for a, b in driver.io_devices] == [disk_of(tmp_path)]


def test_memory_max_ends_an_allocation_by_the_oom_killer(cgroup: Path) -> None:
    (cgroup / "memory.max").write_text(str(32 * MIB))
    # Writing every byte: calloc'd pages would never be charged.
    status = run_in(cgroup, python("b = b'x' * (256 << 20)"))
    events = read_keyed(cgroup / "memory.events")
    peak = int((cgroup / "memory.peak").read_text())
    print(f"memory.max 32 MiB: status {status}, peak {peak / MIB:.1f} MiB, {events}")
    assert status == -signal.SIGKILL
    assert events["oom_kill"] >= 1
    assert peak <= 32 * MIB


def test_memory_oom_group_kills_the_whole_job(cgroup: Path) -> None:
    (cgroup / "memory.max").write_text(str(32 * MIB))
    (cgroup / "memory.oom.group").write_text("1")
    # A bystander that uses no memory goes with the process that overran.
    status = run_in(
        cgroup,
        [
            "/bin/sh",
            "-c",
            'sleep 600 & exec "$0" -c "b = b\'x\' * (256 << 20)"',
            sys.executable,
        ],
    )
    assert status == -signal.SIGKILL
    wait_until_empty(cgroup)
    assert read_keyed(cgroup / "memory.events")["oom_group_kill"] >= 1


def test_pids_max_refuses_forks(cgroup: Path) -> None:
    (cgroup / "pids.max").write_text("8")
    code = """
import os, signal
children = []
try:
    for _ in range(32):
        pid = os.fork()
        if pid == 0:
            signal.pause()
        children.append(pid)
except BlockingIOError:
    pass
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
raise SystemExit(len(children))
"""
    forked = run_in(cgroup, python(code))
    events = read_keyed(cgroup / "pids.events")
    print(f"pids.max 8: {forked} forks succeeded, {events}")
    # The shell execs Python: it and 7 children fill the 8 slots.
    assert forked == 7
    assert events["max"] >= 1


def test_cpu_max_throttles_a_busy_loop(cgroup: Path) -> None:
    (cgroup / "cpu.max").write_text("20000 100000")  # a fifth of one CPU
    start = time.monotonic()
    # A shell loop: it starts at once, where Python's start-up would itself
    # be throttled for seconds.
    run_in(
        cgroup, ["timeout", "-s", "KILL", "3", "/bin/sh", "-c", "while :; do :; done"]
    )
    wall = time.monotonic() - start
    stat = read_keyed(cgroup / "cpu.stat")
    share = stat["usage_usec"] / 1e6 / wall
    throttled = stat["nr_throttled"]
    print(f"cpu.max 0.2: {share:.3f} CPU over {wall:.2f} s, {throttled} throttled")
    # Generous: an emulated CPU on a busy host is slow, never faster.
    assert share < 0.3, f"used {share:.2f} of a CPU under a 0.2 limit"
    assert throttled >= 5


def disk_of(path: Path) -> str:
    """The "major:minor" of the whole disk holding path: the VM's scratch
    disk, which it mounts as the temporary directory."""
    device = os.stat(path).st_dev
    number = f"{os.major(device)}:{os.minor(device)}"
    assert Path(f"/sys/dev/block/{number}/device").exists(), f"{path} is on no disk"
    return number


def timed_dd(cgroup: Path, args: Sequence[str]) -> float:
    start = time.monotonic()
    assert run_in(cgroup, ["dd", "status=none", *args]) == 0
    return time.monotonic() - start


def test_io_max_throttles_direct_writes(cgroup: Path, tmp_path: Path) -> None:
    number = disk_of(tmp_path)
    data = tmp_path / "data"
    args = ["if=/dev/zero", f"of={data}", "bs=64k", "count=48", "oflag=direct"]
    unthrottled = timed_dd(cgroup, args)
    (cgroup / "io.max").write_text(f"{number} wbps={MIB}")
    throttled = timed_dd(cgroup, args)  # 3 MiB at 1 MiB/s
    stat = (cgroup / "io.stat").read_text()
    print(f"io.max wbps=1M: 3 MiB in {throttled:.2f} s ({unthrottled:.2f} s without)")
    assert throttled >= 2.0, f"3 MiB written in {throttled:.2f} s at 1 MiB/s"
    assert throttled > 2 * unthrottled
    written = read_io_stat(stat, number)["wbytes"]
    assert written >= 2 * 3 * MIB, stat


def read_io_stat(text: str, number: str) -> dict[str, int]:
    for line in text.splitlines():
        device, *fields = line.split()
        if device == number:
            return {k: int(v) for k, v in (f.split("=") for f in fields)}
    raise AssertionError(f"no {number} in io.stat: {text!r}")


def test_io_max_throttles_read_iops(cgroup: Path, tmp_path: Path) -> None:
    number = disk_of(tmp_path)
    data = tmp_path / "data"
    data.write_bytes(b"x" * 75 * 4096)
    (cgroup / "io.max").write_text(f"{number} riops=25")
    args = [f"if={data}", "of=/dev/null", "bs=4k", "iflag=direct"]
    elapsed = timed_dd(cgroup, args)  # 75 reads at 25 per second
    print(f"io.max riops=25: 75 direct reads in {elapsed:.2f} s")
    assert elapsed >= 2.0, f"75 reads in {elapsed:.2f} s at 25 IOPS"


def test_cgroup_kill_ends_every_process(cgroup: Path) -> None:
    # A shell with background children and a grandchild that left its parent.
    script = "sleep 600 & sleep 600 & (sleep 600 &) ; wait"
    process = start_in(cgroup, ["/bin/sh", "-c", script])
    deadline = time.monotonic() + 10
    while len((cgroup / "cgroup.procs").read_text().split()) < 4:
        assert time.monotonic() < deadline, "the job did not start its children"
        time.sleep(0.02)
    (cgroup / "cgroup.kill").write_text("1")
    assert process.wait(10) == -signal.SIGKILL
    wait_until_empty(cgroup)
