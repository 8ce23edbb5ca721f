"""
A job request with a NUL byte in it, over real mutual TLS: a 400 naming the
field, and no job.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from tests.integration import test_api
from tests.integration.test_api import Server, call, error_code

certs = test_api.certs
manager = test_api.manager
api = test_api.api
server = test_api.server


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"command": "/bin/echo", "args": ["a\x00b"]}, "args[0]"),
        ({"command": "/bin/echo", "args": ["ok", "\x00"]}, "args[1]"),
        ({"command": "/bin/echo\x00"}, "command"),
        ({"command": "/bin/echo", "env": {"A": "\x00"}}, "env.A"),
        ({"command": "/bin/echo", "cwd": "/\x00"}, "cwd"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_nul_in_request_is_400_naming_the_field(
    server: Server, body: dict[str, object], field: str
) -> None:
    raw = json.dumps(body).encode()
    assert b"\\u0000" in raw  # the NUL travels as JSON escapes it
    code, answer, _ = await call(server, "alice", "POST", "/v1/jobs", raw)
    assert (code, error_code(answer)) == (400, "invalid_request")
    assert answer["error"]["message"].startswith(f"{field}: ")
    assert "NUL" in answer["error"]["message"]
    assert server.manager.list() == []
