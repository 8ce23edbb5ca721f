"""
The API fuzzed against a real server: ``twistd jobworker`` in a subprocess,
over mutual TLS on 127.0.0.1, with a real job manager in a temporary data
directory.

- From the OpenAPI document (schemathesis): every operation with data that
  fits the document and data that does not; every response must match the
  document, and none may be a 5xx.
- At the raw HTTP level (hypothesis): odd methods, broken headers, bad
  Content-Length and chunked framing, invalid UTF-8 in paths, query strings
  and JSON, huge, negative and non-finite numbers. Every answer must be a
  status below 500, and none may hang.

Afterwards the server must be healthy, its log free of tracebacks, and every
job it started gone.

Runs are derandomized (the same examples every time) and short by default.
For a release, run longer and with fresh examples::

    JOBWORKER_FUZZ_EXAMPLES=5000 JOBWORKER_FUZZ_SEED=random \
        scripts/test tests/integration/test_fuzz.py

``JOBWORKER_FUZZ_EXAMPLES`` is the number of examples per test (per API
operation for schemathesis); ``JOBWORKER_FUZZ_SEED`` is a number, or
``random`` for new examples each run (a failure prints how to reproduce it).

Jobs started by fuzzing are harmless: the PATH the server gives a job that
sets none is an empty directory, so a bare command name resolves only on a
PATH the fuzzer itself sent (rare); they run isolated as
``nobody`` where the tests run as root; at most a few run at once; the data
directory is temporary; and every job is stopped at the end.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote_from_bytes

import psutil
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.pki_fixtures import DevPKI

pytest_plugins = ["tests.pki_fixtures"]

ROOT = Path(__file__).parents[2]
POLICY = ROOT / "examples" / "policy.toml"
TWISTD = Path(sys.executable).parent / "twistd"
DOCUMENT = ROOT / "jobworker" / "openapi.json"
# charlie is an admin: every action on every job, so fuzzing reaches past
# authorization into every handler.
USER = "charlie"
EXAMPLES = int(os.environ.get("JOBWORKER_FUZZ_EXAMPLES", "0")) or None
SEED = os.environ.get("JOBWORKER_FUZZ_SEED")
# A request that takes longer than this is a hang.
REQUEST_TIMEOUT = 20.0

T = TypeVar("T", bound=Callable[..., Any])
V = TypeVar("V")


def fuzz_settings(default_examples: int) -> Callable[[T], T]:
    """Derandomized and short by default; longer and seeded from the
    environment (see the module's docstring)."""

    def decorate(test: T) -> T:
        configured = settings(
            max_examples=EXAMPLES or default_examples,
            derandomize=SEED is None,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )(test)
        if SEED is not None and SEED != "random":
            configured = seed(int(SEED))(configured)
        return configured

    return decorate


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
         "--job-path", str(empty),
         "--header-timeout", "1", "--body-timeout", "1", *isolation],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
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


# From the OpenAPI document.

schema = schemathesis.openapi.from_path(DOCUMENT)
checks = schema.config.checks
# Beyond schemathesis's defaults: a body over --max-body is 413 whether or
# not it fits the document, and an offset past the end of an ended job's
# output is 416 however well-formed.
checks.negative_data_rejection.expected_statuses = [
    *checks.negative_data_rejection.expected_statuses,
    "413",
]
checks.positive_data_acceptance.expected_statuses = [
    *checks.positive_data_acceptance.expected_statuses,
    "413",
    "416",
]


@schema.parametrize()
@fuzz_settings(default_examples=25)
def test_openapi_operations(
    case: schemathesis.Case[Any], fuzz_server: FuzzServer
) -> None:
    """Every operation, with data that fits the document and data that does
    not: responses match the document, none is a 5xx, none hangs."""
    aim_at_real_jobs(case, fuzz_server.job_ids)
    with fuzz_server.session() as session:
        # schemathesis passes its own verify and cert: give ours again.
        case.call_and_validate(
            base_url=fuzz_server.url,
            session=session,
            verify=session.verify,
            cert=session.cert,
            timeout=REQUEST_TIMEOUT,
        )


def aim_at_real_jobs(case: schemathesis.Case[Any], job_ids: list[str]) -> None:
    """Most generated job ids name no job: swap three in four for a real one
    (chosen by the generated id, so the run stays reproducible)."""
    generated = (case.path_parameters or {}).get("id")
    if generated is not None:
        choice = zlib.crc32(str(generated).encode()) % (len(job_ids) + 1)
        if choice < len(job_ids):
            case.path_parameters["id"] = job_ids[choice]


# At the raw HTTP level.

ROUTES = [
    b"/", b"/v1", b"/v1/", b"/v1/jobs", b"/v1/jobs/", b"/v1/jobs/{id}",
    b"/v1/jobs/{id}/", b"/v1/jobs/{id}/stop", b"/v1/jobs/{id}/output",
    b"/v1/healthz", b"/v1/openapi.json", b"//v1//jobs", b"/v1/jobs/../healthz",
    b"*", b"https://127.0.0.1/v1/healthz", b"/v1/jobs/{id}/output/x",
]  # fmt: skip
METHODS = [
    b"GET", b"POST", b"DELETE", b"PUT", b"PATCH", b"HEAD", b"OPTIONS", b"TRACE",
    b"CONNECT", b"get", b"PRI", b"G\x00T", b"", b"X" * 300,
]  # fmt: skip
VERSIONS = [b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/1.1x"]
ODD_HEADERS = [
    b"NoColon", b" folded: continuation", b"X: \x00", b"X:", b": no-name",
    b"Expect: 100-continue", b"Connection: keep-alive",
    b"Connection: close, upgrade", b"Upgrade: websocket", b"Transfer-Encoding: gzip",
    b"Transfer-Encoding: chunked, identity", b"Content-Type: text/plain",
    b"Content-Type: application/json; x", b"Content-Length: 5", b"Host:",
    b"X" * 300 + b": y",
]  # fmt: skip
# How the body is framed (see RawRequest.encode). "long length" costs a body
# timeout, so it comes up rarely.
FRAMINGS = (
    ["length"] * 8 + ["none"] * 3 + ["chunked"] * 2
    + ["short length", "bad length", "huge length", "two lengths", "bad chunks",
       "long length"]
)  # fmt: skip
# Numbers at and past the edges of the types that hold them.
EXTREMES = [
    2**31, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 10**308, 10**309, -(10**400),
    1e308, 1e-320, -0.0, float("nan"), float("inf"), float("-inf"),
]  # fmt: skip
# Nesting depths around and far past a recursive parser's limit (about 1000).
DEPTHS = [2, 999, 1001, 5000, 12_000]
QUERY_NAMES = [b"stream", b"offset", b"wait", b"limit", b"follow", b"status", b"owner"]
ODD_VALUES = [
    b"", b"true", b"false", b"yes", b"-0", b"1e309", b"1e-400", b"0x10", b"1_000",
    b" 1", b"1 ", b"+1", b"-1", b"NaN", b"inf", b"%ff", b"%c3%28", b"%00", b"%",
    b"%zz", b"\xff\xfe", b"combined", b"stdout", b"stderr", b"running,exited",
    b"running,,", b"charlie", b"\xc3\xa9",
]  # fmt: skip


def numbers() -> st.SearchStrategy[bytes]:
    """Numbers as a client might write them, and as no client should."""
    return st.one_of(
        st.integers(min_value=-(2**80), max_value=2**80).map(lambda n: b"%d" % n),
        st.floats().map(lambda f: repr(f).encode()),
        st.sampled_from([b"1e999", b"-1E400", b"1" * 5000, b"0.5", b"300", b"301"]),
    )


def query_strings() -> st.SearchStrategy[bytes]:
    pair = st.tuples(
        st.one_of(st.sampled_from(QUERY_NAMES), st.binary(max_size=8)),
        query_value_noise(),
    )
    return st.lists(pair, min_size=1, max_size=5).map(
        lambda pairs: b"&".join(name + b"=" + value for name, value in pairs)
    )


def odd(
    rarely: st.SearchStrategy[V], usually: st.SearchStrategy[V]
) -> st.SearchStrategy[V]:
    """``usually``, and one time in four ``rarely``."""
    return st.integers(0, 3).flatmap(lambda n: rarely if n == 0 else usually)


def odd_half(
    extreme: st.SearchStrategy[Any], *others: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """``extreme`` half the time, else one of ``others``."""
    return st.booleans().flatmap(lambda e: extreme if e else st.one_of(*others))


def json_numbers() -> st.SearchStrategy[Any]:
    """Numbers for numeric fields: plausible, negative, huge, non-finite."""
    return odd_half(
        st.sampled_from(EXTREMES),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(),  # NaN and Infinity too, which Python's json writes
        st.floats(min_value=0.001, max_value=10),
        st.sampled_from([0, 1, 1.0, 3.0, "256M", "1.5G", "0.1K", "-1M", "1e3M"]),
    )


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        json_numbers(),
        st.text(max_size=20),
        st.sampled_from(["/bin/true", "host", "none", "\x00", "/tmp", "A=B"]),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.text(max_size=8), inner, max_size=4),
        ),
        max_leaves=12,
    )


def job_requests() -> st.SearchStrategy[dict[str, Any]]:
    """Job requests with a command, and any other field, each maybe wrong."""
    numeric = odd(json_values(), json_numbers())
    limits = st.fixed_dictionaries(
        {},
        optional={
            "cpu": numeric,
            "memory": numeric,
            "pids": numeric,
            "io": odd(
                json_values(),
                st.dictionaries(
                    st.sampled_from(
                        ["read_bps", "write_bps", "read_iops", "write_iops"]
                    ),
                    numeric,
                ),
            ),
        },
    )
    return st.fixed_dictionaries(
        {"command": odd(json_values(), st.text(min_size=1, max_size=20))},
        optional={
            "args": odd(json_values(), st.lists(st.text(max_size=10), max_size=3)),
            "env": odd(json_values(), st.dictionaries(st.text(max_size=8), st.text())),
            "cwd": odd(json_values(), st.text(max_size=10).map(lambda t: "/" + t)),
            "timeout": numeric,
            "limits": odd(json_values(), limits),
            "isolation": odd(
                json_values(),
                st.fixed_dictionaries({"network": st.sampled_from(["none", "host"])}),
            ),
            "colour": json_values(),
        },
    )


def stop_requests() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={"grace": json_numbers()})


def bodies() -> st.SearchStrategy[bytes]:
    """Bodies a handler should refuse: malformed JSON, invalid UTF-8, nesting
    deep enough to exhaust a recursive parser, and bytes."""
    as_json = st.one_of(job_requests(), json_values()).map(
        lambda value: json.dumps(value).encode()
    )
    return st.one_of(
        as_json,
        # Invalid UTF-8 dropped into otherwise good JSON.
        st.tuples(
            as_json, st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])
        ).map(lambda t: t[0][:-1] + t[1] + t[0][-1:]),
        st.sampled_from(DEPTHS).map(lambda n: b"[" * n),
        st.sampled_from(DEPTHS).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        as_json.map(lambda b: b[: len(b) // 2]),
        st.binary(max_size=64),
        st.just(b""),
    )


def header_lines() -> st.SearchStrategy[list[bytes]]:
    line = st.one_of(
        st.sampled_from(ODD_HEADERS),
        st.tuples(st.binary(min_size=1, max_size=12), st.binary(max_size=24)).map(
            lambda t: t[0] + b": " + t[1]
        ),
    )
    return st.lists(line, max_size=4)


@dataclass(frozen=True)
class RawRequest:
    method: bytes
    target: bytes
    version: bytes
    headers: list[bytes]
    framing: str
    body: bytes

    def encode(self) -> bytes:
        head = [self.method + b" " + self.target + b" " + self.version]
        head += self.headers
        body = self.body
        if self.framing == "length":
            head.append(b"Content-Length: %d" % len(body))
        elif self.framing == "short length":  # the rest reads as a next request
            head.append(b"Content-Length: %d" % (len(body) // 2))
        elif self.framing == "long length":  # waits for bytes that never come
            head.append(b"Content-Length: %d" % (len(body) + 10))
        elif self.framing == "bad length":
            head.append(b"Content-Length: -1")
        elif self.framing == "huge length":
            head.append(b"Content-Length: 99999999999999999999999999")
        elif self.framing == "two lengths":
            head += [b"Content-Length: %d" % len(body), b"Content-Length: 0"]
        elif self.framing in ("chunked", "bad chunks"):
            head.append(b"Transfer-Encoding: chunked")
            size = b"%x" % len(body) if self.framing == "chunked" else b"zz"
            body = (size + b"\r\n" + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
        return b"\r\n".join(head) + b"\r\n\r\n" + body


# The routes and the methods each serves, with the query parameters it
# reads: most requests are well-formed, so they get past the HTTP parser into
# the handlers, and differ from a good request in one or two ways.
SERVED = {
    b"/v1/jobs": ([b"GET", b"POST"], [b"status", b"owner"]),
    b"/v1/jobs/{id}": ([b"GET", b"DELETE"], []),
    b"/v1/jobs/{id}/stop": ([b"POST"], []),
    b"/v1/jobs/{id}/output": (
        [b"GET"], [b"stream", b"offset", b"wait", b"limit", b"follow"]
    ),
    b"/v1/healthz": ([b"GET"], []),
    b"/v1/openapi.json": ([b"GET"], []),
}  # fmt: skip


def query_values(name: bytes) -> st.SearchStrategy[bytes]:
    good: dict[bytes, st.SearchStrategy[bytes]] = {
        b"stream": st.sampled_from([b"stdout", b"stderr", b"combined"]),
        b"offset": st.integers(0, 20).map(lambda n: b"%d" % n),
        b"wait": st.sampled_from([b"0", b"0.01", b"1e-3"]),
        b"limit": st.integers(1, 1 << 24).map(lambda n: b"%d" % n),
        b"follow": st.sampled_from([b"true", b"false"]),
        b"status": st.sampled_from([b"running", b"exited,failed_to_start", b"lost"]),
        b"owner": st.sampled_from([b"alice", b"charlie"]),
    }
    return odd(query_value_noise(), good.get(name, st.just(b"")))


def query_value_noise() -> st.SearchStrategy[bytes]:
    return st.one_of(
        numbers(),
        st.sampled_from(ODD_VALUES),
        st.binary(max_size=16).map(lambda b: quote_from_bytes(b).encode()),
        st.binary(max_size=8),
    )


def job_targets(job_ids: list[str]) -> st.SearchStrategy[bytes]:
    """A job's id as a request names it: mostly one that exists."""
    return odd(
        st.one_of(
            st.binary(max_size=40).map(lambda b: quote_from_bytes(b).encode()),
            st.binary(min_size=1, max_size=8),
        ),
        st.sampled_from(job_ids).map(str.encode),
    )


@st.composite
def malformed_requests(draw: st.DrawFn, job_ids: list[str]) -> RawRequest:
    """Requests broken at the HTTP level: method, target, version, headers
    or framing (one or two of them), on any route."""
    oddities = draw(
        st.lists(
            st.sampled_from(["route", "method", "version", "headers", "framing"]),
            min_size=1,
            max_size=2,
            unique=True,
        )
    )

    def pick(
        part: str, rarely: st.SearchStrategy[V], usually: st.SearchStrategy[V]
    ) -> V:
        return draw(rarely if part in oddities else usually)

    route = pick("route", st.sampled_from(ROUTES), st.sampled_from(list(SERVED)))
    methods, _ = SERVED.get(route, ([b"GET"], []))
    method = pick(
        "method",
        st.one_of(st.sampled_from(METHODS), st.binary(min_size=1, max_size=8)),
        st.sampled_from(methods),
    )
    target = route.replace(b"{id}", draw(job_targets(job_ids)))
    body = draw(st.one_of(st.just(b""), bodies()))
    return RawRequest(
        method=method,
        target=target,
        version=pick("version", st.sampled_from(VERSIONS), st.just(b"HTTP/1.1")),
        headers=pick("headers", header_lines(), st.just([b"Host: x"])),
        framing=pick("framing", st.sampled_from(FRAMINGS), st.just("length")),
        body=body,
    )


@st.composite
def json_requests(draw: st.DrawFn, job_ids: list[str]) -> RawRequest:
    """Well-framed POSTs that start or stop a job, with bodies whose fields
    are wrong, huge, negative or non-finite, or that are no JSON at all."""
    start = draw(st.booleans())
    if start:
        target = b"/v1/jobs"
        good = job_requests()
    else:
        target = b"/v1/jobs/" + draw(job_targets(job_ids)) + b"/stop"
        good = stop_requests()
    body = draw(odd(bodies(), good.map(lambda d: json.dumps(d).encode())))
    return RawRequest(
        method=b"POST",
        target=target,
        version=b"HTTP/1.1",
        headers=[b"Host: x", b"Content-Type: application/json"],
        framing=draw(st.sampled_from(["length", "length", "chunked"])),
        body=body,
    )


@st.composite
def query_requests(draw: st.DrawFn, job_ids: list[str]) -> RawRequest:
    """Well-formed GETs with odd query strings: invalid UTF-8 and percent
    escapes, repeated and unknown names, huge, negative and odd numbers."""
    route = draw(
        st.sampled_from([b"/v1/jobs/{id}/output"] * 3 + [b"/v1/jobs", b"/v1/jobs/{id}"])
    )
    _, names = SERVED[route]
    pairs = [
        name + b"=" + draw(query_values(name)) for name in names if draw(st.booleans())
    ]
    pairs += draw(odd(query_strings().map(lambda q: [q]), st.just([])))
    query = b"&".join(pairs)
    target = route.replace(b"{id}", draw(job_targets(job_ids)))
    return RawRequest(
        method=b"GET",
        target=target + (b"?" + query if query else b""),
        version=b"HTTP/1.1",
        headers=[b"Host: x"],
        framing="none",
        body=b"",
    )


def read_response(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    """The first final response's status and head (skipping 100 Continue);
    status 0 if the server closed without one."""
    reader = sock.makefile("rb")
    while True:
        status_line = reader.readline()
        if not status_line:
            return 0, b""
        head = [status_line]
        while (line := reader.readline()) not in (b"\r\n", b""):
            head.append(line)
        status = int(status_line.split()[1])
        if status >= 200:
            return status, b"".join(head)


def exchange(server: FuzzServer, request: RawRequest) -> tuple[int, bytes]:
    """Send one raw request on a new connection; the answer's status and head."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with server.context().wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.settimeout(REQUEST_TIMEOUT)
        s.sendall(request.encode())
        return read_response(s)


@given(data=st.data())
@fuzz_settings(default_examples=80)
def test_raw_malformed_http(fuzz_server: FuzzServer, data: st.DataObject) -> None:
    """Odd methods, targets and versions, broken headers, bad Content-Length
    and chunking: every request is answered, below 500, in time."""
    status, head = exchange(
        fuzz_server, data.draw(malformed_requests(fuzz_server.job_ids))
    )
    assert 0 < status < 500, head


@given(data=st.data())
@fuzz_settings(default_examples=120)
def test_raw_json_bodies(fuzz_server: FuzzServer, data: st.DataObject) -> None:
    """Job and stop requests with wrong, huge, negative and non-finite
    numbers, invalid UTF-8 and deep nesting: answered, below 500, in time."""
    status, head = exchange(fuzz_server, data.draw(json_requests(fuzz_server.job_ids)))
    assert 0 < status < 500, head


@given(data=st.data())
@fuzz_settings(default_examples=80)
def test_raw_query_strings(fuzz_server: FuzzServer, data: st.DataObject) -> None:
    """Query strings with invalid UTF-8, odd escapes and numbers: answered,
    below 500, in time."""
    status, head = exchange(fuzz_server, data.draw(query_requests(fuzz_server.job_ids)))
    assert 0 < status < 500, head
