"""
The few calls of libseccomp the server needs, through ctypes.

libseccomp turns a list of rules into the BPF program the kernel runs on
every system call, handling the architecture checks and the x32 ABI's
numbers that are easy to get wrong by hand. Only its runtime library
(``libseccomp.so.2``) is needed, no headers and no compiler: the few types
and constants below are the library's stable ABI (``seccomp.h``). The server
compiles a program once and hands it to the launch helper, which loads it
with the kernel's own interface, not through libseccomp.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

LIBRARY = "libseccomp.so.2"

# Actions (SCMP_ACT_*): what the kernel does with a matching system call.
ACT_ALLOW = 0x7FFF0000
ACT_KILL_PROCESS = 0x80000000
_ACT_ERRNO = 0x00050000

# Filter attributes (enum scmp_filter_attr).
ATTR_ACT_BADARCH = 2
ATTR_CTL_OPTIMIZE = 8  # 2: a binary tree of system calls (libseccomp 2.5)

# Comparisons (enum scmp_compare).
CMP_EQ = 4
CMP_MASKED_EQ = 7

# What seccomp_syscall_resolve_name says of a name it does not know.
NR_UNKNOWN = -1


def act_errno(number: int) -> int:
    """SCMP_ACT_ERRNO: fail the call with ``number``, running nothing."""
    return _ACT_ERRNO | (number & 0xFFFF)


class LibseccompError(Exception):
    """libseccomp is missing, or refused what it was asked."""


class _ArgCmp(ctypes.Structure):
    # struct scmp_arg_cmp
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _Version(ctypes.Structure):
    # struct scmp_version
    _fields_ = [
        ("major", ctypes.c_uint),
        ("minor", ctypes.c_uint),
        ("micro", ctypes.c_uint),
    ]


@dataclass(frozen=True)
class ArgCmp:
    """One comparison of a system call's argument ``arg`` (0 to 5)."""

    arg: int
    op: int
    datum_a: int
    datum_b: int = 0


class Libseccomp:
    """The loaded library, its functions typed."""

    def __init__(self, name: str = LIBRARY) -> None:
        try:
            lib: Any = ctypes.CDLL(name)
        except OSError as e:
            raise LibseccompError(f"cannot load {name}: {e}") from None
        lib.seccomp_version.restype = ctypes.POINTER(_Version)
        lib.seccomp_version.argtypes = []
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.restype = None
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [
            *(ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int),
            *(ctypes.c_uint, ctypes.POINTER(_ArgCmp)),
        ]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._lib = lib

    def version(self) -> tuple[int, int, int]:
        v = self._lib.seccomp_version().contents
        return (v.major, v.minor, v.micro)

    def resolve(self, name: str) -> int:
        """The native number of system call ``name``: negative for one that
        only other architectures have, ``NR_UNKNOWN`` for none at all."""
        number: int = self._lib.seccomp_syscall_resolve_name(name.encode())
        return number

    @contextmanager
    def filter(self, default_action: int) -> Iterator[Filter]:
        """A new filter for the native architecture, released afterwards."""
        context = self._lib.seccomp_init(default_action)
        if not context:
            raise LibseccompError("seccomp_init failed")
        try:
            yield Filter(self._lib, context)
        finally:
            self._lib.seccomp_release(context)


class Filter:
    """A filter being built (a ``scmp_filter_ctx``)."""

    def __init__(self, lib: Any, context: int) -> None:
        self._lib = lib
        self._context = context

    def set_attribute(self, attribute: int, value: int) -> None:
        self._check(
            "seccomp_attr_set",
            self._lib.seccomp_attr_set(self._context, attribute, value),
        )

    def add_rule(self, action: int, syscall: int, *comparisons: ArgCmp) -> None:
        """``action`` for ``syscall`` when every comparison holds."""
        array = (_ArgCmp * len(comparisons))(
            *(_ArgCmp(c.arg, c.op, c.datum_a, c.datum_b) for c in comparisons)
        )
        self._check(
            f"seccomp_rule_add (system call {syscall})",
            self._lib.seccomp_rule_add_array(
                self._context, action, syscall, len(comparisons), array
            ),
        )

    def export_bpf(self, fd: int) -> None:
        """Write the program, ``struct sock_filter`` after another, to ``fd``."""
        self._check(
            "seccomp_export_bpf", self._lib.seccomp_export_bpf(self._context, fd)
        )

    @staticmethod
    def _check(call: str, result: int) -> None:
        if result < 0:  # libseccomp returns -errno
            raise LibseccompError(f"{call}: {os.strerror(-result)}")
