"""
Who may do what.

A client's identity is the subject CN of its verified certificate. The policy
maps identities to roles; a role grants actions over a scope (a caller's own
jobs, or all jobs), names the Unix user its jobs run as, caps the limits a job
may ask for, and says whether host networking is allowed.

Visibility: a caller can see a job (its record, in lists and by id) when its
role grants any action over that job's owner. Someone who may stop or purge
another's job must be able to find it; someone with no grant over it learns
nothing, not even that it exists (the API answers 404). An action not granted
on a visible job is refused (403).

The policy file is TOML; see ``examples/policy.toml``. Without one, the
built-in default denies everyone.
"""

from __future__ import annotations

import enum
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jobworker.jobs.spec import SIZE_UNITS, InvalidSpec, Limits, parse_size

ROLE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# What useradd accepts, near enough; the launcher finds out if it exists.
UNIX_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")
BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
IO_RATES = ("read_bps", "write_bps")
IO_COUNTS = ("read_iops", "write_iops")

N = TypeVar("N", int, float)


class Action(enum.Enum):
    START = "start"
    STOP = "stop"
    READ = "read"
    PURGE = "purge"


class Scope(enum.Enum):
    OWN = "own"
    ALL = "all"


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: the CN of its client certificate."""

    name: str


@dataclass(frozen=True)
class IOCeilings:
    """Most disk IO per second a role's job may ask for; None: no ceiling."""

    read_bps: int | None = None
    write_bps: int | None = None
    read_iops: int | None = None
    write_iops: int | None = None


@dataclass(frozen=True)
class Ceilings:
    """The largest limits a role's job may ask for; None: no ceiling."""

    cpu: float | None = None
    memory: int | None = None
    pids: int | None = None
    io: IOCeilings = field(default_factory=IOCeilings)


@dataclass(frozen=True)
class Role:
    """What a group of identities may do, and how their jobs run."""

    name: str
    grants: Mapping[Action, Scope] = field(default_factory=dict)
    run_as: str = "nobody"
    ceilings: Ceilings = field(default_factory=Ceilings)
    allow_host_network: bool = False

    def covers(self, action: Action, identity: Identity, owner: str | None) -> bool:
        """Does this role grant ``action`` over ``owner``'s jobs?"""
        scope = self.grants.get(action)
        if scope is None:
            return False
        return owner is None or scope is Scope.ALL or owner == identity.name


@dataclass(frozen=True)
class Decision:
    """The answer to "may this identity do this?", with why, for the audit log."""

    allowed: bool
    reason: str


@dataclass(frozen=True)
class EffectiveLimits:
    """
    The limits a job gets once its role's ceilings apply: what it asked for;
    where it asked for nothing, the server's default but never above the
    ceiling, or the ceiling where there is no default, so no job escapes a
    ceiling by leaving a limit out. None where none of them says anything.
    """

    cpu: float | None
    memory: int | None
    pids: int | None
    io: Mapping[str, int | None]


class PolicyError(Exception):
    """The policy file is unusable; the message names the file and the key."""


class Forbidden(Exception):
    """A request the caller's role does not allow; ``field`` names the part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CeilingExceeded(Forbidden):
    """A requested limit above the role's ceiling."""

    def __init__(
        self, field: str, requested: float | int, ceiling: float | int
    ) -> None:
        show = _show_size if field.endswith(("memory", "bps")) else _show_number
        super().__init__(
            field,
            f"{show(requested)} is more than this role allows ({show(ceiling)})",
        )
        self.requested = requested
        self.ceiling = ceiling


class PermissionDenied(Forbidden):
    """A request for something the role does not allow at all."""


@dataclass(frozen=True)
class Policy:
    """Roles, and which role each identity has."""

    roles: Mapping[str, Role] = field(default_factory=dict)
    identities: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for identity, role in self.identities.items():
            if role not in self.roles:
                raise ValueError(f"identity {identity!r} has unknown role {role!r}")

    @classmethod
    def default(cls) -> Policy:
        """The built-in policy: no identities, so everyone is denied."""
        return cls()

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Policy:
        """Read a policy file; ``PolicyError`` names the file and the key."""
        source = os.fspath(path)
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except OSError as e:
            raise PolicyError(f"{source}: cannot read: {e.strerror}") from None
        except UnicodeDecodeError:
            raise PolicyError(f"{source}: not UTF-8 text") from None
        return cls.from_toml_text(text, source)

    @classmethod
    def from_toml_text(cls, text: str, source: str = "<policy>") -> Policy:
        """Parse a policy; ``PolicyError`` names ``source`` and the key."""
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise PolicyError(f"{source}: {e}") from None
        try:
            return _parse_policy(document)
        except _Invalid as e:
            raise PolicyError(f"{source}: {e.path}: {e.problem}") from None

    def role_for(self, identity: Identity) -> Role | None:
        name = self.identities.get(identity.name)
        return None if name is None else self.roles[name]

    def authorize(
        self, identity: Identity, action: Action, owner: str | None
    ) -> Decision:
        """
        May ``identity`` do ``action`` on a job of ``owner``? ``owner`` None
        means no particular job (starting one, listing): then any scope will do.
        """
        role = self.role_for(identity)
        verb = action.value
        if role is None:
            return Decision(False, f"{identity.name} has no role")
        scope = role.grants.get(action)
        if scope is None:
            return Decision(False, f"role {role.name} does not grant {verb}")
        if not role.covers(action, identity, owner):
            return Decision(False, f"role {role.name} grants {verb} on own jobs only")
        return Decision(True, f"role {role.name} grants {verb} over {scope.value}")

    def can_see(self, identity: Identity, owner: str) -> bool:
        """Whether a job of ``owner`` exists, as far as ``identity`` may know."""
        role = self.role_for(identity)
        return role is not None and any(
            role.covers(action, identity, owner) for action in role.grants
        )


def check_ceilings(
    role: Role,
    *,
    cpu: float | None = None,
    memory: int | None = None,
    pids: int | None = None,
    io: Mapping[str, int | None] | None = None,
    network: str = "none",
    defaults: Limits | None = None,
) -> EffectiveLimits:
    """
    Refuse a request above ``role``'s ceilings (``CeilingExceeded``) or for
    host networking the role does not allow (``PermissionDenied``), naming
    the field; otherwise return the limits the job should get, with the
    server's ``defaults`` (capped at the ceilings) for those left out.
    """
    ceilings = role.ceilings
    defaults = defaults or Limits()
    requested_io = dict(io or {})
    unknown = set(requested_io) - set(IO_RATES + IO_COUNTS)
    if unknown:
        raise ValueError(f"unknown io limits: {', '.join(sorted(unknown))}")
    effective_io = {
        name: _bounded(
            f"limits.io.{name}",
            requested_io.get(name),
            getattr(ceilings.io, name),
            getattr(defaults.io, name),
        )
        for name in IO_RATES + IO_COUNTS
    }
    limits = EffectiveLimits(
        cpu=_bounded("limits.cpu", cpu, ceilings.cpu, defaults.cpu),
        memory=_bounded("limits.memory", memory, ceilings.memory, defaults.memory),
        pids=_bounded("limits.pids", pids, ceilings.pids, defaults.pids),
        io=effective_io,
    )
    if network == "host" and not role.allow_host_network:
        raise PermissionDenied(
            "isolation.network",
            f"role {role.name} does not allow host networking",
        )
    return limits


def _bounded(
    field: str, requested: N | None, ceiling: N | None, default: N | None
) -> N | None:
    if requested is None:
        if default is None:
            return ceiling
        return default if ceiling is None else min(default, ceiling)
    if ceiling is not None and requested > ceiling:
        raise CeilingExceeded(field, requested, ceiling)
    return requested


# Parsing the policy file. Every check names its key path, as a TOML
# reader would write it, so an administrator can find the line.


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
    _only(table, path, {"grants", "run_as", "allow_host_network", "ceilings"})
    run_as = _string(table.get("run_as", "nobody"), f"{path}.run_as")
    if not UNIX_USER.match(run_as):
        raise _Invalid(f"{path}.run_as", f"{run_as!r} is not a Unix user name")
    allow_host_network = table.get("allow_host_network", False)
    if not isinstance(allow_host_network, bool):
        raise _Invalid(f"{path}.allow_host_network", "must be true or false")
    return Role(
        name=name,
        grants=_parse_grants(table.get("grants", {}), f"{path}.grants"),
        run_as=run_as,
        ceilings=_parse_ceilings(table.get("ceilings", {}), f"{path}.ceilings"),
        allow_host_network=allow_host_network,
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


def _parse_ceilings(value: object, path: str) -> Ceilings:
    table = _table(value, path)
    _only(table, path, {"cpu", "memory", "pids", "io"})
    io_path = f"{path}.io"
    io = _table(table.get("io", {}), io_path)
    _only(io, io_path, set(IO_RATES + IO_COUNTS))
    return Ceilings(
        cpu=_cpu(table.get("cpu"), f"{path}.cpu"),
        memory=_size(table.get("memory"), f"{path}.memory"),
        pids=_count(table.get("pids"), f"{path}.pids"),
        io=IOCeilings(
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


def _show_size(value: float | int) -> str:
    for unit in ("T", "G", "M", "K"):
        if value >= SIZE_UNITS[unit] and value % SIZE_UNITS[unit] == 0:
            return f"{int(value) // SIZE_UNITS[unit]}{unit}"
    return f"{value}"


def _show_number(value: float | int) -> str:
    return f"{value:g}"
