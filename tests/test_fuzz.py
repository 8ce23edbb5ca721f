"""
Inputs that fuzzing found the API answered with a 500, or refused although
its OpenAPI document allows them, pinned down against a real server:
``twistd jobworker`` in a subprocess, over mutual TLS on 127.0.0.1, with a
real job manager in a temporary data directory.

Afterwards the server must be healthy, its log free of tracebacks, and every
job it started gone. Jobs started here are harmless: the server's PATH is an
empty directory, so a bare command name never resolves; they run isolated as
``nobody`` where the tests run as root; at most a few run at once; the data
directory is temporary; and every job is stopped at the end.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from tests.pki_fixtures import DevPKI

pytest_plugins = ["tests.pki_fixtures"]

ROOT = Path(__file__).parent.parent
POLICY = ROOT / "examples" / "policy.toml"
TWISTD = Path(sys.executable).parent / "twistd"
# charlie is an admin: every action on every job.
USER = "charlie"
# A request that takes longer than this is a hang.
REQUEST_TIMEOUT = 20.0


@dataclass
class FuzzServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    pki: DevPKI
    # Jobs that exist when fuzzing starts (ended ones: reading them cannot
    # hang), for requests that name a job.
    job_ids: list[str]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def session(self) -> requests.Session:
        pair = self.pki.client(USER)
        session = requests.Session()
        # Nothing from the environment: no proxy, no other CA bundle.
        session.trust_env = False
        session.cert = (str(pair.cert), str(pair.key))
        session.verify = str(self.pki.ca)
        return session

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        pair = self.pki.client(USER)
        context.load_cert_chain(pair.cert, pair.key)
        return context

    def text(self) -> str:
        return self.log.read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def fuzz_server(
    dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzServer]:
    """twistd with short request deadlines, an empty PATH and at most four
    running jobs; some ended jobs to aim at. Checked healthy and clean, and
    stopped, after the module's tests."""
    directory = tmp_path_factory.mktemp("fuzz")
    empty = directory / "empty-path"
    empty.mkdir()
    port = free_port()
    log = directory / "twistd.log"
    isolation = [] if os.geteuid() == 0 else ["--no-isolation"]
    process = subprocess.Popen(
        [str(TWISTD), "--pidfile=", "-n", "jobworker",
         "--cert", str(dev_pki.server.cert), "--key", str(dev_pki.server.key),
         "--ca", str(dev_pki.ca), "--policy", str(POLICY),
         "--data-dir", str(directory / "data"), "--port", str(port),
         "--max-jobs", "4", "--grace", "1", "--max-body", "64K",
         "--header-timeout", "1", "--body-timeout", "1", *isolation],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "PATH": str(empty)},
    )  # fmt: skip
    server = FuzzServer(process, port, log, dev_pki, [])
    try:
        give_up = time.monotonic() + 30
        while "starting on" not in server.text():
            assert process.poll() is None, server.text()
            assert time.monotonic() < give_up, server.text()
            time.sleep(0.05)
        with server.session() as session:
            for body in (
                {"command": "/bin/echo", "args": ["hi"]},
                {
                    "command": "/bin/sh",
                    "args": ["-c", "printf 'out'; printf 'err' >&2"],
                },
                {"command": "no-such-command"},
            ):
                response = session.post(server.url + "/v1/jobs", json=body, timeout=10)
                assert response.status_code == 201, response.text
                server.job_ids.append(response.json()["id"])
            for job_id in server.job_ids:
                while get_job(session, server, job_id)["status"] == "running":
                    time.sleep(0.05)
        yield server
        assert_healthy_and_clean(server)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def get_job(session: requests.Session, server: FuzzServer, job_id: str) -> Any:
    response = session.get(f"{server.url}/v1/jobs/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def assert_healthy_and_clean(server: FuzzServer) -> None:
    """The server answers, stops every job it runs, exits 0 on SIGTERM with
    nothing left running, and logged no traceback."""
    with server.session() as session:
        response = session.get(server.url + "/v1/healthz", timeout=10)
        assert response.status_code == 200, response.text
        jobs = session.get(server.url + "/v1/jobs", timeout=10).json()["jobs"]
        for job in jobs:
            if job["status"] in ("running", "stopping"):
                session.post(
                    f"{server.url}/v1/jobs/{job['id']}/stop",
                    json={"grace": 0},
                    timeout=10,
                )
    children = psutil.Process(server.process.pid).children(recursive=True)
    server.process.terminate()
    assert server.process.wait(timeout=60) == 0, server.text()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    text = server.text()
    for sign in ("Traceback", "Unhandled", "internal_error", "#critical"):
        assert sign not in text, text


# What fuzzing found, pinned down.

FOUND_BY_FUZZING = [
    # A recursive JSON parser runs out of stack: was a 500.
    (
        "POST",
        "/v1/jobs",
        b"[" * 5000,
        400,
        {"code": "invalid_json", "message": "body: nested too deeply"},
    ),
    # An integer no float can hold, in a field that wants a float: was a 500.
    (
        "POST",
        "/v1/jobs",
        b'{"command": "x", "timeout": 1' + b"0" * 400 + b"}",
        400,
        {
            "code": "invalid_json",
            "message": "body: not valid JSON: a number of 401 digits is too large",
        },
    ),
    # Past a float's range, as a query number: refused as out of range.
    (
        "GET",
        "/v1/jobs/{id}/output?wait=1e400",
        b"",
        400,
        {"code": "invalid_request", "message": "wait: must be from 0 to 300"},
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    FOUND_BY_FUZZING,
    ids=["deep-nesting", "huge-integer", "huge-query-number"],
)
def test_refusals_found_by_fuzzing(
    fuzz_server: FuzzServer,
    method: str,
    path: str,
    body: bytes,
    status: int,
    error: dict[str, str],
) -> None:
    """Inputs fuzzing found (each was a 500), and the edge of a fix, are
    refused with 400 and a JSON error."""
    url = fuzz_server.url + path.replace("{id}", fuzz_server.job_ids[0])
    with fuzz_server.session() as session:
        response = session.request(method, url, data=body, timeout=REQUEST_TIMEOUT)
    assert (response.status_code, response.json()) == (status, {"error": error})


def test_integer_fields_take_integral_floats(fuzz_server: FuzzServer) -> None:
    """An integer field given as 5000.0 is read as 5000, as the document's
    integer (JSON Schema's) allows: here it meets the role's ceiling."""
    with fuzz_server.session() as session:
        response = session.post(
            fuzz_server.url + "/v1/jobs",
            json={"command": "/bin/true", "limits": {"pids": 5000.0}},
            timeout=REQUEST_TIMEOUT,
        )
    assert (response.status_code, response.json()) == (
        403,
        {
            "error": {
                "code": "forbidden",
                "message": "limits.pids: 5000 is more than this role allows (4096)",
            }
        },
    )


def test_query_numbers_in_exponent_notation(fuzz_server: FuzzServer) -> None:
    """A query number written 1e-3, as the document's number allows, is
    taken."""
    job_id = fuzz_server.job_ids[0]
    with fuzz_server.session() as session:
        response = session.get(
            f"{fuzz_server.url}/v1/jobs/{job_id}/output?wait=1e-3&stream=stdout",
            timeout=REQUEST_TIMEOUT,
        )
    assert (response.status_code, response.content) == (200, b"hi\n")
