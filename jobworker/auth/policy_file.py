"""
The policy file: TOML read strictly into a :class:`~jobworker.auth.policy.Policy`.

Every check names its key path as a TOML reader would write it
(``roles.operator.ceilings.memory``, ``identities."ci@example"``), after the
file's name, so an administrator can find the line. See
``examples/policy.toml``.
"""

from __future__ import annotations

import enum
import math
import os
import re
import tomllib
from typing import Any

from jobworker.auth.policy import Action, Policy, Role, Scope
from jobworker.auth.sandbox_keys import (
    SANDBOX_KEYS,
    KeyProblem,
    parse_allow_root,
    parse_sandbox,
)
from jobworker.jobs.spec import InvalidSpec, IOLimits, Limits, parse_size

ROLE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# What useradd accepts, near enough; the launcher finds out if it exists.
UNIX_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")
BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
IO_KEYS = set(IOLimits().to_json())


class PolicyError(Exception):
    """The policy file is unusable; the message names the file and the key."""


def read_policy_file(path: str | os.PathLike[str]) -> Policy:
    """Read a policy file; ``PolicyError`` names the file and the key."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise PolicyError(f"{source}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{source}: not UTF-8 text") from None
    return parse_policy(text, source)


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse a policy; ``PolicyError`` names ``source`` and the key."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{source}: {e}") from None
    try:
        return _parse_policy(document)
    except (_Invalid, KeyProblem) as e:
        raise PolicyError(f"{source}: {e.path}: {e.problem}") from None


class _Invalid(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _parse_policy(document: dict[str, Any]) -> Policy:
    _only(document, "", {"roles", "identities"})
    roles_table = _table(document.get("roles", {}), "roles")
    roles = {
        name: _parse_role(name, value, _join("roles", name))
        for name, value in roles_table.items()
    }
    identities = {}
    for name, value in _table(document.get("identities", {}), "identities").items():
        path = _join("identities", name)
        role = _string(value, path)
        if role not in roles:
            known = ", ".join(sorted(roles)) or "none defined"
            raise _Invalid(path, f"unknown role {role!r} (roles: {known})")
        identities[name] = role
    return Policy(roles, identities)


def _parse_role(name: str, value: object, path: str) -> Role:
    if not ROLE_NAME.match(name):
        raise _Invalid(path, "a role name is letters, digits, _ and - only")
    table = _table(value, path)
    _only(
        table,
        path,
        {"grants", "run_as", "allow_host_network", "ceilings", *SANDBOX_KEYS},
    )
    allow_host_network = table.get("allow_host_network", False)
    if not isinstance(allow_host_network, bool):
        raise _Invalid(f"{path}.allow_host_network", "must be true or false")
    return Role(
        name=name,
        grants=_parse_grants(table.get("grants", {}), f"{path}.grants"),
        run_as=_parse_run_as(table.get("run_as"), f"{path}.run_as"),
        ceilings=_parse_ceilings(table.get("ceilings", {}), f"{path}.ceilings"),
        allow_host_network=allow_host_network,
        sandbox=parse_sandbox(table, path),
        allow_root=parse_allow_root(table, path),
    )


def _parse_grants(value: object, path: str) -> dict[Action, Scope]:
    grants = {}
    for key, scope in _table(value, path).items():
        here = _join(path, key)
        try:
            action = Action(key)
        except ValueError:
            raise _Invalid(
                here, f"unknown action (expected {_choices(Action)})"
            ) from None
        try:
            grants[action] = Scope(_string(scope, here))
        except ValueError:
            raise _Invalid(
                here, f"unknown scope (expected {_choices(Scope)})"
            ) from None
    return grants


def _parse_ceilings(value: object, path: str) -> Limits:
    table = _table(value, path)
    _only(table, path, {"cpu", "memory", "pids", "io"})
    io_path = f"{path}.io"
    io = _table(table.get("io", {}), io_path)
    _only(io, io_path, IO_KEYS)
    return Limits(
        cpu=_cpu(table.get("cpu"), f"{path}.cpu"),
        memory=_size(table.get("memory"), f"{path}.memory"),
        pids=_count(table.get("pids"), f"{path}.pids"),
        io=IOLimits(
            read_bps=_size(io.get("read_bps"), f"{io_path}.read_bps"),
            write_bps=_size(io.get("write_bps"), f"{io_path}.write_bps"),
            read_iops=_count(io.get("read_iops"), f"{io_path}.read_iops"),
            write_iops=_count(io.get("write_iops"), f"{io_path}.write_iops"),
        ),
    )


def _cpu(value: object, path: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _Invalid(path, "must be a positive number of CPUs, such as 0.5 or 2")
    return float(value)


def _count(value: object, path: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _Invalid(path, "must be a positive whole number")
    return value


def _size(value: object, path: str) -> int | None:
    """Bytes (or bytes per second), written as job requests write them."""
    if value is None:
        return None
    try:
        return parse_size(value, path)
    except InvalidSpec:
        raise _Invalid(
            path, 'must be a positive size such as 536870912 or "512M"'
        ) from None


def _table(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(path, "must be a table")
    return value


def _parse_run_as(value: object, path: str) -> str | None:
    """A Unix user name; left out (None), no fixed user."""
    if value is None:
        return None
    name = _string(value, path)
    if not UNIX_USER.match(name):
        raise _Invalid(path, f"{name!r} is not a Unix user name")
    return name


def _string(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid(path, "must be a non-empty string")
    return value


def _only(table: dict[str, Any], path: str, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            expected = ", ".join(sorted(allowed))
            raise _Invalid(_join(path, key), f"unknown key (expected {expected})")


def _join(path: str, key: str) -> str:
    """A TOML key path: ``roles.operator``, or ``identities."ci@example"``."""
    shown = key if BARE_KEY.match(key) else '"' + key.replace('"', '\\"') + '"'
    return f"{path}.{shown}" if path else shown


def _choices(kind: type[enum.Enum]) -> str:
    return ", ".join(member.value for member in kind)
