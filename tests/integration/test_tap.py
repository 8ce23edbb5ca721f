"""`twistd jobworker` for real: start-up errors, and a graceful SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from twisted.python import usage

from jobworker.http.settings import ApiSettings
from jobworker.jobs.spec import IOLimits, Limits
from jobworker.pki import write_dev_pki
from jobworker.tap import TIMEOUTS, Options, default_limits
from tests.host_dirs import visible_tempdir

ROOT = Path(__file__).parents[2]
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


REQUIRED = ["--cert", "s.pem", "--key", "s.key", "--ca", "ca.pem"]
DEFAULTS = [
    "default-cpu", "default-memory", "default-pids", "default-read-bps",
    "default-write-bps", "default-read-iops", "default-write-iops",
]  # fmt: skip


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions([*REQUIRED, *argv])
    return options


def test_default_limits_are_parsed() -> None:
    """--default-* options become the Settings' default limits, sizes in bytes."""
    options = parse(
        "--default-cpu", "0.5", "--default-memory", "512M", "--default-pids", "1024",
        "--default-read-bps", "20M", "--default-write-bps", "10485760",
        "--default-read-iops", "1000", "--default-write-iops", "500",
    )  # fmt: skip
    assert default_limits(options) == Limits(
        cpu=0.5,
        memory=512 << 20,
        pids=1024,
        io=IOLimits(
            read_bps=20 << 20, write_bps=10 << 20, read_iops=1000, write_iops=500
        ),
    )


def test_http_options_default_to_the_settings() -> None:
    """--max-body and the --*-timeout options default to ApiSettings' values."""
    options, settings = parse(), ApiSettings()
    assert options["max-body"] == settings.max_body
    for name in TIMEOUTS:
        assert options[name] == getattr(settings, name.replace("-", "_")), name


def test_no_default_limits_by_default() -> None:
    """Without --default-* options no limit has a server default."""
    assert default_limits(parse()) == Limits()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--default-cpu", "0"], "--default-cpu must be a positive number of CPUs"),
        (["--default-cpu", "nan"], "--default-cpu must be a positive number of CPUs"),
        (["--default-cpu", "two"], "--default-cpu must be a positive number of CPUs"),
        (["--default-memory", "lots"], "--default-memory: must be a size such as"),
        (["--default-memory", "0"], "--default-memory: must be at least one byte"),
        (["--default-pids", "0"], "--default-pids must be a whole number, 1 or more"),
        (["--default-pids", "1.5"], "--default-pids must be a whole number"),
        (["--default-write-bps", "-1"], "--default-write-bps: must be a size"),
        (["--default-read-iops", "x"], "--default-read-iops must be a whole number"),
    ],
)
def test_bad_default_limit_is_a_usage_error(argv: list[str], message: str) -> None:
    """A bad --default-* value is a one-line usage error naming the option."""
    with pytest.raises(usage.UsageError) as caught:
        parse(*argv)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_help_shows_the_default_limits() -> None:
    """`twistd jobworker --help` lists every --default-* option."""
    result = subprocess.run(
        [str(TWISTD), "jobworker", "--help"], capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    for name in DEFAULTS:
        assert f"--{name}=".encode() in result.stdout


@contextmanager
def serving(
    certs: Path, data: Path, *extra: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """twistd with ``extra`` options, up and answering; killed at the end."""
    port = free_port()
    server = subprocess.Popen(
        twistd(certs, data, *extra, port=port),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while curl(certs, url + "/v1/healthz").returncode != 0:
            assert server.poll() is None, server.communicate()[0].decode()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.1)
        yield server, url
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.fixture
def running_server(
    certs: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    with serving(certs, tmp_path / "data", "--grace", "30") as server:
        yield server


def test_job_path_is_the_path_of_jobs(certs: Path, tmp_path: Path) -> None:
    """--job-path is where a job that sets no PATH finds a bare command name."""
    tools = visible_tempdir("jobworker-tools-")
    try:
        (tools / "tool").write_text("#!/bin/sh\necho from the job path\n")
        (tools / "tool").chmod(0o755)
        with serving(certs, tmp_path / "data", "--job-path", str(tools)) as (_, url):
            started = curl(certs, url + "/v1/jobs", "-d", '{"command": "tool"}')
            job = json.loads(started.stdout)
            output = curl(certs, f"{url}/v1/jobs/{job['id']}/output?wait=10")
        assert output.stdout == b"from the job path\n"
    finally:
        shutil.rmtree(tools)


@pytest.mark.root
def test_unisolated_as_root_with_the_flag_serves_and_warns(
    certs: Path, tmp_path: Path
) -> None:
    """An operator who names what they accept gets it, and a warning line
    that says what it is; a job runs."""
    unsafe = ("--no-isolation", "--allow-unisolated-jobs-as-root")
    with serving(certs, tmp_path / "data", *unsafe) as (server, url):
        started = curl(certs, url + "/v1/jobs", "-d", '{"command": "/bin/true"}')
        assert json.loads(started.stdout)["status"] == "running", started
        server.kill()
        output, _ = server.communicate(timeout=30)
    warnings = [line for line in output.splitlines() if b"--no-isolation" in line]
    assert len(warnings) == 1, output.decode()
    assert b"share the host's PID namespace, /tmp, /dev and network" in warnings[0]
    assert b"no system call filter applies" in warnings[0]


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
