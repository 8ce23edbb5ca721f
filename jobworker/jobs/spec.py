"""
What a client may ask for: a job request parsed into typed, validated values.

Every rejection raises :class:`InvalidSpec` naming the offending field, so
the API can answer 400 with a message a person can act on. Nothing here
touches the system: whether the command exists is the launcher's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jobworker.linux.launcher import NETWORK_MODES

# Shared with the client; imported by name from here by the server's modules.
from jobworker.wire import ENV_NAME as ENV_NAME
from jobworker.wire import SIZE_UNITS as SIZE_UNITS
from jobworker.wire import InvalidSpec as InvalidSpec
from jobworker.wire import parse_size as parse_size

MAX_ARGS = 4096
MAX_ARG_LENGTH = 128 * 1024
MAX_ENV = 1024
MAX_TOTAL_LENGTH = 1024 * 1024
N = TypeVar("N", int, float)


@dataclass(frozen=True)
class IOLimits:
    """Disk IO limits, in bytes and operations per second."""

    read_bps: int | None = None
    write_bps: int | None = None
    read_iops: int | None = None
    write_iops: int | None = None

    def to_json(self) -> dict[str, int | None]:
        return {
            "read_bps": self.read_bps,
            "write_bps": self.write_bps,
            "read_iops": self.read_iops,
            "write_iops": self.write_iops,
        }

    def is_empty(self) -> bool:
        return all(v is None for v in self.to_json().values())


# Each limit by its name in a request, in the order a request is held to a
# ceiling: the first one above it is the one a refusal names.
LIMIT_NAMES = (
    "io.read_bps",
    "io.write_bps",
    "io.read_iops",
    "io.write_iops",
    "cpu",
    "memory",
    "pids",
)


@dataclass(frozen=True)
class LimitAbove:
    """A limit above its ceiling: its name in a request, and both values."""

    field: str
    requested: float | int
    ceiling: float | int


@dataclass(frozen=True)
class Limits:
    """
    Resource limits of one job, or the most a role's jobs may ask for (its
    ceiling). ``None``: in a request, left out (see ``or_defaults``); in a
    ceiling, none; in a job's record, no limit.
    """

    cpu: float | None = None
    memory: int | None = None
    pids: int | None = None
    io: IOLimits = field(default_factory=IOLimits)

    def to_json(self) -> dict[str, Any]:
        return {
            "cpu": self.cpu,
            "memory": self.memory,
            "pids": self.pids,
            "io": self.io.to_json(),
        }

    def is_empty(self) -> bool:
        return (
            self.cpu is None
            and self.memory is None
            and self.pids is None
            and self.io.is_empty()
        )

    def named(self) -> dict[str, float | int | None]:
        """Each limit by its name in a request (``memory``, ``io.read_bps``)."""
        io = {f"io.{name}": value for name, value in self.io.to_json().items()}
        values = {"cpu": self.cpu, "memory": self.memory, "pids": self.pids, **io}
        return {name: values[name] for name in LIMIT_NAMES}

    def first_above(self, ceiling: Limits) -> LimitAbove | None:
        """The first of these limits above ``ceiling``'s, if any is."""
        ceilings = ceiling.named()
        for name, requested in self.named().items():
            most = ceilings[name]
            if requested is not None and most is not None and requested > most:
                return LimitAbove(f"limits.{name}", requested, most)
        return None

    def or_defaults(self, defaults: Limits, ceiling: Limits | None = None) -> Limits:
        """
        These limits, each one left out taken from ``defaults``, but never
        above ``ceiling``'s; where there is no default, the ceiling itself, so
        that no job escapes a ceiling by leaving a limit out. A limit set here
        is kept as it is: holding it to the ceiling is the caller's check
        (``first_above``), which can name it.
        """
        most = ceiling or Limits()
        io, default_io, most_io = self.io, defaults.io, most.io
        return Limits(
            cpu=_or(self.cpu, defaults.cpu, most.cpu),
            memory=_or(self.memory, defaults.memory, most.memory),
            pids=_or(self.pids, defaults.pids, most.pids),
            io=IOLimits(
                read_bps=_or(io.read_bps, default_io.read_bps, most_io.read_bps),
                write_bps=_or(io.write_bps, default_io.write_bps, most_io.write_bps),
                read_iops=_or(io.read_iops, default_io.read_iops, most_io.read_iops),
                write_iops=_or(
                    io.write_iops, default_io.write_iops, most_io.write_iops
                ),
            ),
        )


def _or(value: N | None, default: N | None, ceiling: N | None) -> N | None:
    """A limit as set; left out, the default capped at the ceiling, or the ceiling."""
    if value is not None:
        return value
    if default is None:
        return ceiling
    return default if ceiling is None else min(default, ceiling)


@dataclass(frozen=True)
class Isolation:
    """How a job is separated from the host."""

    network: str = "none"

    def to_json(self) -> dict[str, Any]:
        return {"network": self.network}


@dataclass(frozen=True)
class JobSpec:
    """A validated job request: an argv, its environment and its limits."""

    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None
    limits: Limits = field(default_factory=Limits)
    isolation: Isolation = field(default_factory=Isolation)
    # Made by parse_job_spec, which checked every field: the service checks
    # only specs built otherwise (by hand, through the library), so that each
    # is checked once. Not part of the value.
    checked: bool = field(default=False, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "args": list(self.args),
            "env": dict(self.env),
            "cwd": self.cwd,
            "timeout": self.timeout,
            "limits": self.limits.to_json(),
            "isolation": self.isolation.to_json(),
        }


def show_size(value: float | int) -> str:
    """A byte count as a person writes it (``2G``) where exact, else its digits."""
    for unit in ("T", "G", "M", "K"):
        if value >= SIZE_UNITS[unit] and value % SIZE_UNITS[unit] == 0:
            return f"{int(value) // SIZE_UNITS[unit]}{unit}"
    return f"{value}"


def parse_job_spec(request: object) -> JobSpec:
    """Turn a decoded JSON request into a :class:`JobSpec`, or raise."""
    body = _object(
        request,
        "body",
        {
            "command",
            "args",
            "env",
            "cwd",
            "timeout",
            "limits",
            "isolation",
        },
    )
    command = _string(body.get("command"), "command")
    if not command:
        raise InvalidSpec("command", "must not be empty")
    args = _args(body.get("args", []))
    env = _env(body.get("env", {}))
    cwd = body.get("cwd")
    if cwd is not None:
        cwd = _string(cwd, "cwd")
        if not cwd.startswith("/"):
            raise InvalidSpec("cwd", "must be an absolute path")
    total = (
        len(command)
        + sum(map(len, args))
        + sum(len(k) + len(v) for k, v in env.items())
    )
    if total > MAX_TOTAL_LENGTH:
        raise InvalidSpec(
            "args", f"command, args and env exceed {MAX_TOTAL_LENGTH} bytes"
        )
    return JobSpec(
        command=command,
        args=args,
        env=env,
        cwd=cwd,
        timeout=_optional_positive(body.get("timeout"), "timeout"),
        limits=_limits(body.get("limits", {})),
        isolation=_isolation(body.get("isolation", {})),
        checked=True,
    )


def checked_spec(spec: JobSpec) -> JobSpec:
    """
    ``spec``, checked as a request is if nothing has checked it yet: a NUL
    byte or an oversized argv in a spec built by hand would otherwise fail
    only in the spawn.
    """
    return spec if spec.checked else parse_job_spec(spec.to_json())


def _object(value: object, name: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidSpec(name, "must be a JSON object")
    for key in value:
        if key not in allowed:
            prefix = "" if name == "body" else f"{name}."
            raise InvalidSpec(f"{prefix}{key}", "unknown field")
    return value


def _string(value: object, name: str, max_length: int = MAX_ARG_LENGTH) -> str:
    if not isinstance(value, str):
        raise InvalidSpec(name, "must be a string")
    if "\x00" in value:
        raise InvalidSpec(name, "must not contain NUL bytes")
    if not value.isascii():
        # JSON may escape half a surrogate pair ("\ud800"): no such string
        # can be given to a process.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidSpec(
                name, "must be valid Unicode (a lone surrogate)"
            ) from None
    if len(value) > max_length:
        raise InvalidSpec(name, f"must be at most {max_length} characters")
    return value


def _args(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidSpec("args", "must be a list of strings")
    if len(value) > MAX_ARGS:
        raise InvalidSpec("args", f"must have at most {MAX_ARGS} items")
    return tuple(_string(v, f"args[{i}]") for i, v in enumerate(value))


def _env(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidSpec("env", "must be an object of strings")
    if len(value) > MAX_ENV:
        raise InvalidSpec("env", f"must have at most {MAX_ENV} variables")
    env = {}
    for key, item in value.items():
        if not ENV_NAME.fullmatch(key):
            raise InvalidSpec(f"env.{key}", "is not a valid variable name")
        env[key] = _string(item, f"env.{key}")
    return env


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSpec(name, "must be a number")
    if not value > 0 or value == float("inf"):
        raise InvalidSpec(name, "must be a positive number")
    return float(value)


def _optional_positive(value: object, name: str) -> float | None:
    return None if value is None else _number(value, name)


def _count(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(name, "must be a whole number")
    if value <= 0:
        raise InvalidSpec(name, "must be positive")
    return value


def _limits(value: object) -> Limits:
    body = _object(value, "limits", {"cpu", "memory", "pids", "io"})
    memory = body.get("memory")
    return Limits(
        cpu=_optional_positive(body.get("cpu"), "limits.cpu"),
        memory=None if memory is None else parse_size(memory, "limits.memory"),
        pids=_count(body.get("pids"), "limits.pids"),
        io=_io(body.get("io", {})),
    )


def _io(value: object) -> IOLimits:
    body = _object(
        value, "limits.io", {"read_bps", "write_bps", "read_iops", "write_iops"}
    )

    def rate(key: str) -> int | None:
        item = body.get(key)
        return None if item is None else parse_size(item, f"limits.io.{key}")

    return IOLimits(
        read_bps=rate("read_bps"),
        write_bps=rate("write_bps"),
        read_iops=_count(body.get("read_iops"), "limits.io.read_iops"),
        write_iops=_count(body.get("write_iops"), "limits.io.write_iops"),
    )


def _isolation(value: object) -> Isolation:
    body = _object(value, "isolation", {"network"})
    network = body.get("network", "none")
    if network not in NETWORK_MODES:
        raise InvalidSpec("isolation.network", 'must be "none" or "host"')
    return Isolation(network=network)
