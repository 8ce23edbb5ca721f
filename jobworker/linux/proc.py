"""
What the server reads of other processes in ``/proc``: one parser of
``/proc/PID/stat``, and the sweep that ends a lost job's session, only
where its leader is provably the job's still.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from jobworker.linux.cgroups.members import signal_members


@dataclass(frozen=True)
class ProcStat:
    """The fields of a ``/proc/PID/stat`` line the server uses."""

    session: int
    # Clock ticks since boot: with the PID, it tells a process from a later
    # one given the same number.
    start_time: int


def parse_stat(line: bytes) -> ProcStat:
    """
    A ``/proc/PID/stat`` line. The command name, in parentheses, may hold
    spaces and parentheses of its own: the fields are those after the last
    ``)``. Raises ``ValueError`` if ``line`` is no such line.
    """
    end_of_name = line.rfind(b")")
    fields = line[end_of_name + 1 :].split()
    if end_of_name < 0 or len(fields) < 20:
        raise ValueError(f"not a /proc/PID/stat line: {line[:200]!r}")
    # proc(5) numbers the fields from 1, the PID: the state, first after the
    # name, is field 3; session is 6 and starttime 22.
    return ProcStat(session=int(fields[3]), start_time=int(fields[19]))


def read_stat(pid: int) -> ProcStat | None:
    """``/proc/PID/stat`` parsed; None if there is no such process (now)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read()
    except OSError:
        return None
    return parse_stat(line)


def session_of(pid: int) -> int | None:
    """The session a process is in; None if there is no such process."""
    stat = read_stat(pid)
    return None if stat is None else stat.session


def process_start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot."""
    stat = read_stat(pid)
    return None if stat is None else stat.start_time


class NotTheLeader(Exception):
    """
    The process a lost job's record names is not there any more: its PID is
    free, or another process's now. Its number says nothing of the job then.
    """


def session_members(session: int) -> set[int]:
    """The processes, zombies too, whose session is ``session``."""
    members = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None and stat.session == session:
                members.add(int(entry))
    return members


def kill_session(pid: int, start_time: int) -> int:
    """
    SIGKILL every process of the session ``pid`` leads, the leader too, if
    ``pid`` is still the process that started at ``start_time`` (clock ticks
    since boot), exactly; how many were signalled. Otherwise raise
    ``NotTheLeader`` and kill nothing: the number may lead someone else's
    session now.

    While any process of a session lives, the kernel gives no new process
    its number: a leader found alive makes every member the job's.
    """
    stat = read_stat(pid)
    if stat is None:
        raise NotTheLeader(f"pid {pid} is gone")
    if stat.start_time != start_time:
        raise NotTheLeader(
            f"pid {pid} is another process now (it started at tick"
            f" {stat.start_time}, the job's leader at {start_time})"
        )
    if stat.session != pid:
        raise NotTheLeader(f"pid {pid} leads no session")
    # Pinned with pidfds first: a member that ends meanwhile and whose number
    # is taken again is never hit.
    return signal_members(lambda: session_members(pid), signal.SIGKILL)
