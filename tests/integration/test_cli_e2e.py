"""
The real ``jobworker-client`` executable against a real server over mutual
TLS: ``twistd jobworker`` in a subprocess for most tests, and an in-process
server whose first follow stream is cut mid-way for the resumption test.

Jobs run without isolation (``--no-isolation``, and as root
``--allow-unisolated-jobs-as-root``) so that these tests need no root;
isolation has its own tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from jobworker.auth.policy import Policy
from jobworker.http.site import Api
from jobworker.jobs.service import JobManager, Settings
from jobworker.tls import server_tls_options
from tests.pki_fixtures import DevPKI, Pair

pytest_plugins = ["tests.pki_fixtures"]

reactor: Any = global_reactor
BIN = Path(sys.executable).parent
CLIENT = BIN / "jobworker-client"
TWISTD = BIN / "twistd"
POLICY = Path(__file__).parents[2] / "examples" / "policy.toml"
ALL_BYTES = bytes(range(256))
# Jobs may run as another user (the policy's "nobody" when the server is
# root), who may not be able to read our virtualenv: use the system's.
PYTHON = "/usr/bin/python3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Server:
    url: str
    pki: DevPKI

    def env(
        self, user: str = "alice", ca: Path | None = None, pair: Pair | None = None
    ) -> dict[str, str]:
        """The client's environment: nothing of ours but PATH leaks in."""
        pair = pair or self.pki.client(user)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "JOBWORKER_SERVER": self.url,
            "JOBWORKER_CA": str(ca or self.pki.ca),
            "JOBWORKER_CERT": str(pair.cert),
            "JOBWORKER_KEY": str(pair.key),
        }

    def client(
        self,
        *argv: str,
        user: str = "alice",
        ca: Path | None = None,
        pair: Pair | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(CLIENT), *argv],
            env=self.env(user, ca, pair),
            capture_output=True,
            timeout=30,
        )


@pytest.fixture(scope="module")
def server(
    dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """``twistd jobworker`` on a free port, stopped with SIGTERM at the end."""
    port = free_port()
    data = tmp_path_factory.mktemp("data")
    process = subprocess.Popen(
        [str(TWISTD), "--pidfile=", "-n", "jobworker",
         "--cert", str(dev_pki.server.cert), "--key", str(dev_pki.server.key),
         "--ca", str(dev_pki.ca), "--policy", str(POLICY),
         "--data-dir", str(data), "--port", str(port), "--grace", "2",
         "--no-isolation", "--allow-unisolated-jobs-as-root"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(process, port)
        yield Server(f"https://127.0.0.1:{port}", dev_pki)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def wait_for_port(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            output = process.communicate()[0].decode(errors="replace")
            pytest.fail(f"twistd jobworker exited:\n{output}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.05)


def python_job(code: str) -> list[str]:
    return ["--", PYTHON, "-c", code]


# Running jobs


def test_run_prints_the_output_byte_for_byte_and_exits_with_its_code(
    server: Server,
) -> None:
    """run writes every byte value through unchanged, then exits like the job."""
    code = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 4); sys.exit(7)"
    result = server.client("run", *python_job(code))
    assert (result.returncode, result.stderr) == (7, b"")
    assert result.stdout == ALL_BYTES * 4


def test_run_of_a_job_killed_by_a_signal_exits_128_plus_n(server: Server) -> None:
    """A job that kills itself with SIGTERM makes run exit 143, with a note."""
    result = server.client("run", "--", "/bin/sh", "-c", "kill -TERM $$")
    assert result.returncode == 128 + signal.SIGTERM
    assert result.stderr.decode().endswith("was killed by SIGTERM\n")


def test_run_of_a_missing_command_exits_127(server: Server) -> None:
    """A command that cannot be executed: 127 and the server's reason."""
    result = server.client("run", "--", "/nonexistent/command")
    assert result.returncode == 127
    assert b"failed to start" in result.stderr
    assert b"/nonexistent/command" in result.stderr


def test_start_status_list_stop_wait_purge(server: Server) -> None:
    """A job's life through the client, with --json where scripts need it."""
    started = server.client("start", "--json", "--", "sleep", "60")
    assert started.returncode == 0, started.stderr
    job = json.loads(started.stdout)
    job_id = job["id"]
    assert (job["owner"], job["status"]) == ("alice", "running")

    status = server.client("status", "--json", job_id)
    assert json.loads(status.stdout)["status"] == "running"
    for user, argv in [
        ("alice", []),  # her own jobs, by default
        ("bob", ["--all"]),  # bob audits everything
        ("bob", ["--owner", "alice"]),
    ]:
        listed = server.client(
            "list", "--json", "--status", "running", *argv, user=user
        )
        assert job_id in [j["id"] for j in json.loads(listed.stdout)["jobs"]], argv
    bobs = json.loads(server.client("list", "--json", user="bob").stdout)
    assert job_id not in [j["id"] for j in bobs["jobs"]]
    table = server.client("list").stdout.decode()
    assert table.startswith("ID ")
    assert f"{job_id}  alice  " in table

    stopped = server.client("stop", "--grace", "1", job_id)
    assert (stopped.returncode, stopped.stdout) == (
        0,
        f"{job_id} stopping\n".encode(),
    )
    waited = server.client("wait", job_id)
    assert waited.returncode == 128 + signal.SIGTERM
    record = json.loads(server.client("status", "--json", job_id).stdout)
    assert (record["status"], record["signal"]) == ("stopped", signal.SIGTERM)

    again = server.client("stop", job_id)
    assert again.returncode == 8
    assert again.stderr.decode() == (
        f"jobworker-client: job {job_id} has already ended (stopped)\n"
    )
    assert server.client("purge", job_id).returncode == 0
    assert server.client("status", job_id).returncode == 7


def test_ctrl_c_during_run_stops_the_job_and_exits_130(server: Server) -> None:
    """SIGINT to run stops the job (its TERM trap runs), then exit 130."""
    script = 'trap "echo bye; exit 0" TERM; echo started; while :; do sleep 0.1; done'
    process = subprocess.Popen(
        [str(CLIENT), "run", "--", "/bin/sh", "-c", script],
        env=server.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"started\n"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert out.endswith(b"bye\n")  # sh may also report its killed sleep
    [line] = err.decode().splitlines()
    assert line.startswith("jobworker-client: stopping job ")
    job_id = line.split()[3]
    record = json.loads(server.client("status", "--json", job_id).stdout)
    assert (record["status"], record["exit_code"]) == ("stopped", 0)


# Errors: one line, a distinct exit code


def test_unknown_job_exits_7(server: Server) -> None:
    """An id the server does not know: exit 7, one line."""
    result = server.client("status", "0" * 32)
    assert (result.returncode, result.stdout) == (7, b"")
    assert result.stderr == f"jobworker-client: no job {'0' * 32}\n".encode()


def test_auditor_starting_a_job_exits_6(server: Server) -> None:
    """bob may read but not start: permission denied, exit 6."""
    result = server.client("run", "--", "true", user="bob")
    assert result.returncode == 6
    assert result.stderr == (
        b"jobworker-client: permission denied: bob may not start jobs\n"
    )


def test_no_server_exits_3(server: Server) -> None:
    """Nothing listening: connection refused, exit 3."""
    env = server.env() | {"JOBWORKER_SERVER": f"https://127.0.0.1:{free_port()}"}
    result = subprocess.run(
        [str(CLIENT), "list"], env=env, capture_output=True, timeout=30
    )
    assert result.returncode == 3
    assert b"connection refused" in result.stderr


def test_server_from_another_ca_exits_4(server: Server) -> None:
    """Trusting another CA than the server's: not trusted, exit 4."""
    result = server.client("list", ca=server.pki.other_ca)
    assert result.returncode == 4
    assert b"certificate verify failed" in result.stderr


@pytest.mark.parametrize(
    ("which", "alert"),
    [("other_ca_client", b"unknown ca"), ("expired_client", b"certificate expired")],
)
def test_certificate_the_server_refuses_exits_5(
    server: Server, which: str, alert: bytes
) -> None:
    """A client certificate from another CA, or expired: refused, exit 5."""
    result = server.client("list", pair=getattr(server.pki, which))
    assert result.returncode == 5
    assert alert in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_missing_certificate_files_exit_2(server: Server, tmp_path: Path) -> None:
    """No certificate where we were told to look: exit 2, naming the file."""
    missing = Pair(tmp_path / "nobody.pem", tmp_path / "nobody.key")
    result = server.client("list", pair=missing)
    assert result.returncode == 2
    assert str(missing.cert).encode() in result.stderr


# Follow survives the server closing the connection mid-stream


class CutFirstFollow(Resource):
    """
    Test-only root: passes every request to the API's tree, but closes the
    connection of the first follow stream after ``after`` bytes of body.
    """

    def __init__(self, root: IResource, after: int) -> None:
        super().__init__()
        self.root = root
        self.after = after
        self.follow_offsets: list[int] = []

    def getChildWithDefault(self, path: bytes, request: IRequest) -> IResource:
        args = request.args or {}
        if args.get(b"follow") == [b"true"]:
            self.follow_offsets.append(int(args.get(b"offset", [b"0"])[0]))
            if len(self.follow_offsets) == 1:
                cut_after(request, self.after)  # type: ignore[arg-type]
        child: IResource = self.root.getChildWithDefault(path, request)
        return child


def cut_after(request: Request, limit: int) -> None:
    """Let ``limit`` bytes of body through, then close the connection."""
    write = request.write
    sent = 0

    def limited(data: bytes) -> None:
        nonlocal sent
        if sent >= limit:
            return  # the connection is closing
        piece = data[: limit - sent]
        sent += len(piece)
        write(piece)
        if sent >= limit:
            # Through the channel: closing the TLS transport directly would
            # wait for the channel, its producer, to unregister.
            request.loseConnection()

    request.write = limited  # type: ignore[method-assign]


@pytest_twisted.ensureDeferred
async def test_follow_survives_the_server_closing_the_connection(
    dev_pki: DevPKI, tmp_path: Path
) -> None:
    """run's output is whole and in order though its stream was cut once."""
    manager = JobManager(
        reactor,
        tmp_path / "data",
        Settings(isolate=False, allow_unisolated_root=True, default_grace=2),
    )
    manager.open()
    api = Api(manager, Policy.from_toml(POLICY))
    site = api.site()
    cutter = CutFirstFollow(site.resource, after=300_001)
    site.resource = cutter
    tls = server_tls_options(dev_pki.server.cert, dev_pki.server.key, dev_pki.ca)
    port = reactor.listenSSL(0, site, tls, interface="127.0.0.1")
    server = Server(f"https://127.0.0.1:{port.getHost().port}", dev_pki)
    # 2 MiB in 8 bursts: the cut falls inside the second burst.
    code = (
        "import sys, time\n"
        "for _ in range(8):\n"
        "    sys.stdout.buffer.write(bytes(range(256)) * 1024)\n"
        "    sys.stdout.flush()\n"
        "    time.sleep(0.05)\n"
    )
    try:
        out, err, status = await getProcessOutputAndValue(
            str(CLIENT), ["run", *python_job(code)], env=server.env()
        )
    finally:
        await port.stopListening()
        await manager.shutdown()
    assert (status, err) == (0, b"")
    assert len(out) == 8 * 256 * 1024
    assert out == ALL_BYTES * 1024 * 8
    assert cutter.follow_offsets[:2] == [0, 300_001]
