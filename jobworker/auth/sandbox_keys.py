"""
A policy role's sandbox keys (``writable``, ``allow_root``, ``seccomp``,
``tmpfs``), read strictly from its TOML table.

What the text alone can tell is checked here, as the file is parsed; what
the host must tell (the writable paths exist, and are none of the server's)
at start-up, by ``jobworker.auth.host_check``. A problem is a ``KeyProblem``
naming the key path, which the policy file's reader puts after the file's
name.
"""

from __future__ import annotations

from typing import Any

from jobworker.jobs.sandbox import JobSandbox, writable_problem
from jobworker.jobs.spec import InvalidSpec, parse_size

SANDBOX_KEYS = frozenset({"writable", "allow_root", "seccomp", "tmpfs"})
SECCOMP_MODES = {"default": True, "off": False}
# A smaller tmpfs is no use, and more likely "256" meant as "256M".
MIN_TMPFS = 1 << 20
# The most writable paths a role may list (the launch helper's bound).
MAX_WRITABLE = 64
ROOT = "root"


class KeyProblem(Exception):
    """A sandbox key of a role that is wrong: its key path and why."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def parse_sandbox(table: dict[str, Any], path: str) -> JobSandbox:
    """The sandbox of role ``table`` (at key path ``path``)."""
    writable = _writable(table, f"{path}.writable")
    if writable and "run_as" not in table:
        raise KeyProblem(
            f"{path}.writable",
            "needs the role to name its run_as user: what a job leaves in a"
            " writable path would otherwise belong to whoever gets the same"
            " uid next",
        )
    return JobSandbox(
        writable=writable,
        seccomp=_seccomp(table.get("seccomp", "default"), f"{path}.seccomp"),
        tmpfs_size=_tmpfs(table.get("tmpfs"), f"{path}.tmpfs"),
    )


def parse_allow_root(table: dict[str, Any], path: str) -> bool:
    """Whether the role may run jobs as root; refuses ``run_as = "root"``
    without ``allow_root = true``."""
    allow_root = table.get("allow_root", False)
    if not isinstance(allow_root, bool):
        raise KeyProblem(f"{path}.allow_root", "must be true or false")
    if table.get("run_as") == ROOT and not allow_root:
        raise KeyProblem(
            f"{path}.run_as",
            'is "root": say allow_root = true if that is meant (its jobs'
            " then run as uid 0, with no capabilities)",
        )
    return allow_root


def _writable(table: dict[str, Any], path: str) -> tuple[str, ...]:
    value = table.get("writable", [])
    if not isinstance(value, list):
        raise KeyProblem(path, 'must be a list of paths, such as ["/srv/builds"]')
    if len(value) > MAX_WRITABLE:
        raise KeyProblem(path, f"may list at most {MAX_WRITABLE} paths")
    for item in value:
        if not isinstance(item, str):
            raise KeyProblem(path, "must be a list of paths (strings)")
        problem = writable_problem(item)
        if problem is not None:
            raise KeyProblem(path, f"{item!r} {problem}")
    return tuple(dict.fromkeys(value))


def _seccomp(value: object, path: str) -> bool:
    if not isinstance(value, str) or value not in SECCOMP_MODES:
        raise KeyProblem(path, 'must be "default" (the filter) or "off"')
    return SECCOMP_MODES[value]


def _tmpfs(value: object, path: str) -> int | None:
    if value is None:
        return None
    problem = 'must be a size of at least 1M, such as "256M" or 268435456'
    try:
        size = parse_size(value, path)
    except InvalidSpec:
        raise KeyProblem(path, problem) from None
    if not MIN_TMPFS <= size < 2**63:
        raise KeyProblem(path, problem)
    return size
