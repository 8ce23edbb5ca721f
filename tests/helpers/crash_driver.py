"""
A job server that keeps starting, following, stopping and finishing jobs
until it is killed: the crash test's victim.

It drives the library (``JobManager``), as the HTTP API does, with no TLS or
HTTP in between: those hold nothing that must survive a crash, and leaving
them out makes a start-kill-restart round quick enough to repeat often.

Usage: crash_driver.py DATA_DIR SEED TAG
       crash_driver.py DATA_DIR --die-after-spawn TAG
Writes one JSON object a line on stdout, each once what it says is so:
``ready`` (the store is open), ``started`` (a job's record is written and its
process runs), ``read`` (a follower was handed the combined output up to
``offset``), ``ended`` (the final record is written; ``record`` is it).
Every job carries ``TAG`` in its environment, so that the test can find its
processes wherever they went.

With ``--die-after-spawn`` it starts one ``sleep 1000`` and SIGKILLs itself
as soon as the job's process is spawned, before the record names it: the
worst moment for a crash.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import (
    IProcessProtocol,
    IProcessTransport,
    IReactorTime,
)

from jobworker.jobs.record import Job
from jobworker.jobs.rows import job_to_row
from jobworker.jobs.service import JobManager, Settings
from jobworker.jobs.spec import parse_job_spec
from jobworker.linux.launcher import HelperLauncher, LaunchRequest

TAG = "JOBWORKER_CRASH_TAG"
PYTHON = "/usr/bin/python3"
MAX_LIVE = 12

# What a writer job writes, and so what its output must start with: chunks
# numbered by a counter, stdout's all ASCII, stderr's all with the high bit
# set, so that the combined view can be split back into the two streams.
# The job runs this source; the test execs it to know what to expect.
CHUNKS = """
def chunks(key, count):
    for i in range(count):
        size = (i * 7919 + key * 104729) % 3000
        yield 1, b"%d:%d:" % (key, i) + b"o" * size + b"\\n"
        if i % 3 == 0:
            yield 2, bytes(0x80 | ((key + i + j) & 0x7F) for j in range(size // 4))
"""
WRITER = (
    CHUNKS
    + """
import os, sys, time
key, count = int(sys.argv[1]), int(sys.argv[2])
for n, (fd, data) in enumerate(chunks(key, count)):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if n % 4 == 3:
        time.sleep(0.003)
sys.exit(key % 7)
"""
)


def expected_output(
    key: int, count: int, enough: tuple[int, int] | None = None
) -> tuple[bytes, bytes]:
    """
    What writer job ``key`` of ``count`` chunks writes: stdout, stderr. With
    ``enough``, only until each stream is at least that long (a job stopped
    early had no time to write its million chunks).
    """
    namespace: dict[str, Any] = {}
    exec(CHUNKS, namespace)
    streams: dict[int, list[bytes]] = {1: [], 2: []}
    sizes = {1: 0, 2: 0}
    for fd, data in namespace["chunks"](key, count):
        streams[fd].append(data)
        sizes[fd] += len(data)
        if enough is not None and sizes[1] >= enough[0] and sizes[2] >= enough[1]:
            break
    return b"".join(streams[1]), b"".join(streams[2])


def say(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class Driver:
    def __init__(self, reactor: Any, data_dir: Path, seed: int, tag: str) -> None:
        self.reactor = reactor
        self.rng = random.Random(seed)
        self.tag = tag
        self.manager = JobManager(reactor, data_dir, Settings(default_grace=0.3))
        self.live = 0

    async def run(self) -> None:
        self.manager.open()
        say("ready")
        while True:
            if self.live < MAX_LIVE:
                defer.ensureDeferred(self.one_job())
            await sleep(self.reactor, self.rng.uniform(0, 0.04))

    async def one_job(self) -> None:
        self.live += 1
        try:
            await self._one_job()
        finally:
            self.live -= 1

    async def _one_job(self) -> None:
        rng = self.rng
        key = rng.randrange(1 << 30)
        kind = rng.choices(
            ["writer", "stopped", "stubborn", "sleeper", "quick", "timeout", "missing"],
            weights=[45, 15, 10, 10, 10, 5, 5],
        )[0]
        count = rng.randrange(20, 300) if kind == "writer" else 1_000_000
        writer = {"command": PYTHON, "args": ["-c", WRITER, str(key), str(count)]}
        kinds: dict[str, dict[str, Any]] = {
            "writer": writer,
            "stopped": writer,
            "stubborn": {
                "command": "/bin/sh",
                "args": ["-c", "trap '' TERM; echo ready; sleep 1000"],
            },
            "sleeper": {"command": "/bin/sleep", "args": ["1000"]},
            "quick": {"command": "/bin/echo", "args": [str(key)]},
            "timeout": {
                "command": "/bin/sleep",
                "args": ["1000"],
                "timeout": rng.uniform(0.1, 0.5),
            },
            "missing": {"command": "/no/such/command"},
        }
        spec = parse_job_spec({**kinds[kind], "env": {TAG: self.tag}})
        job = await self.manager.start(spec, "alice", run_as="nobody")
        say("started", id=job.id, kind=kind, key=key, count=count)
        if kind in ("writer", "stopped"):
            defer.ensureDeferred(self.follow(job.id))
        if kind in ("stopped", "stubborn"):
            await sleep(self.reactor, rng.uniform(0.05, 0.5))
            if not self.manager.get(job.id).status.ended:
                self.manager.stop(job.id, grace=rng.uniform(0, 0.5))
        ended: Job = await self.manager.wait(job.id)
        say("ended", id=job.id, record=job_to_row(ended))

    async def follow(self, job_id: str) -> None:
        offset = 0
        while True:
            chunk = await self.manager.read_output(
                job_id, offset=offset, limit=256 * 1024, wait=5
            )
            offset = chunk.next_offset
            say("read", id=job_id, offset=offset)
            if chunk.complete:
                return


async def sleep(reactor: IReactorTime, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


def main(reactor: Any, data_dir: str, seed: str, tag: str) -> defer.Deferred[None]:
    if seed == "--die-after-spawn":
        return defer.ensureDeferred(die_after_spawn(reactor, Path(data_dir), tag))
    driver = Driver(reactor, Path(data_dir), int(seed), tag)
    return defer.ensureDeferred(driver.run())


class DyingLauncher:
    """Spawns a job's process and SIGKILLs the server on the spot: before the
    process's pid reaches the job's record."""

    def __init__(self, reactor: Any) -> None:
        self._launcher = HelperLauncher(reactor)

    def launch(
        self, protocol: IProcessProtocol, request: LaunchRequest
    ) -> IProcessTransport:
        # connectionMade is where the pid is recorded: die instead.
        def die() -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        protocol.connectionMade = die  # type: ignore[attr-defined]
        return self._launcher.launch(protocol, request)


async def die_after_spawn(reactor: Any, data_dir: Path, tag: str) -> None:
    # Without cgroups: the job's cgroup would hold a helper that got as far
    # as joining it, but not one killed before; the go-ahead holds both.
    settings = Settings(cgroups=False)
    manager = JobManager(reactor, data_dir, settings, launcher=DyingLauncher(reactor))
    manager.open()
    spec = parse_job_spec(
        {"command": "/bin/sleep", "args": ["1000"], "env": {TAG: tag}}
    )
    await manager.start(spec, "alice", run_as="nobody")


if __name__ == "__main__":
    task.react(main, sys.argv[1:4])
