"""Running the server as a command that must fail at start-up, and how."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

POLICY = Path(__file__).parents[2] / "examples" / "policy.toml"


def server_options(certs: Path, data: Path) -> list[str]:
    """The server's options: the dev PKI in ``certs``, a port the OS picks."""
    return [
        "--cert", str(certs / "server.pem"), "--key", str(certs / "server.key"),
        "--ca", str(certs / "ca.pem"), "--policy", str(POLICY),
        "--data-dir", str(data), "--port", "0",
        *([] if os.geteuid() == 0 else ["--no-isolation"]),
    ]  # fmt: skip


def one_line_failure(argv: list[str], cwd: Path | None = None) -> str:
    """Run the server, which must fail: its one line on stderr."""
    result = subprocess.run(argv, capture_output=True, cwd=cwd, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("jobworker: ")
    assert b"Traceback" not in result.stdout + result.stderr
    return lines[0]
