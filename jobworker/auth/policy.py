"""
Who may do what.

A client's identity is the subject CN of its verified certificate. The policy
maps identities to roles; a role grants actions over a scope (a caller's own
jobs, or all jobs), names the Unix user its jobs run as, caps the limits a job
may ask for (its ceilings, ``Limits`` as a job's are), says whether host
networking is allowed, and how its jobs' sandbox differs from the server's
usual one (``JobSandbox``).

Visibility: a caller can see a job (its record, in lists and by id) when its
role grants any action over that job's owner. Someone who may stop or purge
another's job must be able to find it; someone with no grant over it learns
nothing, not even that it exists (the API answers 404). An action not granted
on a visible job is refused (403).

The policy file is TOML (see ``jobworker.auth.policy_file`` and
``examples/policy.toml``). Without one, the built-in default denies everyone.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from jobworker.jobs.sandbox import JobSandbox
from jobworker.jobs.spec import JobSpec, Limits, show_size


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
class Role:
    """What a group of identities may do, and how their jobs run."""

    name: str
    grants: Mapping[Action, Scope] = field(default_factory=dict)
    # The user its jobs run as; None: no fixed user (a uid of each job's own,
    # where the server can give one: see jobworker.jobs.launching).
    run_as: str | None = None
    # The largest limits its jobs may ask for; None: no ceiling.
    ceilings: Limits = field(default_factory=Limits)
    allow_host_network: bool = False
    # Its jobs' sandbox (writable paths, system call filter, tmpfs size),
    # and whether run_as may be root: even then, with no capabilities.
    sandbox: JobSandbox = field(default_factory=JobSandbox)
    allow_root: bool = False

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
        show = show_size if field.endswith(("memory", "bps")) else _show_number
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
        # The file format's module builds on this one: imported when used.
        from jobworker.auth.policy_file import read_policy_file

        return read_policy_file(path)

    @classmethod
    def from_toml_text(cls, text: str, source: str = "<policy>") -> Policy:
        """Parse a policy; ``PolicyError`` names ``source`` and the key."""
        from jobworker.auth.policy_file import parse_policy

        return parse_policy(text, source)

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


def check_job_request(role: Role, spec: JobSpec) -> None:
    """
    Refuse a job request above ``role``'s ceilings (``CeilingExceeded``) or
    for host networking the role does not allow (``PermissionDenied``),
    naming the field. A limit the request leaves out is the job library's to
    fill in, within the same ceilings (``Limits.or_defaults``).
    """
    above = spec.limits.first_above(role.ceilings)
    if above is not None:
        raise CeilingExceeded(above.field, above.requested, above.ceiling)
    if spec.isolation.network == "host" and not role.allow_host_network:
        raise PermissionDenied(
            "isolation.network",
            f"role {role.name} does not allow host networking",
        )


def _show_number(value: float | int) -> str:
    return f"{value:g}"
