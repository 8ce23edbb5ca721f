"""
A new PID namespace for the next process the calling thread spawns.

``unshare(CLONE_NEWPID)`` does not move the caller: it only makes the next
process the calling thread creates the first one, PID 1, of a new namespace.
The server does that just around spawning a job's helper, then ``setns``
back, so the helper itself is the job's init: no relay process outside the
namespace, and the spawn keeps its ``posix_spawn`` path. Only the calling
thread is affected (the namespace for children is per thread), and the
server's own PID never changes.

Python 3.11 has no ``os.unshare`` or ``os.setns``: they are called through
ctypes.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWPID = 0x20000000

_libc = ctypes.CDLL(None, use_errno=True)
_unshare = _libc.unshare
_unshare.argtypes = [ctypes.c_int]
_unshare.restype = ctypes.c_int
_setns = _libc.setns
_setns.argtypes = [ctypes.c_int, ctypes.c_int]
_setns.restype = ctypes.c_int


def _check(result: int, call: str) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{call}: {os.strerror(number)}")


@contextmanager
def new_pid_namespace() -> Iterator[None]:
    """
    Within the block, the first process this thread spawns is PID 1 of a
    new PID namespace. Afterwards, this thread's children are born in its
    own namespace again. Raises ``OSError`` if either step fails (without
    ``CAP_SYS_ADMIN``: ``EPERM``).
    """
    # Opened before the unshare: it names the namespace to come back to.
    own = os.open("/proc/thread-self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
        try:
            yield
        finally:
            # Were this to fail, every later child of this thread would be
            # born into the job's namespace: better loud than quiet.
            _check(_setns(own, CLONE_NEWPID), "setns(CLONE_NEWPID)")
    finally:
        os.close(own)
