"""`twistd jobworker` for real: start-up errors, and a graceful SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from jobworker.pki import write_dev_pki

ROOT = Path(__file__).parent.parent
TWISTD = Path(sys.executable).parent / "twistd"
POLICY = ROOT / "examples" / "policy.toml"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    write_dev_pki(directory)
    return directory


def twistd(certs: Path, data: Path, *extra: str, port: int = 0) -> list[str]:
    return [
        str(TWISTD), "--pidfile=", "-n", "jobworker",
        "--cert", str(certs / "server.pem"), "--key", str(certs / "server.key"),
        "--ca", str(certs / "ca.pem"), "--policy", str(POLICY),
        "--data-dir", str(data), "--port", str(port), *extra,
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def curl(certs: Path, url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--cacert", str(certs / "ca.pem"),
         "--cert", str(certs / "alice.pem"), "--key", str(certs / "alice.key"),
         url, *args],
        capture_output=True, timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--cert": "missing.pem"}, "missing.pem"),
        ({"--key": "ca.pem"}, "ca.pem"),
        ({"--policy": "bad-policy.toml"}, "roles.operator.grants.stopp"),
    ],
)
def test_bad_files_are_one_clear_line(
    certs: Path, tmp_path: Path, change: dict[str, str], message: str
) -> None:
    """A missing or bad certificate, key or policy: one line, non-zero exit."""
    (certs / "bad-policy.toml").write_text(
        '[roles.operator]\ngrants = { stopp = "own" }\n'
    )
    argv = twistd(certs, tmp_path)
    for flag, name in change.items():
        argv[argv.index(flag) + 1] = str(certs / name)
    result = subprocess.run(argv, capture_output=True, timeout=30)
    assert result.returncode != 0
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("jobworker: ")
    assert message in lines[0]
    assert b"Traceback" not in result.stdout + result.stderr


def test_missing_option_is_a_usage_error(certs: Path, tmp_path: Path) -> None:
    """Leaving out --ca is refused with a message that names it."""
    argv = twistd(certs, tmp_path)
    del argv[argv.index("--ca") : argv.index("--ca") + 2]
    result = subprocess.run(argv, capture_output=True, timeout=30)
    assert result.returncode != 0
    assert b"--ca is required" in result.stdout + result.stderr


@pytest.fixture
def running_server(
    certs: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    server = subprocess.Popen(
        twistd(certs, tmp_path / "data", "--grace", "30", port=port),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while curl(certs, url + "/v1/healthz").returncode != 0:
        assert server.poll() is None, server.communicate()[0].decode()
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.1)
    yield server, url
    if server.poll() is None:
        server.kill()
        server.wait()


@pytest.mark.root
def test_sigterm_stops_jobs_and_exits_zero(
    certs: Path, running_server: tuple[subprocess.Popen[bytes], str]
) -> None:
    """SIGTERM to twistd stops running jobs (all their processes) and exits 0."""
    server, url = running_server
    started = curl(
        certs, url + "/v1/jobs", "-d",
        json.dumps({"command": "/bin/sh", "args": ["-c", "sleep 1000 & sleep 1000"]}),
    )  # fmt: skip
    job = json.loads(started.stdout)
    assert job["status"] == "running", job
    children = psutil.Process(server.pid).children(recursive=True)
    assert len(children) >= 3
    t0 = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    output, _ = server.communicate(timeout=30)
    # SIGTERM ends sleep at once: far sooner than the 30 s grace
    assert time.monotonic() - t0 < 10
    assert server.returncode == 0, output.decode()
    _, alive = psutil.wait_procs(children, timeout=5)
    assert alive == []
    assert b"Traceback" not in output
