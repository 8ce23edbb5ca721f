"""
What the server reads of other processes in ``/proc``: one parser of
``/proc/PID/stat``, and the sweep that ends a lost job's session.
"""

from __future__ import annotations

import os
import signal


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(b")") + 2 :].split()


def session_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[3])


def process_start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


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
        if session_of(other) != pid:
            continue
        started = process_start_time(other)
        if start_time is not None and started is not None and started < start_time:
            continue
        try:
            os.kill(other, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed
