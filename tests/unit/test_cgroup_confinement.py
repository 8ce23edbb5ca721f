"""
A job's confinement on fake cgroups, its retries run by a ``task.Clock``: a
kill not sure to have reached every process is done again, a bounded number
of times, and reclaim at start-up removes only this server's leftovers.
"""

from __future__ import annotations

import signal

from twisted.internet.task import Clock

from jobworker.jobs.confinement import KILL_RETRIES, Confinement, JobConfinement
from jobworker.linux.cgroups import CgroupLimits, CgroupUsage, CgroupV1Driver
from tests.fake_cgroupfs import FAKE_PIDS

pytest_plugins = ["tests.fake_cgroupfs"]

# -- a job's confinement --------------------------------------------------------


class KillCounter:
    """A job cgroup that only counts kills; each says whether it was sure."""

    job_id = "j1"

    def __init__(self, sure: list[bool], members: int = 1) -> None:
        self.sure = sure
        self.members = members
        self.kills = 0

    def procs_paths(self) -> list[str]:
        return []

    def set_limits(self, limits: CgroupLimits) -> None:
        pass

    def pids(self) -> set[int]:
        return set(FAKE_PIDS[: self.members])

    def signal_all(self, sig: int) -> int:
        return 0

    def kill_all(self) -> bool:
        self.kills += 1
        return self.sure.pop(0)

    def is_empty(self) -> bool:
        return self.members == 0

    def usage(self) -> CgroupUsage:
        return CgroupUsage(0.0, None, 0, 0, False)

    def remove(self) -> bool:
        return self.members == 0


def test_kill_not_sure_is_done_again() -> None:
    """A SIGKILL whose freezer was still freezing is sent again, a little
    later, until one is sure; another SIGKILL meanwhile adds no retry."""
    cgroup = KillCounter([False, False, False, True])
    clock = Clock()
    confinement = JobConfinement(cgroup, clock)
    confinement.signal(signal.SIGKILL)
    confinement.signal(signal.SIGKILL)
    assert (cgroup.kills, len(clock.getDelayedCalls())) == (2, 1)
    clock.advance(KILL_RETRIES[0])
    clock.advance(KILL_RETRIES[1])
    assert (cgroup.kills, clock.getDelayedCalls()) == (4, [])


def test_kill_again_bounded_and_stops_when_empty() -> None:
    """Kills are retried a bounded number of times, and not once the job is
    empty or has ended (its removal then kills what it finds)."""
    cgroup = KillCounter([False] * 10)
    clock = Clock()
    JobConfinement(cgroup, clock).signal(signal.SIGKILL)
    clock.pump(KILL_RETRIES)
    assert (cgroup.kills, clock.getDelayedCalls()) == (1 + len(KILL_RETRIES), [])

    cgroup = KillCounter([False] * 10)
    JobConfinement(cgroup, clock).signal(signal.SIGKILL)
    cgroup.members = 0
    clock.pump(KILL_RETRIES)
    assert (cgroup.kills, clock.getDelayedCalls()) == (1, [])

    cgroup = KillCounter([False] * 10, members=0)
    confinement = JobConfinement(cgroup, clock)
    confinement.signal(signal.SIGKILL)
    confinement.finish()
    assert (cgroup.kills, clock.getDelayedCalls()) == (1, [])


def test_reclaim_only_this_servers_jobs(v1: CgroupV1Driver) -> None:
    """Reclaim removes the leftovers of the jobs it is given, whatever their
    end, and leaves the others (another server's) alone."""
    for job_id in ("ended", "lost", "theirs"):
        v1.create(job_id)
    confinement = Confinement(v1, "", Clock())
    assert confinement.reclaim({"ended", "lost", "unknown"}) == 2
    assert v1.leftovers() == ["theirs"]
