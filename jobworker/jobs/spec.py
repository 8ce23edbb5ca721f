"""
What a client may ask for: a job request parsed into typed, validated values.

Every rejection raises :class:`InvalidSpec` naming the offending field, so
the API can answer 400 with a message a person can act on. Nothing here
touches the system: whether the command exists is the launcher's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True)
class IOLimits:
    """Disk IO ceilings, in bytes and operations per second."""

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


@dataclass(frozen=True)
class Limits:
    """
    Resource ceilings of one job. In a request ``None`` means "left out": the
    server's default applies, within the role's ceiling (see
    ``jobworker.auth.policy.check_ceilings``); in a job's record, no limit.
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

    def or_defaults(self, defaults: Limits) -> Limits:
        """These limits, with ``defaults``' value for each one left out."""
        io, default_io = self.io.to_json(), defaults.io.to_json()
        return Limits(
            cpu=defaults.cpu if self.cpu is None else self.cpu,
            memory=defaults.memory if self.memory is None else self.memory,
            pids=defaults.pids if self.pids is None else self.pids,
            io=IOLimits(
                **{k: default_io[k] if v is None else v for k, v in io.items()}
            ),
        )


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
    )


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
