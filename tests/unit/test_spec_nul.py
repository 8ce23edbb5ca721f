"""
A NUL byte cannot reach execve: every string of a job request that would
carry one is refused, naming the field, before anything is started.
"""

from __future__ import annotations

from typing import Any

import pytest

from jobworker.jobs.spec import InvalidSpec, parse_job_spec

NUL_MESSAGE = "must not contain NUL bytes"


@pytest.mark.parametrize(
    ("request_body", "field", "message"),
    [
        ({"command": "/bin/echo\x00"}, "command", NUL_MESSAGE),
        ({"command": "\x00"}, "command", NUL_MESSAGE),
        ({"command": "x", "args": ["a\x00b"]}, "args[0]", NUL_MESSAGE),
        ({"command": "x", "args": ["ok", "", "\x00"]}, "args[2]", NUL_MESSAGE),
        ({"command": "x", "env": {"A": "v\x00w"}}, "env.A", NUL_MESSAGE),
        # A name with a NUL is no variable name; the field shows it as given.
        ({"command": "x", "env": {"A\x00B": "v"}}, "env.A\x00B", "valid variable"),
        ({"command": "x", "cwd": "/tmp\x00"}, "cwd", NUL_MESSAGE),
        # The NUL is named even where the path is also relative.
        ({"command": "x", "cwd": "\x00tmp"}, "cwd", NUL_MESSAGE),
    ],
)
def test_nul_is_refused_naming_the_field(
    request_body: Any, field: str, message: str
) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_job_spec(request_body)
    assert caught.value.field == field
    assert message in caught.value.message
    assert str(caught.value).startswith(f"{field}: ")
