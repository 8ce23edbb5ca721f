"""
The scenarios. Each starts its own server (a fresh data directory, so one
scenario's leftovers cannot slow the next), measures, and returns figures.
Every loop is bounded in count and in time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import jobs, load
from benchmarks.client import Connection
from benchmarks.helper_setup import helper_setup
from benchmarks.report import Figure
from benchmarks.server import Server, Workspace

MB = 1_000_000
MiB = 1 << 20
UNSHARE = [
    "unshare", "--pid", "--fork", "--mount-proc", "--net", "--uts", "--ipc",
    "/bin/true",
]  # fmt: skip


@dataclass
class Bench:
    """What every scenario gets: where to run, how much, and shared results."""

    workspace: Workspace
    quick: bool
    profiler: Any = None
    # Figures one scenario leaves for another (the floor for start latency).
    shared: dict[str, float] | None = None

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def repeats(self, full: int, quick: int, budget: float) -> Iterator[int]:
        """Run numbers: as many as asked, but no new one past ``budget`` s."""
        start = time.monotonic()
        for run in range(self.size(full, quick)):
            if run and time.monotonic() - start > budget:
                print(f"bench: time budget spent after {run} runs", file=sys.stderr)
                return
            yield run

    @contextlib.contextmanager
    def server(self, name: str) -> Iterator[Server]:
        server = Server(self.workspace, name, self.profiler)
        server.start()
        try:
            yield server
        except BaseException:
            print(server.log_tail(), file=sys.stderr)
            raise
        finally:
            server.stop()

    def target(self, server: Server) -> load.Target:
        return load.Target(server.port, self.workspace.credentials)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def start_job(c: Connection, spec: dict[str, Any]) -> str:
    response = c.request("POST", "/v1/jobs", spec)
    if response.status != 201:
        raise RuntimeError(f"start: {response.status} {response.body!r}")
    job_id: str = response.json()["id"]
    return job_id


def job_record(c: Connection, job_id: str) -> dict[str, Any]:
    response = c.request("GET", f"/v1/jobs/{job_id}")
    if response.status != 200:
        raise RuntimeError(f"get: {response.status} {response.body!r}")
    record: dict[str, Any] = response.json()
    return record


def purge(c: Connection, job_id: str) -> None:
    load.wait_until_ended(c, job_id)
    c.request("DELETE", f"/v1/jobs/{job_id}")


# floor


def spawn_isolated() -> float:
    argv = [shutil.which("unshare") or "/usr/bin/unshare", *UNSHARE[1:]]
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, {})
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{' '.join(UNSHARE)} failed: status {status}")
    return elapsed


def floor(bench: Bench) -> list[Figure]:
    spawns = [spawn_isolated() * 1000 for _ in range(bench.size(200, 50))]
    with bench.server("floor") as server, server.connect() as c:
        for _ in range(20):
            c.request("GET", "/v1/healthz")
        gets = [
            timed(lambda: c.request("GET", "/v1/healthz")) * 1000
            for _ in range(bench.size(1000, 200))
        ]
    spawn = Figure.of("floor", "isolated spawn (unshare)", "ms", spawns)
    spawn.note = "util-linux " + " ".join(UNSHARE) + ", until it has exited"
    get = Figure.of("floor", "mTLS GET, kept alive", "ms", gets)
    get.note = "GET /v1/healthz on an open connection"
    assert bench.shared is not None
    bench.shared["spawn_ms"] = spawn.median
    bench.shared["get_ms"] = get.median
    return [spawn, get]


# start latency


def start_latency(bench: Bench) -> list[Figure]:
    assert bench.shared is not None
    if "spawn_ms" not in bench.shared:
        floor(bench)
    samples: list[float] = []
    with bench.server("start-latency") as server, server.connect() as c:
        for _ in range(20):
            start_job(c, jobs.true())
        deadline = time.monotonic() + 60
        for _ in range(bench.size(500, 100)):
            if time.monotonic() > deadline:
                break
            start = time.perf_counter()
            response = c.request("POST", "/v1/jobs", jobs.true())
            samples.append((time.perf_counter() - start) * 1000)
            if response.status != 201:
                raise RuntimeError(f"start: {response.status} {response.body!r}")
    figure = Figure.of("start latency", "POST /v1/jobs until 201", "ms", samples)
    reference = bench.shared["spawn_ms"] + bench.shared["get_ms"]
    limit = 1.5 * reference
    figure.check(
        f"p50 <= {limit:.2f} ms (1.5 x floors)", figure.median <= limit
    ).note = f"p50 is {figure.median / reference:.2f} x (isolated spawn + GET)"
    return [figure]


# start throughput


def start_throughput(bench: Bench) -> list[Figure]:
    clients, seconds = 8, (2.0 if bench.quick else 4.0)
    rates: list[float] = []
    with bench.server("start-throughput") as server:
        for _ in bench.repeats(5, 2, budget=45):
            workers = load.Workers(
                load.start_and_finish,
                bench.target(server),
                [(100_000, seconds)] * clients,
            )
            start = workers.sync()
            results = workers.results(timeout=seconds + 120)
            done = sum(r[0] for r in results)
            end = max(r[1] for r in results)
            rates.append(done / (end - start))
    figure = Figure.of(
        "start throughput", "jobs started+finished, 8 clients", "jobs/s", rates
    )
    cores = os.cpu_count() or 0
    figure.check(f">= 300 jobs/s on {cores} cores", figure.median >= 300)
    figure.note = (
        f"/bin/true, isolated; {seconds:g} s windows; each client POSTs, then"
        " long-polls the output until the job has ended"
    )
    return [figure]


# follow latency


def follow_latency(bench: Bench) -> list[Figure]:
    lines, interval = bench.size(300, 150), 0.010
    polled: list[float] = []
    streamed: list[float] = []
    with bench.server("follow-latency") as server, server.connect() as c:
        for _ in bench.repeats(3, 1, budget=30):
            job_id = start_job(c, jobs.ticker(lines, interval))
            polled += long_poll_latencies(c, job_id)
            job_id = start_job(c, jobs.ticker(lines, interval))
            streamed += follow_latencies(server, job_id)
    poll = Figure.of(
        "follow latency", "write -> long-poll client", "ms", polled, p99=True
    )
    poll.check("p50 <= 2 ms", poll.median <= 2.0)
    poll.note = "a line every 10 ms; GET output?offset=N&wait=30 in a loop"
    poll.samples = []
    stream = Figure.of(
        "follow latency", "write -> follow=true client", "ms", streamed, p99=True
    )
    stream.samples = []
    return [poll, stream]


def line_latencies(data: bytes, now_ns: int) -> list[float]:
    out = []
    for line in data.splitlines():
        _, stamp = line.split()
        out.append((now_ns - int(stamp)) / 1e6)
    return out


def long_poll_latencies(c: Connection, job_id: str) -> list[float]:
    latencies: list[float] = []
    offset, partial = 0, b""
    for _ in range(100_000):
        response = c.request(
            "GET", f"/v1/jobs/{job_id}/output?stream=stdout&offset={offset}&wait=30"
        )
        now = time.monotonic_ns()
        data = partial + response.body
        complete, _, partial = data.rpartition(b"\n")
        if complete:
            latencies += line_latencies(complete, now)
        offset = int(response.headers["jobworker-next-offset"])
        if response.headers.get("jobworker-complete") == "true":
            break
    return latencies


def follow_latencies(server: Server, job_id: str) -> list[float]:
    latencies: list[float] = []
    partial = [b""]

    def sink(piece: memoryview) -> None:
        now = time.monotonic_ns()
        data = partial[0] + bytes(piece)
        complete, _, partial[0] = data.rpartition(b"\n")
        if complete:
            latencies.extend(line_latencies(complete, now))

    with server.connect() as c:
        c.stream("GET", f"/v1/jobs/{job_id}/output?stream=stdout&follow=true", sink)
    return latencies


# output throughput


class Follower:
    """Long-polls a job's whole output from offset 0, checking its CRC-32."""

    def __init__(self, c: Connection, job_id: str) -> None:
        self.c, self.job_id = c, job_id
        self.bytes = 0
        self.crc = 0

    def sink(self, piece: memoryview) -> None:
        self.bytes += len(piece)
        self.crc = zlib.crc32(piece, self.crc)

    def run(self, deadline: float) -> None:
        limit = 16 * MiB
        path = f"/v1/jobs/{self.job_id}/output?limit={limit}&wait=30&offset="
        while time.monotonic() < deadline:
            response = self.c.stream("GET", path + str(self.bytes), self.sink)
            if response.status != 200:
                raise RuntimeError(f"output: {response.status}")
            if response.headers.get("jobworker-complete") == "true":
                return
        raise RuntimeError("follower ran out of time")


def pipe_to_file(blocks: int, target: Path) -> float:
    """The generator's stdout through a pipe into a file by cat: no server."""
    start = time.perf_counter()
    with open(target, "wb") as out:
        generator = subprocess.Popen(
            [jobs.PYTHON, "-c", jobs.GENERATOR, str(blocks)], stdout=subprocess.PIPE
        )
        assert generator.stdout is not None
        cat = subprocess.Popen(["cat"], stdin=generator.stdout, stdout=out)
        generator.stdout.close()
        generator.wait(120)
        cat.wait(120)
    elapsed = time.perf_counter() - start
    size = target.stat().st_size
    target.unlink()
    if size != blocks * jobs.BLOCK:
        raise RuntimeError(f"pipe to file wrote {size} bytes")
    return elapsed


def output_throughput(bench: Bench) -> list[Figure]:
    blocks = bench.size(256, 64)  # 1 GiB, 256 MiB
    total = blocks * jobs.BLOCK
    crc = jobs.expected_crc(blocks)
    repeats = bench.size(3, 2)  # pipe_to_file; the server runs within a budget
    raw = [
        total / MB / pipe_to_file(blocks, bench.workspace.scratch / "raw")
        for _ in range(repeats)
    ]
    end_to_end, capture, serve = [], [], []
    cpu_e2e, cpu_capture, cpu_serve = [], [], []
    per_gib = (1 << 30) / total
    with bench.server("output-throughput") as server, server.connect() as c:
        for _ in bench.repeats(repeats, repeats, budget=90):
            # One long-polling follower from the first byte.
            cpu = server.cpu_seconds()
            start = time.perf_counter()
            job_id = start_job(c, jobs.generator(blocks))
            follower = Follower(c, job_id)
            follower.run(time.monotonic() + 120)
            elapsed = time.perf_counter() - start
            cpu_e2e.append((server.cpu_seconds() - cpu) * per_gib)
            if follower.bytes != total or follower.crc != crc:
                raise RuntimeError(
                    f"follower got {follower.bytes} bytes, crc {follower.crc:#x};"
                    f" expected {total}, {crc:#x}"
                )
            end_to_end.append(total / MB / elapsed)
            # The same output read again, now that it is all on disk.
            again = Follower(c, job_id)
            cpu = server.cpu_seconds()
            start = time.perf_counter()
            again.run(time.monotonic() + 120)
            serve.append(total / MB / (time.perf_counter() - start))
            cpu_serve.append((server.cpu_seconds() - cpu) * per_gib)
            if again.crc != crc:
                raise RuntimeError("second read: checksum differs")
            purge(c, job_id)
            # The server capturing it with nobody reading.
            cpu = server.cpu_seconds()
            start = time.perf_counter()
            job_id = start_job(c, jobs.generator(blocks))
            load.wait_until_ended(c, job_id)
            capture.append(total / MB / (time.perf_counter() - start))
            cpu_capture.append((server.cpu_seconds() - cpu) * per_gib)
            if job_record(c, job_id)["output_bytes"]["stdout"] != total:
                raise RuntimeError("capture: wrong size")
            purge(c, job_id)
    size = f"{total // MiB} MiB"
    e2e = Figure.of("output throughput", f"{size} to 1 long-poller", "MB/s", end_to_end)
    e2e.check(">= 500 MB/s", e2e.median >= 500)
    e2e.note = "from POST to the follower's last byte, CRC-32 verified"
    pipe = Figure.of("output throughput", "raw pipe -> file (cat)", "MB/s", raw)
    cap = Figure.of("output throughput", "server capture, no reader", "MB/s", capture)
    srv = Figure.of("output throughput", "serve finished output", "MB/s", serve)
    cpu_figures = [
        Figure.of("output throughput", f"server CPU per GiB: {what}", "s", values)
        for what, values in (
            ("to 1 long-poller", cpu_e2e),
            ("capture", cpu_capture),
            ("serve", cpu_serve),
        )
    ]
    cpu_figures[0].note = (
        "twistd's user+system CPU seconds: less sensitive than the rates to"
        " whatever else the machine runs"
    )
    return [e2e, pipe, cap, srv, *cpu_figures]


# fan-out


def fan_out(bench: Bench) -> list[Figure]:
    followers, processes = 100, 4
    blocks = bench.size(25, 5)  # 100 MiB, 20 MiB
    total = blocks * jobs.BLOCK
    crc = jobs.expected_crc(blocks)
    times, cpus, matched = [], [], []
    with bench.server("fan-out") as server, server.connect() as c:
        for run in bench.repeats(2, 1, budget=90):
            go = bench.workspace.scratch / f"go-{run}"
            job_id = start_job(c, jobs.generator(blocks, str(go)))
            workers = load.Workers(
                load.followers,
                bench.target(server),
                [(job_id, followers // processes)] * processes,
            )
            workers.sync()
            cpu = server.cpu_seconds()
            go.touch()
            start = time.monotonic()
            results = [r for rs in workers.results(timeout=600) for r in rs]
            cpus.append(server.cpu_seconds() - cpu)
            times.append(max(r[3] for r in results) - start)
            matched.append(sum(1 for r in results if r[1:3] == (total, crc)))
            for r in results:
                if r[1:3] != (total, crc):
                    print(f"bench: a follower got {r}")
            go.unlink()
            purge(c, job_id)
    size = f"{total // MiB} MiB"
    wall = Figure.of("fan-out", f"{followers} followers x {size}: total", "s", times)
    ok = Figure.of("fan-out", "followers whose CRC matched", "", matched)
    ok.check(f"all {followers}", min(matched) == followers)
    cpu_total = Figure.of("fan-out", "server CPU", "s", cpus)
    per = Figure.of(
        "fan-out", "server CPU per follower", "ms", [x / followers * 1000 for x in cpus]
    )
    per.note = (
        f"{followers} follow=true streams in {processes} client processes, all"
        " connected before the first byte; the clients share the 2 cores"
    )
    return [wall, ok, cpu_total, per]


# memory


def memory(bench: Bench) -> list[Figure]:
    finished_jobs = bench.size(10_000, 2_000)
    blocks = bench.size(2560, 256)  # 10 GiB, 1 GiB
    total = blocks * jobs.BLOCK
    clients = 8
    with bench.server("memory") as server:
        time.sleep(1)
        at_start = server.rss()
        workers = load.Workers(
            load.start_and_finish,
            bench.target(server),
            [(finished_jobs // clients, 300.0)] * clients,
        )
        workers.sync()
        done = sum(r[0] for r in workers.results(timeout=420))
        if done != finished_jobs:
            raise RuntimeError(f"only {done} of {finished_jobs} jobs finished")
        time.sleep(1)
        after_jobs = server.rss()
        peak, before_big = slow_follower_peak(server, blocks)
    growth_jobs = (after_jobs - at_start) / MB
    growth_big = (peak - before_big) / MB
    figures = [
        Figure.of("memory", "server RSS after start", "MB", [at_start / MB]),
        Figure.of(
            "memory", f"RSS growth after {finished_jobs:,} jobs", "MB", [growth_jobs]
        ).check("<= 20 MB", growth_jobs <= 20),
        Figure.of(
            "memory",
            f"RSS growth while {total >> 30} GiB, slow follower",
            "MB",
            [growth_big],
        ).check("<= 20 MB", growth_big <= 20),
    ]
    figures[2].note = (
        "peak RSS sampled every 0.25 s while the job writes, minus RSS before"
        " it; the follower reads about 1 MB/s"
    )
    return figures


def slow_follower_peak(server: Server, blocks: int) -> tuple[int, int]:
    stop = threading.Event()

    def slow(piece: memoryview) -> None:
        if stop.is_set():
            raise ConnectionAbortedError("done")
        time.sleep(0.015)

    with server.connect() as c:
        job_id = start_job(c, jobs.generator(1))  # warm the paths up
        purge(c, job_id)
        before = server.rss()
        job_id = start_job(c, jobs.generator(blocks))
        follower = server.connect(timeout=600)

        def follow() -> None:
            with contextlib.suppress(Exception):
                follower.stream("GET", f"/v1/jobs/{job_id}/output?follow=true", slow)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        peak = before
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            peak = max(peak, server.rss())
            if job_record(c, job_id)["status"] != "running":
                break
            time.sleep(0.25)
        else:
            raise RuntimeError("the big job did not end in time")
        peak = max(peak, server.rss())
        stop.set()
        with contextlib.suppress(OSError):  # wakes the thread blocked in recv
            follower.sock.shutdown(socket.SHUT_RDWR)
        follower.close()
        thread.join(10)
        purge(c, job_id)
    return peak, before


# concurrency


def concurrency(bench: Bench) -> list[Figure]:
    count, clients = 1000, 8
    starts, stops = [], []
    with bench.server("concurrency") as server, server.connect() as c:
        for _ in bench.repeats(3, 1, budget=100):
            workers = load.Workers(
                load.sleepers,
                bench.target(server),
                [(count // clients, 600)] * clients,
            )
            t0 = workers.sync()  # they start their jobs
            workers.sync()  # all started
            running = c.request("GET", "/v1/healthz").json()["running_jobs"]
            if running != count:
                raise RuntimeError(f"{running} jobs running, not {count}")
            t1 = workers.sync()  # they stop them
            results = workers.results(timeout=300)
            starts.append(max(r[0] for r in results) - t0)
            stops.append(max(r[1] for r in results) - t1)
            left = c.request("GET", "/v1/healthz").json()["running_jobs"]
            if left:
                raise RuntimeError(f"{left} jobs still running after stop-all")
    start = Figure.of("concurrency", f"start {count} sleep jobs", "s", starts)
    start.note = f"{clients} clients; isolated; all running at once"
    stop = Figure.of("concurrency", f"stop all {count}", "s", stops)
    stop.check("< 2 s", stop.median < 2)
    stop.note = "POST stop for each, until every one has ended"
    return [start, stop]


# sustained load


def sustained_load(bench: Bench) -> list[Figure]:
    """
    8 clients start short jobs back to back while 50 followers stream the
    output of 5 jobs that write a line every 10 ms, for 60 s: errors,
    start latency window by window, and the server's RSS before and after.
    """
    seconds = bench.size(60, 15)
    windows = 6 if not bench.quick else 3
    starters, writers, followers_per_writer = 8, 5, 10
    interval = 0.01
    with bench.server("sustained-load") as server, server.connect() as c:
        warm = start_job(c, jobs.true())
        purge(c, warm)
        time.sleep(1)
        rss_start = server.rss()
        ticks = int(seconds / interval)
        writer_ids = [
            start_job(c, jobs.ticker(ticks, interval)) for _ in range(writers)
        ]
        follow = load.Workers(
            load.followers,
            bench.target(server),
            [(job_id, followers_per_writer) for job_id in writer_ids],
        )
        start = load.Workers(
            load.steady_starts, bench.target(server), [float(seconds)] * starters
        )
        follow.sync()
        t0 = start.sync()
        samples = [s for worker in start.results(timeout=seconds + 120) for s in worker]
        streams = follow.results(timeout=seconds + 120)
        time.sleep(1)
        rss_end = server.rss()
        # A new connection: the first one sat idle past the idle timeout.
        with server.connect() as after:
            expected = [
                job_record(after, j)["output_bytes"]["stdout"] for j in writer_ids
            ]
            for job_id in writer_ids:
                purge(after, job_id)
    errors = [s[3] for s in samples if s[3] is not None]
    for job_streams, size in zip(streams, expected, strict=True):
        for status, received, _crc, _when in job_streams:
            if status != 200 or received != size:
                errors.append(f"follower: {status}, {received} of {size} bytes")
    for error in errors[:5]:
        print(f"bench: sustained-load: {error}", file=sys.stderr)
    span = seconds / windows
    figures = [
        Figure.of("sustained-load", "errors", "", [len(errors)]).check("0", not errors),
        Figure.of("sustained-load", "jobs started and ended", "", [len(samples)]),
    ]
    figures[1].note = (
        f"{starters} clients starting /bin/true back to back while"
        f" {writers * followers_per_writer} followers stream {writers} jobs that"
        f" write a line every {interval * 1000:.0f} ms, for {seconds} s"
    )
    for w in range(windows):
        low, high = t0 + w * span, t0 + (w + 1) * span
        in_window = [s[1] for s in samples if low <= s[0] < high and s[3] is None]
        figures.append(
            Figure.of(
                "sustained-load",
                f"start latency, {w * span:.0f}-{(w + 1) * span:.0f} s",
                "ms",
                in_window,
                p99=True,
                keep=False,
            )
        )
    figures += [
        Figure.of("sustained-load", "server RSS at start", "MB", [rss_start / MB]),
        Figure.of("sustained-load", "server RSS at end", "MB", [rss_end / MB]),
    ]
    return figures


SCENARIOS: dict[str, Callable[[Bench], list[Figure]]] = {
    "floor": floor,
    "helper-setup": helper_setup,
    "start-latency": start_latency,
    "start-throughput": start_throughput,
    "follow-latency": follow_latency,
    "output-throughput": output_throughput,
    "fan-out": fan_out,
    "memory": memory,
    "concurrency": concurrency,
    "sustained-load": sustained_load,
}
