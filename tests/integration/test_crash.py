"""
Crash safety: the server SIGKILLed at random moments while jobs start, write,
stop and end, twenty times over one data directory.

The victim is ``tests/helpers/crash_driver.py``, a job server driving the
library as the API does (there is no state in TLS or HTTP to lose, and
leaving them out keeps a round to about a second). It says on stdout what it
knows to be so: a job started, a reader was handed output up to an offset, a
job's final record was written. After each kill the test opens the data
directory as a restarted server would, and checks that:

- every record reported final before the kill, in this round or an earlier
  one, is exactly as it was; no record is missing;
- every other record is final too: ``lost`` if the job was running, else
  what that kind of job ends as (its exit code, its signal);
- each writer job's output is exactly the start of what it wrote (chunks
  carry a counter; stdout's bytes are ASCII and stderr's have the high bit
  set, so the combined view can be split back into the two and compared);
  it is at least as long as what any reader had been handed, and as the
  files were just before the kill; a job that exited has all of it;
- no process of any job is left.

The randomness is seeded: ``JOBWORKER_CRASH_SEED`` overrides the seed, which
is printed and named in every failure.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any

import psutil
import pytest
from twisted.internet import reactor as global_reactor

from jobworker.jobs.record import Job
from jobworker.jobs.rows import job_to_row
from jobworker.jobs.service import JobManager
from jobworker.wire import JobStatus, Stream
from tests.helpers.crash_driver import TAG, expected_output

reactor: Any = global_reactor
ROOT = Path(__file__).parents[2]
SEED = int(os.environ.get("JOBWORKER_CRASH_SEED", "20261122"))
KILLS = 20
LOST = "the server stopped while the job was running"
LOW = bytes(range(0x80))
HIGH = bytes(range(0x80, 0x100))


@dataclass
class Known:
    """What the killed servers said about one job."""

    kind: str | None = None
    key: int = 0
    count: int = 0
    read: int = 0  # combined output handed to a reader
    final: dict[str, Any] | None = None  # the final record, as stored

    def final_status(self) -> str | None:
        return None if self.final is None else str(self.final["status"])


@dataclass
class Round:
    number: int
    events: list[dict[str, Any]]
    # (stdout, stderr) file sizes of every job just before the kill
    sizes: dict[str, tuple[int, int]]


@pytest.fixture
def tag() -> Iterator[str]:
    """The tag of this test's jobs; whatever still carries it at the end dies."""
    tag = secrets.token_hex(8)
    yield tag
    for p in tagged(tag):
        p.kill()


@pytest.mark.root
def test_kill_9_at_random_moments(tmp_path: Path, tag: str) -> None:
    """Twenty SIGKILLs of a busy server lose no final record, no byte of output,
    leave every running job lost and no process behind."""
    print(f"crash test seed {SEED} (set JOBWORKER_CRASH_SEED to repeat)")
    rng = Random(SEED)
    known: dict[str, Known] = {}
    started = 0
    for number in range(KILLS):
        crash = run_and_kill(tmp_path, rng, tag, number)
        where = f"seed {SEED}, kill {number}"
        learn(known, crash.events)
        started += sum(e["event"] == "started" for e in crash.events)
        check_restart(tmp_path, known, crash, where)
        left = [p for p in tagged(tag) if alive_after(p, 5)]
        assert left == [], f"{where}: processes left running: {left}"
    # Enough happened to mean something: jobs of every kind, many lost.
    statuses = [k.final_status() for k in known.values()]
    print(f"{started} jobs started;", {s: statuses.count(s) for s in set(statuses)})
    assert started >= 10 * KILLS, f"seed {SEED}: only {started} jobs started"
    assert statuses.count("lost") >= KILLS, f"seed {SEED}: {statuses}"
    for status in ("exited", "stopped", "timed_out", "failed_to_start"):
        assert status in statuses, f"seed {SEED}: no job {status}"


@pytest.mark.root
def test_kill_between_spawn_and_recording_the_pid(tmp_path: Path, tag: str) -> None:
    """A server killed after spawning a job, before its record names the process,
    leaves the job lost and nothing of it running: the command never runs."""
    driver = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.helpers.crash_driver",
            str(tmp_path),
            "--die-after-spawn",
            tag,
        ],
        cwd=ROOT,
        timeout=30,
    )
    assert driver.returncode == -signal.SIGKILL
    manager = JobManager(reactor, tmp_path)
    manager.open()
    try:
        [job] = manager.list()
    finally:
        manager.store.close()
    assert (job.status, job.error, job.pid) == (JobStatus.LOST, LOST, None)
    left = [p for p in tagged(tag) if alive_after(p, 5)]
    assert left == []


def run_and_kill(data_dir: Path, rng: Random, tag: str, number: int) -> Round:
    """Start the driver, let it work a random while, SIGKILL it."""
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.helpers.crash_driver",
            str(data_dir),
            str(rng.randrange(1 << 30)),
            tag,
        ],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert driver.stdout is not None
    lines: list[bytes] = []
    ready = threading.Event()

    def read() -> None:
        assert driver.stdout is not None
        for line in driver.stdout:
            lines.append(line)
            if b'"ready"' in line:
                ready.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert ready.wait(20), f"seed {SEED}, kill {number}: the driver never started"
        time.sleep(rng.uniform(0, 1.0))
        sizes = file_sizes(data_dir)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        reader.join()
    # A line cut short by the kill says nothing yet.
    complete = [line for line in lines if line.endswith(b"\n")]
    return Round(number, [json.loads(line) for line in complete], sizes)


def file_sizes(data_dir: Path) -> dict[str, tuple[int, int]]:
    sizes = {}
    for directory in (data_dir / "jobs").iterdir():
        out, err = (directory / "stdout", directory / "stderr")
        sizes[directory.name] = (size_or_zero(out), size_or_zero(err))
    return sizes


def size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def learn(known: dict[str, Known], events: list[dict[str, Any]]) -> None:
    for event in events:
        if event["event"] == "ready":
            continue
        job = known.setdefault(event["id"], Known())
        if event["event"] == "started":
            job.kind, job.key, job.count = event["kind"], event["key"], event["count"]
        elif event["event"] == "read":
            job.read = max(job.read, event["offset"])
        elif event["event"] == "ended":
            assert job.final is None
            job.final = event["record"]


def check_restart(
    data_dir: Path, known: dict[str, Known], crash: Round, where: str
) -> None:
    """Open the data directory as a restarted server; check every job."""
    manager = JobManager(reactor, data_dir)
    manager.open()
    try:
        jobs = {job.id: job for job in manager.list()}
        missing = [i for i, k in known.items() if k.final and i not in jobs]
        assert missing == [], f"{where}: final records missing: {missing}"
        for job in jobs.values():
            k = known.setdefault(job.id, Known())
            context = f"{where}, job {job.id} ({k.kind})"
            check_record(job, k, context)
            check_output(manager, job, k, crash.sizes.get(job.id, (0, 0)), context)
            # From now on, this record must never change.
            k.final = job_to_row(job)
    finally:
        manager.store.close()


def check_record(job: Job, k: Known, where: str) -> None:
    assert job.status.ended, f"{where}: {job.status.value} after the restart"
    if k.final is not None:
        assert job_to_row(job) == k.final, f"{where}: record changed"
        if k.final["status"] == "lost":
            return
    if job.status is JobStatus.LOST:
        assert (job.error, job.ended_at is not None) == (LOST, True), where
        return
    outcome = (job.status, job.exit_code, job.signal, job.error)
    expected: dict[str, list[tuple[Any, ...]]] = {
        "writer": [(JobStatus.EXITED, k.key % 7, None, None)],
        "stopped": [(JobStatus.STOPPED, None, s, None) for s in (15, 9)],
        "stubborn": [(JobStatus.STOPPED, None, 9, None)],
        "quick": [(JobStatus.EXITED, 0, None, None)],
        "timeout": [(JobStatus.TIMED_OUT, None, 15, None)],
        "missing": [
            (
                JobStatus.FAILED_TO_START,
                None,
                None,
                "exec /no/such/command: No such file or directory (ENOENT)",
            )
        ],
    }
    # A sleeper never ends by itself; a job the driver never said it
    # started cannot have ended either: the kill came before it ran.
    assert outcome in expected.get(k.kind or "", []), f"{where}: ended as {outcome}"


def check_output(
    manager: JobManager,
    job: Job,
    k: Known,
    before_kill: tuple[int, int],
    where: str,
) -> None:
    log = manager.output_log(job.id)
    out_size, err_size = log.size(Stream.STDOUT), log.size(Stream.STDERR)
    assert out_size >= before_kill[0], f"{where}: stdout shrank"
    assert err_size >= before_kill[1], f"{where}: stderr shrank"
    assert log.total >= k.read, f"{where}: less than a reader was handed"
    out = log.read(Stream.STDOUT, 0, out_size).data
    err = log.read(Stream.STDERR, 0, err_size).data
    combined = log.read(Stream.COMBINED, 0, log.total)
    assert (len(out), len(err), combined.complete) == (out_size, err_size, True)
    assert combined.data.translate(None, HIGH) == out, f"{where}: combined stdout"
    assert combined.data.translate(None, LOW) == err, f"{where}: combined stderr"
    if k.kind in ("writer", "stopped"):
        whole_out, whole_err = expected_output(k.key, k.count, (out_size, err_size))
        assert out == whole_out[:out_size], f"{where}: stdout is not what was written"
        assert err == whole_err[:err_size], f"{where}: stderr is not what was written"
        if job.status is JobStatus.EXITED:
            assert (out, err) == (whole_out, whole_err), f"{where}: output incomplete"
    elif k.kind == "quick" and job.status is JobStatus.EXITED:
        assert (out, err) == (f"{k.key}\n".encode(), b""), where


def tagged(tag: str) -> list[psutil.Process]:
    """Every process, zombies aside, with ``tag`` in its environment."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(TAG) == tag:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def alive_after(process: psutil.Process, seconds: float) -> bool:
    """Whether ``process`` still runs after up to ``seconds`` (a SIGKILLed one
    takes a moment to die; a zombie counts as dead)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            return False
        time.sleep(0.02)
    return True
