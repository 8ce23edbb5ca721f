"""
Load clients in separate processes, so that the benchmark's own Python is
never what limits the server.

``run_workers`` starts one process per argument tuple, each running a worker
function from this module. Every worker connects first, then waits on a
shared barrier; the main process passes the barrier too and takes the time
then, so process start-up and TLS handshakes are outside what is measured.
A worker that needs several timed phases waits on the barrier again between
them. Times are ``time.monotonic()``, one clock for every process.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.client import Connection, Credentials

BARRIER_TIMEOUT = 120.0


@dataclass(frozen=True)
class Target:
    """Where the workers connect."""

    port: int
    credentials: Credentials

    def connect(self, timeout: float = 60.0) -> Connection:
        return Connection(
            "127.0.0.1", self.port, self.credentials.context(), timeout=timeout
        )


Sync = Callable[[], None]
Worker = Callable[[Target, Any, Sync], Any]


def _main(
    worker: Worker,
    target: Target,
    args: Any,
    barrier: Any,
    results: Any,
    index: int,
) -> None:
    def sync() -> None:
        barrier.wait(BARRIER_TIMEOUT)

    try:
        results.put((index, True, worker(target, args, sync)))
    except BaseException:
        results.put((index, False, traceback.format_exc()))
        barrier.abort()


class Workers:
    """A group of worker processes and the barrier they meet at."""

    def __init__(self, worker: Worker, target: Target, args: list[Any]) -> None:
        context = multiprocessing.get_context("spawn")
        self._barrier = context.Barrier(len(args) + 1)
        self._results = context.Queue()
        self._processes = [
            context.Process(
                target=_main,
                args=(worker, target, a, self._barrier, self._results, i),
                daemon=True,
            )
            for i, a in enumerate(args)
        ]
        for process in self._processes:
            process.start()

    def sync(self) -> float:
        """Meet the workers at the barrier; the time all were there."""
        self._barrier.wait(BARRIER_TIMEOUT)
        return time.monotonic()

    def results(self, timeout: float) -> list[Any]:
        """Every worker's result, in order; raises if one failed."""
        deadline = time.monotonic() + timeout
        got: dict[int, Any] = {}
        try:
            while len(got) < len(self._processes):
                index, ok, value = self._results.get(
                    timeout=max(deadline - time.monotonic(), 0.1)
                )
                if not ok:
                    raise RuntimeError(f"load worker {index} failed:\n{value}")
                got[index] = value
        finally:
            self.close()
        return [got[i] for i in range(len(self._processes))]

    def close(self) -> None:
        for process in self._processes:
            process.join(5)
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGKILL)
                process.join(5)


# Workers


def start_and_finish(target: Target, args: tuple[int, float], sync: Sync) -> Any:
    """
    Start ``/bin/true`` jobs one after another, each until it has finished
    (a long-poll on its output answers once the job has ended), for at most
    ``count`` jobs or ``seconds``. Returns (jobs done, time of the last).
    """
    count, seconds = args
    done, last = 0, 0.0
    with target.connect() as c:
        sync()
        deadline = time.monotonic() + seconds
        while done < count and time.monotonic() < deadline:
            response = c.request("POST", "/v1/jobs", {"command": "/bin/true"})
            if response.status != 201:
                raise RuntimeError(f"start: {response.status} {response.body!r}")
            job_id = response.json()["id"]
            wait_until_ended(c, job_id)
            done += 1
            last = time.monotonic()
    return done, last


def wait_until_ended(c: Connection, job_id: str) -> None:
    """
    A long-poll on stderr, which the benchmark's jobs never write to: it is
    answered once the job has ended, at no cost to the server meanwhile.
    """
    offset = 0
    for _ in range(1000):
        response = c.request(
            "GET",
            f"/v1/jobs/{job_id}/output?stream=stderr&offset={offset}&wait=120",
        )
        if response.status != 200:
            raise RuntimeError(f"output: {response.status} {response.body!r}")
        if response.headers.get("jobworker-complete") == "true":
            return
        offset = int(response.headers["jobworker-next-offset"])
    raise RuntimeError(f"job {job_id} did not end")


def sleepers(target: Target, args: tuple[int, int], sync: Sync) -> Any:
    """
    Phase 1: start ``count`` sleep jobs. Phase 2: stop them all, and wait
    until each has ended. Returns the times each phase finished.
    """
    count, seconds = args
    ids: list[str] = []
    with target.connect() as c:
        sync()
        for _ in range(count):
            response = c.request(
                "POST", "/v1/jobs", {"command": "/bin/sleep", "args": [str(seconds)]}
            )
            if response.status != 201:
                raise RuntimeError(f"start: {response.status} {response.body!r}")
            ids.append(response.json()["id"])
        started = time.monotonic()
        sync()  # every client has started its jobs
        sync()  # the main process has counted them
        for job_id in ids:
            response = c.request("POST", f"/v1/jobs/{job_id}/stop")
            if response.status != 202:
                raise RuntimeError(f"stop: {response.status} {response.body!r}")
        for job_id in ids:
            wait_until_ended(c, job_id)
        stopped = time.monotonic()
    return started, stopped


def followers(target: Target, args: tuple[str, int], sync: Sync) -> Any:
    """
    ``count`` threads, each following one job's output on its own
    connection from offset 0. The follow requests are sent before the
    barrier; the job starts writing after it. Returns, per follower, the
    bytes received, their CRC-32 and the time the stream ended.
    """
    job_id, count = args
    connections = [target.connect(timeout=300) for _ in range(count)]
    path = f"/v1/jobs/{job_id}/output?follow=true&offset=0"
    for c in connections:
        c.send("GET", path)
    results: list[Any] = [None] * count

    def follow(i: int, c: Connection) -> None:
        state = [0, 0]  # bytes, crc

        def sink(piece: memoryview) -> None:
            state[0] += len(piece)
            state[1] = zlib.crc32(piece, state[1])

        try:
            response = c.read_response(sink)
            results[i] = (response.status, state[0], state[1], time.monotonic())
        except Exception as e:
            results[i] = (repr(e), state[0], state[1], time.monotonic())
        finally:
            c.close()

    sync()
    threads = [
        threading.Thread(target=follow, args=(i, c), daemon=True)
        for i, c in enumerate(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    return results


def steady_starts(target: Target, seconds: float, sync: Sync) -> Any:
    """
    Start ``/bin/true`` jobs one after another for ``seconds``, each until it
    has ended. A failed request is counted, not raised: the connection is
    made anew and the loop goes on. Returns, per job, (time it was asked
    for, milliseconds until its 201, milliseconds until it had ended, error
    or None).
    """
    samples: list[tuple[float, float, float, str | None]] = []
    c = target.connect()
    try:
        sync()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            asked = time.monotonic()
            error: str | None = None
            started = ended = 0.0
            try:
                response = c.request("POST", "/v1/jobs", {"command": "/bin/true"})
                started = (time.monotonic() - asked) * 1000
                if response.status != 201:
                    error = f"start: {response.status} {response.body[:200]!r}"
                else:
                    wait_until_ended(c, response.json()["id"])
                    ended = (time.monotonic() - asked) * 1000
            except Exception as e:
                error = repr(e)
            samples.append((asked, started, ended, error))
            if error is not None:
                c.close()
                c = target.connect()
    finally:
        c.close()
    return samples
