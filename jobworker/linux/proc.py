"""
What the server reads of other processes in ``/proc``: one parser of
``/proc/PID/stat``, and the sweep that ends a lost job's session.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass


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


def kill_session(pid: int | None, start_time: int | None) -> int:
    """
    SIGKILL every process of the session ``pid`` led, if that is still the
    session of the job (the start time tells it from a reused number).
    Returns how many were signalled.
    """
    if not pid:
        return 0
    killed = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        other = int(entry)
        stat = read_stat(other)
        if stat is None or stat.session != pid:
            continue
        if start_time is not None and stat.start_time < start_time:
            continue
        try:
            os.kill(other, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed
