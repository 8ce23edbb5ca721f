"""
Signalling a cgroup's members, and nothing else: PIDs read from cgroupfs are
pinned with pidfds (Linux 5.3) before they are signalled, so that a number
reused by another process meanwhile is never hit; and the kill of a whole
cgroup without ``cgroup.kill``, done with the cgroup frozen so nothing forks
away.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable

# Signals are sent through pidfds opened in batches: at most this many open
# descriptors at a time.
SIGNAL_BATCH = 256


def signal_members(list_pids: Callable[[], set[int]], sig: int) -> int:
    """
    Signal every process ``list_pids`` reports, and nothing else: a PID read
    from ``cgroup.procs`` may belong to another process by the time it is
    signalled, so each is pinned with a pidfd and signalled only if it is
    still listed once pinned.
    """
    signalled = 0
    pids = sorted(list_pids())
    for start in range(0, len(pids), SIGNAL_BATCH):
        batch = pids[start : start + SIGNAL_BATCH]
        signalled += _signal_batch(list_pids, batch, sig)
    return signalled


def _signal_batch(list_pids: Callable[[], set[int]], pids: list[int], sig: int) -> int:
    pinned: dict[int, int] = {}
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                pinned[pid] = os.pidfd_open(pid)
        members = list_pids()
        signalled = 0
        for pid, fd in pinned.items():
            if pid in members:
                try:
                    signal.pidfd_send_signal(fd, sig)
                    signalled += 1
                except ProcessLookupError:
                    pass
        return signalled
    finally:
        for fd in pinned.values():
            os.close(fd)


def kill_frozen(
    freeze: Callable[[bool], None],
    is_frozen: Callable[[], bool],
    list_pids: Callable[[], set[int]],
) -> bool:
    """
    SIGKILL every process ``list_pids`` reports, with the cgroup frozen so
    that none forks a child that would not be listed; the kills land when it
    thaws. Freezing takes a moment (each process stops on its way back to
    user space; one in uninterruptible sleep only once it wakes), and a child
    forked meanwhile may be missed. Nothing waits here (this runs on the
    reactor's thread): the state is checked again after signalling, and once
    frozen what is listed is everything, so it is signalled again (SIGKILL
    twice is harmless). Still freezing: False, and the caller calls again a
    little later. Always thawed before returning: a cgroup left frozen would
    hold its killed processes, and the job, forever if no call came.
    """
    freeze(True)
    try:
        frozen = is_frozen()
        signal_members(list_pids, signal.SIGKILL)
        if not frozen and is_frozen():
            signal_members(list_pids, signal.SIGKILL)
            frozen = True
        return frozen
    finally:
        freeze(False)
