"""
jobworker-client: parsing, what each command prints, and the mapping of
errors and job endings to exit codes. The commands run against a fake
client; nothing touches the network or the reactor.
"""

from __future__ import annotations

import builtins
import datetime
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from jobworker.cli import dispatch, main, parse
from jobworker.cli.connection import Connection, connection_from
from jobworker.cli.console import Console, Interrupt
from jobworker.cli.exits import Exit, UsageError, explain, job_exit_code
from jobworker.client import (
    AccessDenied,
    BadRequest,
    CertificateRejected,
    Conflict,
    ConnectionFailed,
    ErrorResponse,
    JobRecord,
    JobworkerClient,
    NotFound,
    ServerBusy,
    ServerNotTrusted,
    Unavailable,
)
from jobworker.pki import make_ca, make_client_cert
from jobworker.tls import TLSConfigError
from jobworker.wire import OutputChunk

ID = "8f0c1e0e2b7a4c55b0b1d6a1c3e9f7aa"


def record(**changes: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": ID,
        "owner": "alice",
        "command": "/bin/echo",
        "args": ["hi there"],
        "status": "running",
        "exit_code": None,
        "signal": None,
        "oom_killed": False,
        "error": None,
        "created_at": "2026-11-22T10:00:00.123Z",
        "started_at": "2026-11-22T10:00:01.456Z",
        "ended_at": None,
        "run_as": "nobody",
        "usage": None,
        "output_bytes": {"stdout": 3, "stderr": 0},
    }
    job.update(changes)
    return job


def job(**changes: Any) -> JobRecord:
    return JobRecord.from_json(record(**changes))


class FakeClient(JobworkerClient):
    """Answers from canned records and output; records every call."""

    def __init__(self) -> None:
        super().__init__("https://fake.test", cast(HTTPClient, None), Clock())
        self.calls: list[tuple[Any, ...]] = []
        self.records: dict[str, JobRecord] = {ID: job()}
        self.final: dict[str, JobRecord] = {}
        self.errors: dict[str, Exception] = {}
        self.chunks: list[bytes] = [b"hi\n"]
        self.follow_gate: Deferred[None] | None = None
        self.started = 0
        self.start_gate: Deferred[None] | None = None
        self.stop_error: Exception | None = None
        self.closed = False

    def _check(self, job_id: str) -> None:
        if job_id in self.errors:
            raise self.errors[job_id]
        if job_id not in self.records:
            raise NotFound(404, "not_found", f"no job {job_id}")

    async def start(self, spec: Any) -> JobRecord:
        self.calls.append(("start", spec))
        if self.start_gate is not None:
            await self.start_gate
        self.started += 1
        job_id = f"job{self.started}"
        self.records[job_id] = JobRecord.from_json(
            record(id=job_id, command=spec["command"], args=spec["args"])
        )
        return self.records[job_id]

    async def stop(self, job_id: str, grace: float | None = None) -> JobRecord:
        self.calls.append(("stop", job_id, grace))
        self._check(job_id)
        if self.stop_error is not None:
            raise self.stop_error
        return JobRecord.from_json(dict(self.records[job_id].raw, status="stopping"))

    async def status(self, job_id: str) -> JobRecord:
        self.calls.append(("status", job_id))
        self._check(job_id)
        return self.records[job_id]

    async def list(
        self, status: str | None = None, owner: str | None = None
    ) -> builtins.list[JobRecord]:
        self.calls.append(("list", status, owner))
        return [j for j in self.records.values() if owner in (None, j.owner)]

    async def purge(self, job_id: str) -> None:
        self.calls.append(("purge", job_id))
        self._check(job_id)

    async def read(
        self,
        job_id: str,
        stream: str = "combined",
        offset: int = 0,
        wait: float = 0,
        limit: int | None = None,
    ) -> OutputChunk:
        self.calls.append(("read", job_id, stream, offset))
        self._check(job_id)
        ends = [sum(map(len, self.chunks[: i + 1])) for i in range(len(self.chunks))]
        for chunk, end in zip(self.chunks, ends, strict=True):
            if offset < end:
                start = end - len(chunk)
                data = chunk[offset - start :]
                return OutputChunk(data, offset, end, end == ends[-1])
        return OutputChunk(b"", offset, offset, True)

    async def follow(
        self, job_id: Any, write: Any, stream: str = "combined", offset: int = 0
    ) -> int:
        self.calls.append(("follow", job_id, stream, offset))
        self._check(job_id)
        for chunk in self.chunks:
            write(chunk)
            offset += len(chunk)
        if self.follow_gate is not None:
            await self.follow_gate
        return offset

    async def wait(self, job_id: str) -> JobRecord:
        self.calls.append(("wait", job_id))
        self._check(job_id)
        return self.final.get(job_id, job(id=job_id, status="exited", exit_code=0))

    async def close(self) -> None:
        self.closed = True

    def names(self) -> builtins.list[str]:
        return [call[0] for call in self.calls]


@dataclass
class Run:
    """One invocation of the CLI against a fake client."""

    client: FakeClient
    done: Deferred[int]
    interrupt: Interrupt
    stdout: io.BytesIO = field(default_factory=io.BytesIO)
    stderr: io.StringIO = field(default_factory=io.StringIO)
    connections: list[Connection] = field(default_factory=list)

    @property
    def code(self) -> int:
        results: list[int] = []

        def keep(code: int) -> int:
            results.append(code)
            return code

        self.done.addCallback(keep)
        assert results, "the command has not finished"
        return results[0]

    @property
    def out(self) -> bytes:
        return self.stdout.getvalue()

    @property
    def err(self) -> list[str]:
        return self.stderr.getvalue().splitlines()


def cli(
    argv: Sequence[str],
    client: FakeClient | None = None,
    environ: dict[str, str] | None = None,
    connect_error: Exception | None = None,
) -> Run:
    """Parse ``argv`` and dispatch it, as main() does, to a fake client."""
    client = client or FakeClient()
    stdout, stderr = io.BytesIO(), io.StringIO()
    interrupt = Interrupt()
    connections: list[Connection] = []

    def connect(connection: Connection) -> JobworkerClient:
        connections.append(connection)
        if connect_error is not None:
            raise connect_error
        return client

    console = Console(stdout, stderr)
    done = Deferred.fromCoroutine(
        dispatch(parse(argv), connect, console, interrupt, environ or {})
    )
    interrupt.cancel = done.cancel
    return Run(client, done, interrupt, stdout, stderr, connections)


def json_lines(data: bytes) -> list[Any]:
    return [json.loads(line) for line in data.decode().splitlines()]


@pytest.fixture(scope="module")
def as_alice(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose client certificate has the subject CN alice."""
    cert = tmp_path_factory.mktemp("certs") / "alice.pem"
    cert.write_bytes(make_client_cert(make_ca("test CA"), "alice").cert_pem())
    return {"JOBWORKER_CERT": str(cert)}


def certificate_without_cn(path: Path) -> Path:
    """Write a self-signed certificate whose subject has no CN."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jobworker")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def three_owners() -> FakeClient:
    """A client with one job each of alice, bob and charlie."""
    client = FakeClient()
    client.records = {
        name: job(id=name * 4, owner=name) for name in ("alice", "bob", "charlie")
    }
    return client


# Parsing


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--", "ls", "-l", "--json"],
        ["run", "ls", "-l", "--json"],
    ],
)
def test_run_takes_the_command_after_its_options(argv: list[str]) -> None:
    """Everything from the command on is the job's, with or without --."""
    args = parse(argv)
    assert args.command == ["ls", "-l", "--json"]
    assert args.json is False


def test_job_options_become_the_request() -> None:
    """Limits, env, cwd, timeout and network map onto the API's fields."""
    run = cli(
        [
            "start",
            "--env", "LANG=C.UTF-8", "--env", "EMPTY=",
            "--cwd", "/tmp", "--timeout", "600",
            "--cpu", "0.5", "--memory", "256M", "--pids", "64",
            "--io-read-bps", "20M", "--io-write-bps", "10M",
            "--io-read-iops", "1000", "--io-write-iops", "500",
            "--network", "host",
            "--", "/usr/bin/python3", "-c", "print('hi')",
        ]
    )  # fmt: skip
    assert run.code == Exit.OK
    [(_, spec)] = run.client.calls
    assert spec == {
        "command": "/usr/bin/python3",
        "args": ["-c", "print('hi')"],
        "env": {"LANG": "C.UTF-8", "EMPTY": ""},
        "cwd": "/tmp",
        "timeout": 600.0,
        "limits": {
            "cpu": 0.5,
            "memory": 256 << 20,
            "pids": 64,
            "io": {
                "read_bps": 20 << 20,
                "write_bps": 10 << 20,
                "read_iops": 1000,
                "write_iops": 500,
            },
        },
        "isolation": {"network": "host"},
    }


def test_a_bare_request_has_only_the_argv() -> None:
    """Options left out are left to the server's defaults."""
    run = cli(["start", "--", "true"])
    assert run.client.calls == [("start", {"command": "true", "args": []})]


def test_start_several_jobs_in_order() -> None:
    """Each --job is one job, split like a shell would; -- CMD comes last."""
    run = cli(
        ["start", "--cpu", "1", "--job", "echo 'a b'", "--job", "make lint", "--",
         "sleep", "5"]
    )  # fmt: skip
    assert run.code == Exit.OK
    argvs = [[spec["command"], *spec["args"]] for _, spec in run.client.calls]
    assert argvs == [["echo", "a b"], ["make", "lint"], ["sleep", "5"]]
    assert all(spec["limits"] == {"cpu": 1.0} for _, spec in run.client.calls)
    assert run.out == b"job1\njob2\njob3\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["start"], "start: give a command"),
        (["run"], "run: give the command"),
        (["run", "--cpu", "-1", "ls"], "run: argument --cpu: '-1' must be positive"),
        (["run", "--memory", "lots", "ls"], "argument --memory: 'lots' is not a size"),
        (["run", "--pids", "1.5", "ls"], "argument --pids: '1.5' is not a number"),
        (["run", "--env", "1A=2", "ls"], "argument --env: '1A=2' is not NAME=VALUE"),
        (["run", "--env", "A\n=2", "ls"], "argument --env: 'A\\n=2' is not NAME"),
        (["run", "--network", "bridge", "ls"], "argument --network: invalid choice"),
        (["start", "--job", "'open"], '--job "\'open": No closing quotation'),
        (["start", "--job", ""], "--job: give a command"),
        (["stop", "--grace", "5000", "x"], "argument --grace: give seconds"),
        (["stop"], "stop: the following arguments are required: ID"),
        (["list", "--status", "done"], "'done' is not one of running"),
        (["list", "--owner", ""], "argument --owner: give a name"),
        (["output", "--offset", "-3", "x"], "argument --offset: '-3' is not a whole"),
        (["output", "--stream", "both", "x"], "argument --stream: invalid choice"),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_arguments_are_usage_errors(argv: list[str], message: str) -> None:
    """Each bad argument is a UsageError whose message names it."""
    with pytest.raises(UsageError) as caught:
        parse(argv)
    assert message in str(caught.value)


def test_common_options_before_or_after_the_command() -> None:
    """--server and --json work on either side; after does not erase before."""
    args = parse(["--server", "https://a:1", "--json", "status", "x"])
    assert (args.server, args.json) == ("https://a:1", True)
    args = parse(["status", "x", "--server", "https://b:2", "--json"])
    assert (args.server, args.json) == ("https://b:2", True)
    args = parse(["--user", "bob", "list"])
    assert args.user == "bob"


def connection(argv: list[str], environ: dict[str, str]) -> Connection:
    return connection_from(parse([*argv, "list"]), environ)


def test_connection_defaults_to_the_dev_pki() -> None:
    """With nothing given: localhost:8443 and alice's files in certs/."""
    assert connection([], {}) == Connection(
        "https://127.0.0.1:8443", "certs/ca.pem", "certs/alice.pem", "certs/alice.key"
    )


def test_connection_from_the_environment_then_flags() -> None:
    """The environment overrides defaults; flags override the environment."""
    environ = {
        "JOBWORKER_SERVER": "jobs.example:9443",
        "JOBWORKER_CA": "/etc/ca.pem",
        "JOBWORKER_USER": "bob",
    }
    assert connection([], environ) == Connection(
        "https://jobs.example:9443", "/etc/ca.pem", "certs/bob.pem", "certs/bob.key"
    )
    environ |= {"JOBWORKER_CERT": "/c.pem", "JOBWORKER_KEY": "/c.key"}
    assert connection(["--server", "https://h:1/", "--cert", "me.pem"], environ) == (
        Connection("https://h:1", "/etc/ca.pem", "me.pem", "/c.key")
    )


def test_plain_http_server_is_refused() -> None:
    """The API is HTTPS only: an http:// server is a usage error (exit 2)."""
    run = cli(["--server", "http://h:1", "list"])
    assert run.code == Exit.USAGE
    assert run.err == [
        "jobworker-client: --server http://h:1: the server speaks HTTPS only"
    ]


# What commands print


def test_list_is_a_table() -> None:
    """list prints aligned columns: id, owner, status, exit, started, command."""
    client = FakeClient()
    client.records = {
        "a" * 32: job(id="a" * 32, status="exited", exit_code=0),
        "b" * 32: job(id="b" * 32, owner="charlie", status="stopped", signal=9),
        "c" * 32: job(id="c" * 32, command="sleep", args=["100"], started_at=None),
    }
    run = cli(["list", "--status", "running,exited", "--all"], client)
    assert run.code == Exit.OK
    assert client.calls == [("list", "running,exited", None)]
    assert run.out.decode().splitlines() == [
        "ID                                OWNER    STATUS   EXIT     STARTED (UTC)        COMMAND",  # noqa: E501
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa  alice    exited   0        2026-11-22 10:00:01  /bin/echo 'hi there'",  # noqa: E501
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb  charlie  stopped  SIGKILL  2026-11-22 10:00:01  /bin/echo 'hi there'",  # noqa: E501
        "cccccccccccccccccccccccccccccccc  alice    running  -        2026-11-22 10:00:00  sleep 100",  # noqa: E501
    ]


def test_empty_list_says_so(as_alice: dict[str, str]) -> None:
    """No jobs is a sentence, not an empty table."""
    client = FakeClient()
    client.records = {}
    assert cli(["list"], client, as_alice).out == b"no jobs\n"


def test_list_json_is_one_document(as_alice: dict[str, str]) -> None:
    """list --json prints {"jobs": [...]} with our records as received."""
    client = FakeClient()
    client.records["x"] = job(id="x", owner="charlie")
    run = cli(["list", "--json"], client, as_alice)
    assert json_lines(run.out) == [{"jobs": [record()]}]


def test_list_shows_only_our_own_jobs_by_default(as_alice: dict[str, str]) -> None:
    """list asks for the jobs of our certificate's CN, and shows only those."""
    client = three_owners()
    run = cli(["list", "--status", "running"], client, as_alice)
    assert run.code == Exit.OK
    assert client.calls == [("list", "running", "alice")]
    assert [row.split()[1] for row in run.out.decode().splitlines()] == [
        "OWNER",
        "alice",
    ]


def test_list_all_shows_every_job_we_may_read() -> None:
    """list --all asks for no owner, so others' jobs are shown too."""
    client = three_owners()
    run = cli(["list", "--all", "--json"], client)
    assert run.code == Exit.OK
    assert client.calls == [("list", None, None)]
    [document] = json_lines(run.out)
    assert [j["owner"] for j in document["jobs"]] == ["alice", "bob", "charlie"]


def test_list_owner_shows_that_owners_jobs() -> None:
    """list --owner NAME asks for NAME's jobs, whoever we are."""
    client = three_owners()
    run = cli(["list", "--owner", "bob"], client)
    assert run.code == Exit.OK
    assert client.calls == [("list", None, "bob")]
    assert [row.split()[1] for row in run.out.decode().splitlines()] == [
        "OWNER",
        "bob",
    ]


def test_list_owner_with_all_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """--owner and --all together are a usage error: one line, exit 2."""
    with pytest.raises(SystemExit) as caught:
        main(["list", "--owner", "bob", "--all"])
    assert caught.value.code == Exit.USAGE
    assert capsys.readouterr().err.splitlines() == [
        "jobworker-client: list: argument --all: not allowed with argument "
        "--owner (see jobworker-client --help)"
    ]


def test_list_with_no_cn_in_our_certificate_is_exit_2(tmp_path: Path) -> None:
    """Without a CN we cannot tell whose jobs are ours: exit 2, one line."""
    cert = certificate_without_cn(tmp_path / "anonymous.pem")
    client = three_owners()
    run = cli(["list", "--cert", str(cert)], client)
    assert (run.code, run.out, client.calls) == (Exit.USAGE, b"", [])
    assert run.err == [
        f"jobworker-client: client certificate {cert} has no single subject CN: "
        "give list --owner NAME or --all"
    ]


def test_status_describes_each_job() -> None:
    """status prints labelled lines per job, a blank line between jobs."""
    client = FakeClient()
    client.records["x"] = job(
        id="x",
        status="exited",
        signal=9,
        oom_killed=True,
        error="output limit reached",
        usage={
            "cpu_seconds": 1.5,
            "memory_peak": 3 << 20,
            "io_read_bytes": 0,
            "io_write_bytes": 2048,
        },
    )
    run = cli(["status", ID, "x"], client)
    assert run.code == Exit.OK
    text = run.out.decode()
    first, second = text.split("\n\n")
    assert first.splitlines() == [
        f"id:       {ID}",
        "owner:    alice",
        "command:  /bin/echo 'hi there'",
        "status:   running",
        "created:  2026-11-22 10:00:00",
        "started:  2026-11-22 10:00:01",
        "ended:    -",
        "run as:   nobody",
        "output:   stdout 3 B, stderr 0 B",
    ]
    assert "status:   exited (SIGKILL, out of memory)" in second
    assert (
        "usage:    cpu 1.50 s, memory peak 3.0 MiB, read 0 B, written 2.0 KiB" in second
    )
    assert "error:    output limit reached" in second


def test_status_shows_the_ids_a_job_runs_as() -> None:
    """A named user with its ids; a uid of the job's own by its ids alone;
    a record from before ids (or an old server's) as it was."""
    client = FakeClient()
    client.records["a"] = job(id="a", uid=65534, gid=65534)
    client.records["b"] = job(id="b", run_as=None, uid=1879048193, gid=1879048193)
    client.records["c"] = job(id="c", run_as=None)
    run = cli(["status", "a", "b", "c"], client)
    assert run.code == Exit.OK
    lines = [line for line in run.out.decode().splitlines() if "run as" in line]
    assert lines == [
        "run as:   nobody (uid 65534, gid 65534)",
        "run as:   uid 1879048193, gid 1879048193",
        "run as:   -",
    ]


def test_status_json_is_one_record_per_line() -> None:
    """status --json prints each record on its own line."""
    client = FakeClient()
    client.records["x"] = job(id="x")
    run = cli(["status", "--json", ID, "x"], client)
    assert [r["id"] for r in json_lines(run.out)] == [ID, "x"]


def test_start_json_prints_records() -> None:
    """start --json prints each started job's record."""
    run = cli(["start", "--json", "--job", "true", "--job", "false"])
    assert [r["id"] for r in json_lines(run.out)] == ["job1", "job2"]


def test_stop_and_purge_say_what_happened() -> None:
    """stop prints "ID stopping" with the grace passed on; purge "ID purged"."""
    run = cli(["stop", "--grace", "2", ID])
    assert (run.code, run.out) == (Exit.OK, f"{ID} stopping\n".encode())
    assert run.client.calls == [("stop", ID, 2.0)]
    run = cli(["purge", ID])
    assert (run.code, run.out) == (Exit.OK, f"{ID} purged\n".encode())


def test_output_writes_raw_bytes_until_the_end() -> None:
    """output writes every byte as is, reading as many times as it takes."""
    client = FakeClient()
    client.chunks = [bytes(range(128)), bytes(range(128, 256))]
    run = cli(["output", "--stream", "stdout", ID], client)
    assert (run.code, run.out) == (Exit.OK, bytes(range(256)))
    assert [c for c in client.calls if c[0] == "read"] == [
        ("read", ID, "stdout", 0),
        ("read", ID, "stdout", 128),
    ]


def test_output_follow_writes_raw_bytes() -> None:
    """output -f hands the chunks through unchanged, from --offset."""
    run = cli(["output", "-f", "--offset", "5", ID])
    assert (run.code, run.out) == (Exit.OK, b"hi\n")
    assert run.client.calls == [("follow", ID, "combined", 5)]


def test_output_json_is_chunk_events() -> None:
    """output --json prints base64 chunks with offsets, then where to resume."""
    client = FakeClient()
    client.chunks = [b"\x00\xff", b"ab"]
    run = cli(["output", "-f", "--json", ID], client)
    assert json_lines(run.out) == [
        {"event": "output", "offset": 0, "data": "AP8="},
        {"event": "output", "offset": 2, "data": "YWI="},
        {"event": "end", "next_offset": 4, "complete": True},
    ]


# Errors and exit codes


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UsageError("x"), Exit.USAGE),
        (TLSConfigError("cannot read CA certificate certs/ca.pem"), Exit.USAGE),
        (BadRequest(400, "invalid_request", "cwd: must be absolute"), Exit.USAGE),
        (BadRequest(416, "offset_out_of_range", "past the end"), Exit.USAGE),
        (ConnectionFailed("connection refused"), Exit.CONNECTION),
        (ServerNotTrusted("certificate verify failed"), Exit.SERVER_NOT_TRUSTED),
        (CertificateRejected("alert unknown ca"), Exit.CERTIFICATE_REJECTED),
        (AccessDenied(403, "forbidden", "bob may not start jobs"), Exit.FORBIDDEN),
        (NotFound(404, "not_found", "no job x"), Exit.NOT_FOUND),
        (Conflict(409, "conflict", "job x has already ended"), Exit.CONFLICT),
        (ServerBusy(429, "too_many_jobs", "busy"), Exit.SERVER_ERROR),
        (Unavailable(503, "shutting_down", "bye"), Exit.SERVER_ERROR),
        (ErrorResponse(500, "internal_error", "oops"), Exit.SERVER_ERROR),
        (CancelledError(), Exit.INTERRUPTED),
        (BrokenPipeError(), Exit.BROKEN_PIPE),
        (ZeroDivisionError("boom"), Exit.UNEXPECTED),
    ],
)
def test_each_error_has_its_exit_code(error: Exception, code: Exit) -> None:
    """explain() gives each error its documented exit code."""
    assert explain(error, "https://h:1")[0] == code


def test_exit_codes_are_documented() -> None:
    """Every exit code appears in the help text with a description."""
    import jobworker.cli

    doc = jobworker.cli.__doc__ or ""
    section = doc[doc.index("Exit codes:") :]
    for code in Exit:
        assert f"\n  {code.value} " in section, code


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (
            NotFound(404, "not_found", f"no job {ID}"),
            Exit.NOT_FOUND,
            f"no job {ID}",
        ),
        (
            AccessDenied(403, "forbidden", "bob may not read"),
            Exit.FORBIDDEN,
            "permission denied: bob may not read",
        ),
        (
            ConnectionFailed("connection refused: is the server running?"),
            Exit.CONNECTION,
            "cannot reach https://127.0.0.1:8443: connection refused: "
            "is the server running?",
        ),
        (
            ServerNotTrusted("the server's certificate is not trusted: x"),
            Exit.SERVER_NOT_TRUSTED,
            "https://127.0.0.1:8443: the server's certificate is not trusted: x "
            "(is --ca the CA that signed the server's certificate?)",
        ),
        (
            ErrorResponse(500, "internal_error", "oops"),
            Exit.SERVER_ERROR,
            "server error 500 (internal_error): oops",
        ),
        (
            ZeroDivisionError("boom"),
            Exit.UNEXPECTED,
            "unexpected error: ZeroDivisionError: boom",
        ),
    ],
)
def test_errors_are_one_line(error: Exception, code: Exit, line: str) -> None:
    """An error is one line on stderr, nothing on stdout, and its exit code."""
    client = FakeClient()
    client.errors[ID] = error
    run = cli(["status", ID], client)
    assert (run.code, run.out, run.err) == (code, b"", [f"jobworker-client: {line}"])
    assert client.closed


def test_unusable_certificate_files_are_exit_2() -> None:
    """A certificate file that cannot be used is a usage error with a hint."""
    run = cli(
        ["status", ID],
        connect_error=TLSConfigError("cannot read CA certificate certs/ca.pem"),
    )
    assert run.code == Exit.USAGE
    [line] = run.err
    assert line.startswith("jobworker-client: cannot read CA certificate certs/ca.pem")
    assert "JOBWORKER_CA" in line


def test_one_failure_does_not_stop_the_others() -> None:
    """stop a b c where b is unknown: a and c are stopped, exit code 7."""
    client = FakeClient()
    client.records |= {"a": job(id="a"), "c": job(id="c")}
    run = cli(["stop", "a", "b", "c"], client)
    assert run.code == Exit.NOT_FOUND
    assert [c[1] for c in client.calls] == ["a", "b", "c"]
    assert run.out == b"a stopping\nc stopping\n"
    assert run.err == ["jobworker-client: no job b"]


# run and wait: the job's ending as the exit code


@pytest.mark.parametrize(
    ("ending", "code", "note"),
    [
        ({"status": "exited", "exit_code": 0}, 0, None),
        ({"status": "exited", "exit_code": 3}, 3, None),
        ({"status": "exited", "signal": 9}, 137, "was killed by SIGKILL"),
        (
            {"status": "exited", "signal": 9, "oom_killed": True},
            137,
            "was killed by SIGKILL: out of memory (the OOM killer ended it)",
        ),
        ({"status": "stopped", "signal": 15}, 143, "was stopped (SIGTERM)"),
        ({"status": "stopped", "exit_code": 0}, 0, "was stopped"),
        ({"status": "timed_out", "signal": 15}, 124, "timed out (SIGTERM)"),
        ({"status": "lost"}, 125, "was lost: the server stopped while it ran"),
        (
            {"status": "failed_to_start", "error": "exec nope: No such file"},
            127,
            "failed to start: exec nope: No such file",
        ),
    ],
)
def test_run_and_wait_exit_as_the_job_ended(
    ending: dict[str, Any], code: int, note: str | None
) -> None:
    """run and wait exit with the job's code, 128+N for signal N, and so on."""
    for argv in (["run", "--", "cmd"], ["wait", "job1"]):
        client = FakeClient()
        client.records["job1"] = job(id="job1")
        client.final["job1"] = job(id="job1", **ending)
        run = cli(argv, client)
        assert run.code == code, argv
        expected = [] if note is None else [f"jobworker-client: job job1 {note}"]
        assert run.err == expected, argv


def test_run_follows_the_output_then_waits() -> None:
    """run starts the job, writes its output raw, then asks how it ended."""
    client = FakeClient()
    client.chunks = [b"\x00one\n", b"two\xff"]
    run = cli(["run", "--cpu", "1", "--", "/bin/sh", "-c", "exit 3"], client)
    assert run.code == 0
    assert run.out == b"\x00one\ntwo\xff"
    assert client.names() == ["start", "follow", "wait"]


def test_run_does_not_follow_a_job_that_failed_to_start() -> None:
    """A job that failed to start has no output to follow: exit 127."""
    client = FakeClient()

    async def failed(spec: Any) -> JobRecord:
        return job(id="job1", status="failed_to_start", error="exec x: ENOENT")

    client.start = failed  # type: ignore[method-assign]
    ended = job(id="job1", status="failed_to_start", error="ENOENT")
    client.records["job1"] = client.final["job1"] = ended
    run = cli(["run", "--", "x"], client)
    assert run.code == Exit.FAILED_TO_START
    assert client.names() == ["wait"]


def test_run_json_is_events() -> None:
    """run --json prints started, output chunks, and ended as JSON lines."""
    run = cli(["run", "--json", "--", "echo", "hi"])
    events = json_lines(run.out)
    assert [e["event"] for e in events] == ["started", "output", "ended"]
    assert events[1] == {"event": "output", "offset": 0, "data": "aGkK"}
    assert events[2]["job"]["status"] == "exited"


def test_ctrl_c_during_run_stops_the_job_and_exits_130() -> None:
    """The first Ctrl-C stops the job, output still flows, then exit 130."""
    client = FakeClient()
    client.follow_gate = Deferred()
    run = cli(["run", "--", "sleep", "100"], client)
    run.interrupt()
    assert ("stop", "job1", None) in client.calls
    assert run.err == [
        "jobworker-client: stopping job job1 (Ctrl-C again to leave it and exit)"
    ]
    assert not run.done.called, "run keeps following until the job ends"
    client.follow_gate.callback(None)
    assert run.code == Exit.INTERRUPTED
    assert client.names() == ["start", "follow", "stop", "wait"]


def test_second_ctrl_c_leaves_at_once() -> None:
    """A second Ctrl-C stops waiting: exit 130 without the job's end."""
    client = FakeClient()
    client.follow_gate = Deferred()
    run = cli(["run", "--", "sleep", "100"], client)
    run.interrupt()
    run.interrupt()
    assert run.code == Exit.INTERRUPTED
    assert "wait" not in client.names()
    assert client.closed


def test_ctrl_c_before_the_job_has_an_id_stops_it_once_started() -> None:
    """Ctrl-C while the start request is in flight stops the job it made."""
    client = FakeClient()
    client.start_gate = Deferred()
    run = cli(["run", "--", "sleep", "100"], client)
    run.interrupt()
    assert client.names() == ["start"]
    client.start_gate.callback(None)
    assert client.names()[:2] == ["start", "stop"]
    assert run.code == Exit.INTERRUPTED


def test_ctrl_c_elsewhere_just_leaves() -> None:
    """Ctrl-C during wait cancels the command (the job goes on): exit 130."""
    client = FakeClient()
    gate: Deferred[None] = Deferred()

    async def blocked(job_id: str) -> JobRecord:
        await gate
        raise AssertionError("not reached")

    client.wait = blocked  # type: ignore[method-assign]
    run = cli(["wait", ID], client)
    run.interrupt()
    assert (run.code, run.err) == (Exit.INTERRUPTED, [])
    assert "stop" not in client.names()


def test_job_exit_code_of_a_running_job_is_unexpected() -> None:
    """A record that has not ended has no exit code to give: 1."""
    assert job_exit_code(job()) == Exit.UNEXPECTED


# main()


def test_main_usage_error_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """main() reports a bad command line in one line and exits 2."""
    with pytest.raises(SystemExit) as caught:
        main(["run", "--cpu", "x", "ls"])
    assert caught.value.code == Exit.USAGE
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "jobworker-client: run: argument --cpu: 'x' is not a number "
        "(see jobworker-client --help)"
    ]


def test_main_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """--help prints the commands and the exit codes, and exits 0."""
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "Exit codes:" in out
    for name in ("start", "run", "stop", "status", "list", "output", "wait"):
        assert f"    {name} " in out


def test_failure_to_stop_after_ctrl_c_is_reported() -> None:
    """If stopping after Ctrl-C fails, one line says so; a 409 is silent."""
    for error, lines in [
        (Conflict(409, "conflict", "ended"), []),
        (
            AccessDenied(403, "forbidden", "no"),
            ["jobworker-client: could not stop the job: permission denied: no"],
        ),
    ]:
        client = FakeClient()
        client.follow_gate = Deferred()
        client.stop_error = error
        run = cli(["run", "--", "x"], client)
        run.interrupt()
        assert run.err[1:] == lines
        client.follow_gate.callback(None)
        assert run.code == Exit.INTERRUPTED
