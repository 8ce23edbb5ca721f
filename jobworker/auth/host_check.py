"""
What a policy's roles ask of the host, checked once at start-up: that each
writable path is a directory there, and none of the server's own; that no
role runs jobs as uid 0 by another name than ``root`` without saying
``allow_root``.

The file's text cannot tell these (``jobworker.auth.sandbox_keys`` checks
what it can). A problem is a ``PolicyError`` naming the file and the key, as
the file's own are.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable
from dataclasses import replace

from jobworker.auth.policy import Policy, Role
from jobworker.auth.policy_file import PolicyError
from jobworker.jobs.sandbox import writable_problem


def check_on_host(policy: Policy, source: str, server_paths: Iterable[str]) -> Policy:
    """
    ``policy`` with its roles' writable paths made real (symlinks
    resolved, as the launch helper takes them), or ``PolicyError``.
    ``server_paths`` are the real paths of the server's own files and data
    directory (what isolated jobs have masked): a writable path may be
    neither one of them, nor in one, nor hold one.
    """
    own = tuple(server_paths)
    roles = {}
    for name, role in policy.roles.items():
        path = f"roles.{name}"  # a role's name is a bare key
        _check_root(role, f"{source}: {path}.run_as")
        real = tuple(
            dict.fromkeys(
                _real_writable(w, own, f"{source}: {path}.writable")
                for w in role.sandbox.writable
            )
        )
        roles[name] = replace(role, sandbox=replace(role.sandbox, writable=real))
    return replace(policy, roles=roles)


def _real_writable(path: str, server_paths: tuple[str, ...], where: str) -> str:
    real = os.path.realpath(path)
    shown = repr(path) if real == path else f"{path!r} (really {real!r})"
    if not os.path.isdir(real):
        raise PolicyError(f"{where}: {shown} is not a directory on this host")
    problem = writable_problem(real)
    if problem is not None:
        raise PolicyError(f"{where}: {shown} {problem}")
    for own in server_paths:
        if _within(real, own) or _within(own, real):
            raise PolicyError(
                f"{where}: {shown} would let jobs write the server's own"
                f" {own!r} (its TLS and policy files and data directory"
                " are never a job's)"
            )
    return real


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _check_root(role: Role, where: str) -> None:
    """``run_as = "root"`` is refused when the file is read; this catches
    another name for uid 0."""
    name = role.run_as
    if not name or role.allow_root:
        return
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return  # unknown: the job library says so when it looks users up
    if uid == 0:
        raise PolicyError(
            f"{where}: {name!r} is uid 0: say allow_root = true if that is"
            " meant (its jobs then run as root, with no capabilities)"
        )
