"""
Limits as the kernel takes them and as the start-up log tells them: the CFS
quota of a CPU limit, and which kinds of limit a host enforces. Both drivers
share this; each writes the values into its own control files.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobworker.linux.cgroups.interface import Device

CPU_PERIOD_US = 100_000
# The kernel refuses CFS quotas below 1 ms.
MIN_CPU_QUOTA_US = 1_000


def cpu_max(cores: float) -> tuple[int, int]:
    """``cores`` as a CFS (quota, period) in microseconds."""
    return max(MIN_CPU_QUOTA_US, round(cores * CPU_PERIOD_US)), CPU_PERIOD_US


def enforced(*, swap: bool, io: bool) -> tuple[str, ...]:
    """The kinds of limit a driver enforces, in the order the log names them."""
    kinds = ["cpu", "memory"]
    if swap:
        kinds.append("swap")
    kinds.append("pids")
    if io:
        kinds.append("io")
    return tuple(kinds)


def describe_limits(kinds: Sequence[str], devices: Sequence[Device]) -> str:
    """``kinds`` (from ``enforced``) in words, with the devices IO limits cover."""
    words = list(kinds)
    if "swap" in words:
        words.remove("swap")
        words[words.index("memory")] = "memory (swap included)"
    if devices:
        words[words.index("io")] = "io on " + ", ".join(f"{a}:{b}" for a, b in devices)
    else:
        words.append("no io (no block device)")
    return ", ".join(words)
