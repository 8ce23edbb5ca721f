"""Parsing job requests: what is accepted, and every rejection names its field."""

from __future__ import annotations

from typing import Any

import pytest

from jobworker.jobs.spec import (
    MAX_ARGS,
    InvalidSpec,
    IOLimits,
    JobSpec,
    Limits,
    checked_spec,
    parse_job_spec,
    parse_size,
)


def test_full_request() -> None:
    """Every documented field is parsed into typed values."""
    spec = parse_job_spec(
        {
            "command": "/usr/bin/python3",
            "args": ["-c", "print('hi')"],
            "env": {"LANG": "C.UTF-8"},
            "cwd": "/tmp",
            "timeout": 600,
            "limits": {
                "cpu": 0.5,
                "memory": "256M",
                "pids": 64,
                "io": {"read_bps": "20M", "write_bps": "10M", "read_iops": 1000},
            },
            "isolation": {"network": "host"},
        }
    )
    assert spec.command == "/usr/bin/python3"
    assert spec.args == ("-c", "print('hi')")
    assert spec.env == {"LANG": "C.UTF-8"}
    assert spec.cwd == "/tmp"
    assert spec.timeout == 600.0
    assert spec.limits == Limits(
        cpu=0.5,
        memory=256 << 20,
        pids=64,
        io=IOLimits(read_bps=20 << 20, write_bps=10 << 20, read_iops=1000),
    )
    assert spec.isolation.network == "host"


def test_minimal_request_defaults() -> None:
    """Only the command is required; the rest defaults to nothing special."""
    assert parse_job_spec({"command": "true"}) == JobSpec(command="true")


def test_round_trip() -> None:
    """A spec's JSON form parses back to the same spec (the store relies on it)."""
    spec = parse_job_spec(
        {"command": "x", "args": ["a"], "limits": {"memory": "1G", "cpu": 2}}
    )
    assert parse_job_spec(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", 1), ("1K", 1024), ("256M", 256 << 20), ("1.5G", 3 << 29), ("2GiB", 2 << 30)],
)
def test_sizes(text: str, expected: int) -> None:
    """Sizes take K, M, G, T suffixes (powers of 1024)."""
    assert parse_size(text, "x") == expected


@pytest.mark.parametrize(
    ("request_body", "field", "message"),
    [
        ([], "body", "must be a JSON object"),
        ({}, "command", "must be a string"),
        ({"command": ""}, "command", "must not be empty"),
        ({"command": 3}, "command", "must be a string"),
        ({"command": "a\x00b"}, "command", "must not contain NUL bytes"),
        ({"command": "x", "bogus": 1}, "bogus", "unknown field"),
        ({"command": "x", "args": "a b"}, "args", "must be a list of strings"),
        ({"command": "x", "args": ["a", 2]}, "args[1]", "must be a string"),
        ({"command": "x", "args": ["a"] * (MAX_ARGS + 1)}, "args", "must have at most"),
        ({"command": "x", "args": ["a" * 200_000]}, "args[0]", "must be at most"),
        ({"command": "x", "args": ["\ud800"]}, "args[0]", "must be valid Unicode"),
        ({"command": "x", "env": {"A": "\udcff"}}, "env.A", "must be valid Unicode"),
        ({"command": "x", "env": {"A": 1}}, "env.A", "must be a string"),
        ({"command": "x", "env": {"1A": "v"}}, "env.1A", "not a valid variable name"),
        ({"command": "x", "env": {"A\n": "v"}}, "env.A\n", "not a valid variable"),
        ({"command": "x", "env": []}, "env", "must be an object"),
        ({"command": "x", "cwd": "tmp"}, "cwd", "must be an absolute path"),
        ({"command": "x", "timeout": 0}, "timeout", "must be a positive number"),
        ({"command": "x", "timeout": True}, "timeout", "must be a number"),
        ({"command": "x", "timeout": "5"}, "timeout", "must be a number"),
        ({"command": "x", "limits": {"cpu": -1}}, "limits.cpu", "positive"),
        ({"command": "x", "limits": {"memory": "lots"}}, "limits.memory", "size"),
        ({"command": "x", "limits": {"memory": 0}}, "limits.memory", "positive"),
        ({"command": "x", "limits": {"pids": 1.5}}, "limits.pids", "whole number"),
        ({"command": "x", "limits": {"disk": 1}}, "limits.disk", "unknown field"),
        (
            {"command": "x", "limits": {"io": {"read_bps": "fast"}}},
            "limits.io.read_bps",
            "size",
        ),
        ({"command": "x", "limits": {"io": {"x": 1}}}, "limits.io.x", "unknown field"),
        (
            {"command": "x", "isolation": {"network": "bridge"}},
            "isolation.network",
            "must be",
        ),
    ],
)
def test_rejections_name_the_field(request_body: Any, field: str, message: str) -> None:
    """Each malformed request is refused with the field it concerns."""
    with pytest.raises(InvalidSpec) as caught:
        parse_job_spec(request_body)
    assert caught.value.field == field
    assert message in caught.value.message


def test_a_parsed_spec_is_not_checked_again() -> None:
    """A spec from parse_job_spec is taken as it is: each spec is checked once."""
    parsed = parse_job_spec({"command": "echo", "args": ["hi"]})
    assert checked_spec(parsed) is parsed


def test_a_spec_built_by_hand_is_checked_as_a_request() -> None:
    """A JobSpec built by hand goes through the request's checks, naming the field."""
    with pytest.raises(InvalidSpec, match=r"args\[0\]: must not contain NUL"):
        checked_spec(JobSpec(command="echo", args=("a\0b",)))
    built = JobSpec(command="echo", args=("hi",))
    assert checked_spec(built) == built
