"""The client side loads none of the server: a CLI start imports only what it uses."""

from __future__ import annotations

import json
import subprocess
import sys

SERVER_PACKAGES = (
    "jobworker.jobs",
    "jobworker.http",
    "jobworker.auth",
    "jobworker.linux",
)


def test_client_and_cli_import_no_server_module() -> None:
    """Importing jobworker.cli (and with it the client) loads no module of the
    job library, the HTTP server, the policy or the Linux helpers."""
    probe = (
        "import json, sys, jobworker.cli, jobworker.client;"
        " ours = [m for m in sys.modules if m.startswith('jobworker')];"
        " print(json.dumps(sorted(ours)))"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], check=True, capture_output=True, text=True
        ).stdout
    )
    assert "jobworker.cli" in loaded
    server = [m for m in loaded if m.startswith(SERVER_PACKAGES)]
    assert server == []
