"""
A job manager that starts one job and then waits to be killed.

The restart tests run this in a subprocess, SIGKILL it mid-job, and open the
same data directory again: a server crash, for real.
Usage: crashing_server.py DATA_DIR COMMAND [ARG...]
Prints the job id once the job has written its first bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorProcess

from jobworker.jobs.service import JobManager
from jobworker.jobs.spec import JobSpec


async def main(reactor: IReactorProcess, data_dir: str, argv: list[str]) -> None:
    manager = JobManager(reactor, Path(data_dir))
    manager.open()
    job = await manager.start(JobSpec(command=argv[0], args=tuple(argv[1:])), "alice")
    await manager.read_output(job.id, wait=30)
    print(job.id, flush=True)
    await defer.Deferred()  # until killed


if __name__ == "__main__":
    task.react(
        lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1], sys.argv[2:]))
    )
