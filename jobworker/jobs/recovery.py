"""
A job a previous server left running: its record marked ``lost``, and what
is left of it killed, without touching anyone else's processes.

The record names the job's first process by PID and start time. After a
crash the PID alone says nothing: the number may be anyone's by now, and
lead someone else's session. So where the job has a cgroup, which holds
every process of the job whatever their PIDs, the cgroup is what is
killed; the recorded session only where its leader is provably the job's
still (the same PID, started at the very tick on record; an isolated job's
leader is its init, whose death ends its PID namespace); and otherwise
nothing, saying why.
"""

from __future__ import annotations

from jobworker.jobs.confinement import Confinement
from jobworker.jobs.record import Job, utc_now
from jobworker.linux.cgroups import CgroupError
from jobworker.linux.proc import NotTheLeader, kill_session
from jobworker.wire import JobStatus

LOST = "the server stopped while the job was running"


def recover_lost(job: Job, confinement: Confinement) -> tuple[Job, str]:
    """
    ``job``'s record, marked lost, once what is left of it is killed; and
    what was killed and how, a phrase for the log.
    """
    killed = kill_leftovers(job, confinement)
    return job.evolve(status=JobStatus.LOST, ended_at=utc_now(), error=LOST), killed


def kill_leftovers(job: Job, confinement: Confinement) -> str:
    """Kill what is left of a lost job; say what was killed, and how."""
    try:
        killed = confinement.kill_lost(job.id)
    except CgroupError as e:
        return f"its cgroup could not be killed ({e}); {_kill_session(job)}"
    if killed is None:
        return f"no cgroup of it is left; {_kill_session(job)}"
    return f"{_processes(killed)} killed through its cgroup"


def _kill_session(job: Job) -> str:
    if job.pid is None:
        return "no process of it was recorded: nothing killed"
    if job.pid_start_time is None:
        return (
            f"pid {job.pid} has no start time on record to tell it from a"
            " later process: nothing killed"
        )
    try:
        killed = kill_session(job.pid, job.pid_start_time)
    except NotTheLeader as e:
        return f"{e}: nothing killed"
    return f"{_processes(killed)} of the session of pid {job.pid} killed"


def _processes(count: int) -> str:
    return "1 process" if count == 1 else f"{count} processes"
