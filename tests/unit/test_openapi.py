"""
The OpenAPI document and the resource tree describe the same API.

Routes and methods come from walking the tree ``Api.root()`` builds; the
statuses a handler can answer are read from its source (literal statuses, and
the helpers and library calls it makes, whose statuses ``CALLS`` lists); every
status the document lists is then produced for real, through the real site,
by a scenario, and the response is checked against the document.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import re
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NoReturn, cast

import openapi_schema_validator
import openapi_spec_validator
import pytest
from twisted.internet.task import Clock
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

import jobworker.http
from jobworker.auth.policy import (
    CeilingExceeded,
    Decision,
    Identity,
    PermissionDenied,
    Role,
)
from jobworker.http import job_routes, meta_routes, output_routes
from jobworker.http.endpoint import Endpoint, NotFoundEndpoint
from jobworker.http.errors import HTTPError, as_http_error
from jobworker.http.parsing import parse_grace
from jobworker.http.settings import ApiSettings
from jobworker.http.site import Api
from jobworker.jobs.confinement import LimitsUnavailable
from jobworker.jobs.errors import (
    JobConflict,
    JobNotFound,
    ShuttingDown,
    StorageFull,
    TooManyJobs,
)
from jobworker.jobs.output import OffsetOutOfRange
from jobworker.jobs.record import Job, Usage
from jobworker.jobs.spec import (
    InvalidSpec,
    IOLimits,
    Isolation,
    JobSpec,
    Limits,
    parse_job_spec,
    parse_size,
)
from jobworker.wire import CONNECTION_ERRORS, ErrorCode, JobStatus, Stream
from tests.fakes import FakeJobService, MemoryClient, Response

DOCUMENT_BYTES = resources.files("jobworker").joinpath("openapi.json").read_bytes()
DOCUMENT: dict[str, Any] = json.loads(DOCUMENT_BYTES)
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# 413 is documented where a route reads a body (read_json refuses one over
# the limit); these are the methods meant to send one.
BODY_METHODS = {"POST", "PUT", "PATCH"}
JOB_ID = "8f0c1e0e2b7a4c55b0b1d6a1c3e9f7aa"
OTHER_JOB_ID = "0" * 32
MAX_BODY = 1024
# The modules that hold the routes, and every module of the HTTP package.
ROUTE_MODULES = (job_routes, output_routes, meta_routes)
HTTP_MODULES = [
    importlib.import_module(f"jobworker.http.{info.name}")
    for info in pkgutil.iter_modules(jobworker.http.__path__)
]

# Every route, method and the statuses it can answer: what the tests below
# check against the document, against the handlers' code, and by producing
# each one.
EXPECTED: dict[tuple[str, str], set[int]] = {
    ("/v1/jobs", "GET"): {200, 400, 403, 405, 500},
    ("/v1/jobs", "POST"): {201, 400, 403, 405, 413, 429, 500, 503},
    ("/v1/jobs/{id}", "GET"): {200, 400, 403, 404, 405, 500},
    ("/v1/jobs/{id}", "DELETE"): {204, 400, 403, 404, 405, 409, 500},
    ("/v1/jobs/{id}/stop", "POST"): {202, 400, 403, 404, 405, 409, 413, 500},
    ("/v1/jobs/{id}/output", "GET"): {200, 400, 403, 404, 405, 416, 500},
    ("/v1/healthz", "GET"): {200, 400, 403, 405, 500},
    ("/v1/openapi.json", "GET"): {200, 400, 403, 405, 500},
}

# What each library error becomes (as_http_error), checked by
# test_http_error_statuses.
EXCEPTION_STATUS: dict[type[Exception], int] = {
    InvalidSpec: 400,
    CeilingExceeded: 403,
    PermissionDenied: 403,
    JobNotFound: 404,
    JobConflict: 409,
    OffsetOutOfRange: 416,
    TooManyJobs: 429,
    ShuttingDown: 503,
    LimitsUnavailable: 503,
    StorageFull: 503,
}

# The statuses each call a handler makes can lead to (besides the handler's
# own literal statuses). A handler that calls something on ``self``, or a
# name of its module, that is not listed here fails the test.
CALLS: dict[str, set[int]] = {
    "Query": {400},
    "read_json": {400, 413},
    "parse_grace": {400},
    "parse_job_spec": {400},
    "check_job_request": {403},
    "send_json": set(),
    "FollowStream": set(),
    "resources.files": set(),
    "self.visible_job": {403, 404},
    "self.api.policy.authorize": set(),
    "self.api.policy.can_see": set(),
    "self.api.policy.role_for": set(),
    "self.api.jobs.get": {404},
    "self.api.jobs.list": set(),
    "self.api.jobs.describe": set(),
    "self.api.jobs.start": {429, 503},
    "self.api.jobs.stop": {404, 409},
    "self.api.jobs.purge": {404, 409},
    "self.api.jobs.output_log": {404},
    "self.api.jobs.read_output": {404, 416},
    "self.api.jobs.running_count": set(),
}


# The document


def document_operations() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method.upper()): operation
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (the node itself if it has none)."""
    while "$ref" in node:
        target: Any = DOCUMENT
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def schema(name: str) -> dict[str, Any]:
    return cast(dict[str, Any], DOCUMENT["components"]["schemas"][name])


def documented_statuses() -> dict[tuple[str, str], set[int]]:
    return {
        key: {int(status) for status in operation["responses"]}
        for key, operation in document_operations().items()
    }


def query_parameters(path: str, method: str) -> dict[str, dict[str, Any]]:
    operation = document_operations()[path, method]
    shared = DOCUMENT["paths"][path].get("parameters", [])
    parameters = [resolve(p) for p in [*shared, *operation.get("parameters", [])]]
    return {p["name"]: p for p in parameters if p["in"] == "query"}


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def validate(instance: Any, against: dict[str, Any]) -> None:
    """Validate ``instance`` against a schema of the document."""
    root = {**against, "components": DOCUMENT["components"]}
    openapi_schema_validator.OAS31Validator(
        root, format_checker=openapi_schema_validator.oas31_format_checker
    ).validate(instance)


# The resource tree


class BrokenResources:
    """Stands in for importlib.resources when the document cannot be read."""

    def files(self, package: str) -> NoReturn:
        raise OSError("package data is gone")


@dataclass
class FakePolicy:
    """Lets the caller see and act on jobs, or not; jobs up to 1 GiB of memory."""

    visible: bool = True
    allowed: bool = True

    def can_see(self, identity: Identity, owner: str | None) -> bool:
        return self.visible

    def authorize(
        self, identity: Identity, action: object, owner: str | None
    ) -> Decision:
        return Decision(self.allowed, "as the test says")

    def role_for(self, identity: Identity) -> Role:
        return Role("tester", ceilings=Limits(memory=1 << 30))


def make_job(status: JobStatus = JobStatus.RUNNING) -> Job:
    ended = status.ended
    return Job(
        id=JOB_ID,
        owner="alice",
        spec=parse_job_spec({"command": "/bin/echo", "args": ["hi"]}),
        status=status,
        created_at="2026-11-22T10:00:00.123Z",
        run_as="nobody",
        started_at="2026-11-22T10:00:00.125Z",
        ended_at="2026-11-22T10:00:01.000Z" if ended else None,
        exit_code=0 if status is JobStatus.EXITED else None,
        usage=Usage(0.02, 9502720, 0, 0) if ended else None,
    )


def tree_routes(root: Resource) -> dict[str, type[Endpoint]]:
    """
    Walk the tree: every path that reaches an Endpoint, and its class.

    Each node is asked for its static children, for every name the document
    uses or a ``getChild`` in jobworker.http compares with, and for a made-up
    name; a child the made-up name also reaches is a path parameter, written
    ``{id}``.
    """
    names = {
        segment.encode()
        for path in DOCUMENT["paths"]
        for segment in path.split("/")
        if segment and not segment.startswith("{")
    } | getchild_names()
    probe = b"no-such-name-anywhere"
    request = DummyRequest([])
    found: dict[str, type[Endpoint]] = {}

    def walk(resource: Resource, path: str, depth: int) -> None:
        if isinstance(resource, Endpoint) and not isinstance(
            resource, NotFoundEndpoint
        ):
            found[path] = type(resource)
        if depth > 8:
            return
        parameter = resource.getChildWithDefault(probe, request)
        for name in sorted(set(resource.children) | names):
            child = resource.getChildWithDefault(name, request)
            if isinstance(child, NotFoundEndpoint):
                continue
            if name not in resource.children and type(child) is type(parameter):
                continue  # the path parameter took it
            walk(child, f"{path}/{name.decode()}", depth + 1)
        if not isinstance(parameter, NotFoundEndpoint):
            walk(parameter, f"{path}/{{id}}", depth + 1)

    walk(root, "", 0)
    return found


def getchild_names() -> set[bytes]:
    """Every bytes literal in a ``getChild`` of jobworker.http."""
    return {
        node.value
        for module in HTTP_MODULES
        for definition in ast.walk(ast.parse(inspect.getsource(module)))
        if isinstance(definition, ast.FunctionDef) and definition.name == "getChild"
        for node in ast.walk(definition)
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes)
    }


def make_api(
    jobs: object, policy: object, identified: bool = True, max_body: int = MAX_BODY
) -> Api:
    def identify(request: IRequest) -> Identity | None:
        return Identity("alice") if identified else None

    return Api(
        cast(Any, jobs),
        cast(Any, policy),
        ApiSettings(max_body=max_body),
        identify=identify,
    )


def sample_jobs(
    status: JobStatus = JobStatus.RUNNING, broken: bool = False
) -> FakeJobService:
    """One job, alice's, whose output is "hi\\n" and complete (so reads answer
    at once, whatever its status)."""
    jobs = FakeJobService(broken=broken)
    jobs.add("alice", status, output=b"hi\n", job_id=JOB_ID)
    jobs.outputs[JOB_ID].close()
    return jobs


def sample_api() -> Api:
    return make_api(sample_jobs(), FakePolicy())


def routes() -> dict[tuple[str, str], type[Endpoint]]:
    """(path, method) for every route and method the tree answers."""
    root = make_api(object(), FakePolicy()).root()
    return {
        (path, method): endpoint
        for path, endpoint in tree_routes(root).items()
        for method in endpoint.actions
    }


def endpoint_classes() -> set[type[Endpoint]]:
    found: set[type[Endpoint]] = set()
    pending: list[type[Endpoint]] = [Endpoint]
    while pending:
        for sub in pending.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                pending.append(sub)
    route_modules = {module.__name__ for module in ROUTE_MODULES}
    return {c for c in found if c.__module__ in route_modules}


# What the code says


def dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def int_argument(call: ast.Call, index: int) -> int:
    argument = call.args[index]
    assert isinstance(argument, ast.Constant), ast.unparse(call)
    assert isinstance(argument.value, int), ast.unparse(call)
    return argument.value


def literal_statuses(source: str) -> set[int]:
    """The literal statuses of every ``HTTPError(...)`` in ``source``."""
    return {
        int_argument(node, 0)
        for node in ast.walk(ast.parse(textwrap.dedent(source)))
        if isinstance(node, ast.Call) and dotted(node.func) == "HTTPError"
    }


def render_statuses() -> set[int]:
    """What Endpoint.render and the handler runner answer on every route."""
    return literal_statuses(inspect.getsource(Endpoint.render)) | literal_statuses(
        inspect.getsource(Endpoint._run)
    )


@dataclass
class HandlerFacts:
    """What a handler's source says about its statuses, query and body."""

    statuses: set[int] = field(default_factory=set)
    unknown_calls: set[str] = field(default_factory=set)
    query: set[str] | None = None
    reads_body: bool = False
    body_optional: bool = False


def handler_facts(endpoint: type[Endpoint], method: str) -> HandlerFacts:
    handler = getattr(endpoint, f"handle_{method}")
    module = sys.modules[endpoint.__module__]
    tree = ast.parse(textwrap.dedent(inspect.getsource(handler)))
    definition = tree.body[0]
    assert isinstance(definition, ast.AsyncFunctionDef)
    facts = HandlerFacts()
    success: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        if name is None:
            continue
        root = name.split(".")[0]
        target = None if root == "self" else getattr(module, root, None)
        if name == "HTTPError":
            facts.statuses.add(int_argument(node, 0))
        elif name.endswith(".setResponseCode"):
            success.add(int_argument(node, 0))
        elif isinstance(target, type) and issubclass(target, Exception):
            facts.statuses.add(EXCEPTION_STATUS[target])
        elif name in CALLS:
            facts.statuses |= CALLS[name]
            if name == "send_json":
                success.add(int_argument(node, 1))
            if name == "Query":
                facts.query = set(ast.literal_eval(node.args[1]) or ())
            if name == "read_json":
                facts.reads_body = True
                facts.body_optional = any(
                    k.arg == "empty_ok" and ast.literal_eval(k.value) is True
                    for k in node.keywords
                )
        elif root == "self" or target is not None:
            facts.unknown_calls.add(name)
    if not success:
        # Endpoint._run answers 204 for a handler that returns None, else 200.
        returns = definition.returns
        returns_none = isinstance(returns, ast.Constant) and returns.value is None
        success = {204} if returns_none else {200}
    facts.statuses |= success | render_statuses()
    return facts


# Talking HTTP to the real site, in memory


def http(api: Api, method: str, target: str, body: bytes = b"") -> Response:
    """One request through ``api.site()`` over an in-memory connection."""
    return MemoryClient(api.site(), Clock()).request(
        method, target, body, identity=None
    )


@dataclass(frozen=True)
class Scenario:
    """One way to make a route answer a status."""

    query: str = ""
    body: bytes = b""
    method: str | None = None  # send this method instead of the route's
    job_id: str = JOB_ID
    status: JobStatus = JobStatus.RUNNING  # of the one job there is
    identified: bool = True
    visible: bool = True
    allowed: bool = True
    errors: tuple[tuple[str, Exception], ...] = ()  # manager method, error
    broken: bool = False  # every manager call fails unexpectedly


START = json.dumps({"command": "/bin/echo", "args": ["hi"]}).encode()

SPECIFIC: dict[tuple[str, str, int], list[Scenario]] = {
    ("/v1/jobs", "GET", 200): [Scenario(), Scenario(query="status=running,exited")],
    ("/v1/jobs", "GET", 400): [Scenario(query="status=sleeping")],
    ("/v1/jobs", "POST", 201): [Scenario(body=START)],
    ("/v1/jobs", "POST", 400): [
        Scenario(body=b"{"),
        Scenario(body=b'{"command": ""}'),
        Scenario(body=b'{"command": "x", "shell": true}'),
    ],
    ("/v1/jobs", "POST", 403): [
        Scenario(body=START, allowed=False),
        Scenario(body=b'{"command": "x", "limits": {"memory": "2G"}}'),
        Scenario(body=b'{"command": "x", "isolation": {"network": "host"}}'),
    ],
    ("/v1/jobs", "POST", 429): [
        Scenario(body=START, errors=(("start", TooManyJobs("256 are running")),))
    ],
    ("/v1/jobs", "POST", 503): [
        Scenario(body=START, errors=(("start", ShuttingDown("shutting down")),))
    ],
    ("/v1/jobs/{id}", "GET", 200): [Scenario()],
    ("/v1/jobs/{id}", "DELETE", 204): [Scenario(status=JobStatus.EXITED)],
    ("/v1/jobs/{id}", "DELETE", 409): [Scenario(status=JobStatus.RUNNING)],
    ("/v1/jobs/{id}/stop", "POST", 202): [Scenario(), Scenario(body=b'{"grace": 2}')],
    ("/v1/jobs/{id}/stop", "POST", 400): [Scenario(body=b'{"grace": -1}')],
    ("/v1/jobs/{id}/stop", "POST", 409): [Scenario(status=JobStatus.EXITED)],
    ("/v1/jobs/{id}/output", "GET", 200): [
        Scenario(),
        Scenario(query="stream=stdout&offset=1&wait=0&limit=1"),
        Scenario(query="follow=true&offset=1"),
    ],
    ("/v1/jobs/{id}/output", "GET", 400): [Scenario(query="limit=0")],
    ("/v1/jobs/{id}/output", "GET", 416): [
        Scenario(query="offset=100"),
        Scenario(query="offset=100&follow=true"),
    ],
    ("/v1/healthz", "GET", 200): [Scenario()],
    ("/v1/openapi.json", "GET", 200): [Scenario()],
}


def scenarios(
    route_table: dict[tuple[str, str], type[Endpoint]],
) -> dict[tuple[str, str, int], list[Scenario]]:
    """Every (path, method, status) the server can be made to answer, and how."""
    table = {key: list(value) for key, value in SPECIFIC.items()}

    def add(path: str, method: str, status: int, *ways: Scenario) -> None:
        table.setdefault((path, method, status), []).extend(ways)

    for (path, method), endpoint in route_table.items():
        body = START if method in BODY_METHODS else b""
        add(path, method, 403, Scenario(body=body, identified=False))
        add(path, method, 405, Scenario(method="PATCH"))
        add(path, method, 500, Scenario(body=body, broken=True))
        if method in BODY_METHODS:
            add(path, method, 413, Scenario(body=b" " * (MAX_BODY + 1)))
        if "{id}" in path:
            add(path, method, 403, Scenario(body=body, allowed=False))
            add(
                path,
                method,
                404,
                Scenario(body=body, visible=False),
                Scenario(body=body, job_id=OTHER_JOB_ID),
            )
        if handler_facts(endpoint, method).query is not None:
            add(path, method, 400, Scenario(body=body, query="bogus=1"))
    return table


def run(
    path: str, method: str, scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> Response:
    jobs = sample_jobs(scenario.status, scenario.broken)
    for name, error in scenario.errors:
        jobs.fail(name, error)
    policy = FakePolicy(visible=scenario.visible, allowed=scenario.allowed)
    api = make_api(jobs, policy, identified=scenario.identified)
    if scenario.broken:
        monkeypatch.setattr(meta_routes, "resources", BrokenResources())
    target = path.replace("{id}", scenario.job_id)
    if scenario.query:
        target += f"?{scenario.query}"
    return http(api, scenario.method or method, target, scenario.body)


# Tests


def test_document_is_valid_openapi_3_1() -> None:
    """The document passes openapi-spec-validator as OpenAPI 3.1."""
    openapi_spec_validator.validate(
        DOCUMENT, cls=openapi_spec_validator.OpenAPIV31SpecValidator
    )


def test_document_structure() -> None:
    """OpenAPI 3.1, mutual TLS everywhere, every $ref resolves, every part described."""
    assert DOCUMENT["openapi"].startswith("3.1.")
    assert DOCUMENT["security"] == [{"mutualTLS": []}]
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert set(schemes) == {"mutualTLS"}
    assert schemes["mutualTLS"]["type"] == "mutualTLS"
    for ref in refs(DOCUMENT):
        assert ref.startswith("#/components/"), ref
        resolve({"$ref": ref})
    operation_ids = [op["operationId"] for op in document_operations().values()]
    assert len(operation_ids) == len(set(operation_ids))
    for (path, method), operation in document_operations().items():
        assert operation.get("summary"), (path, method)
        assert "security" not in operation, "mutual TLS applies to every operation"
        for status, response in operation["responses"].items():
            assert re.fullmatch(r"[1-5][0-9][0-9]", status), (path, method, status)
            assert resolve(response)["description"], (path, method, status)


def test_routes_match_tree() -> None:
    """Every route and method the tree answers is documented, and nothing else is."""
    answered, documented = set(routes()), set(document_operations())
    assert answered == documented, (
        f"undocumented {sorted(answered - documented)}, "
        f"documented but not answered {sorted(documented - answered)}"
    )


def test_every_endpoint_is_routed() -> None:
    """Every Endpoint class is reachable, and answers exactly its ``actions``."""
    reached = set(routes().values())
    assert reached == endpoint_classes()
    for endpoint in reached:
        handlers = {
            n.removeprefix("handle_") for n in dir(endpoint) if n[:7] == "handle_"
        }
        assert handlers == set(endpoint.actions), endpoint


def test_status_table_matches_document() -> None:
    """The statuses each operation documents are exactly those in EXPECTED."""
    documented = documented_statuses()
    assert set(documented) == set(EXPECTED)
    for key, statuses in EXPECTED.items():
        assert documented[key] == statuses, (
            f"{key}: undocumented {sorted(statuses - documented[key])}, "
            f"documented but not expected {sorted(documented[key] - statuses)}"
        )


def test_handler_statuses_match_table() -> None:
    """The statuses read from each handler's code are exactly those in EXPECTED."""
    for (path, method), endpoint in routes().items():
        facts = handler_facts(endpoint, method)
        assert not facts.unknown_calls, (
            f"{endpoint.__name__}.handle_{method} calls {sorted(facts.unknown_calls)}:"
            " add them to CALLS with the statuses they can lead to"
        )
        assert facts.statuses == EXPECTED[path, method], (path, method)


def test_http_error_statuses() -> None:
    """as_http_error maps each library error to the status EXCEPTION_STATUS says."""
    samples: dict[type[Exception], Exception] = {
        InvalidSpec: InvalidSpec("command", "must not be empty"),
        JobNotFound: JobNotFound(JOB_ID),
        OffsetOutOfRange: OffsetOutOfRange(Stream.STDOUT, 9, 3),
    }
    for kind, status in EXCEPTION_STATUS.items():
        error = samples.get(kind) or kind.__new__(kind)
        mapped = as_http_error(error)
        assert mapped is not None and mapped.status == status, kind
    source = inspect.getsource(as_http_error)
    assert literal_statuses(source) == set(EXCEPTION_STATUS.values())


def test_scenarios_cover_document() -> None:
    """Every documented status has a scenario, and every scenario is documented."""
    produced = set(scenarios(routes()))
    documented = {
        (path, method, status)
        for (path, method), statuses in documented_statuses().items()
        for status in statuses
    }
    assert produced == documented, (
        f"no scenario for {sorted(documented - produced)}, "
        f"undocumented {sorted(produced - documented)}"
    )


def all_scenarios() -> list[Any]:
    table = scenarios(routes())
    return [
        pytest.param(path, method, status, scenario, id=f"{method} {path} {status} {i}")
        for (path, method, status), ways in sorted(table.items())
        for i, scenario in enumerate(ways)
    ]


@pytest.mark.parametrize(("path", "method", "status", "scenario"), all_scenarios())
def test_documented_status_is_produced(
    path: str,
    method: str,
    status: int,
    scenario: Scenario,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scenario gets its status, with the documented headers and body."""
    response = run(path, method, scenario, monkeypatch)
    assert response.status == status, response.body
    operation = document_operations()[path, method]
    documented = resolve(operation["responses"][str(status)])
    for name, header in documented.get("headers", {}).items():
        if resolve(header).get("required"):
            assert name.lower() in response.headers, name
    content = documented.get("content")
    if content is None:
        assert response.body == b""
        return
    content_type = response.headers.get("content-type")
    assert content_type in content, content_type
    if content_type == "application/json":
        validate(response.json(), content[content_type]["schema"])
    if status == 405:
        methods = sorted(m for (p, m) in document_operations() if p == path)
        assert response.headers["allow"] == ", ".join(methods)
    if status == 201:
        assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    if content_type == "application/octet-stream":
        offset = int(response.headers["jobworker-offset"])
        assert response.body
        assert response.body == b"hi\n"[offset:][: len(response.body)]


def test_served_document_is_the_file() -> None:
    """GET /v1/openapi.json answers the file's bytes, as JSON."""
    response = http(sample_api(), "GET", "/v1/openapi.json")
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert response.body == DOCUMENT_BYTES


def test_examples_match_schemas() -> None:
    """Every example in the document is valid against its schema."""
    checked = 0
    for operation in document_operations().values():
        bodies = [operation.get("requestBody", {})]
        bodies += [resolve(r) for r in operation["responses"].values()]
        for body in bodies:
            for media in body.get("content", {}).values():
                if "example" in media:
                    validate(media["example"], media["schema"])
                    checked += 1
    for response in DOCUMENT["components"]["responses"].values():
        for media in response.get("content", {}).values():
            validate(media["example"], media["schema"])
            checked += 1
    for name, definition in DOCUMENT["components"]["schemas"].items():
        for example in definition.get("examples", []):
            validate(example, schema(name))
            checked += 1
    assert checked > 10


def test_job_schema_is_the_record() -> None:
    """The Job schema has exactly the fields of Job.to_json, all required."""
    job = schema("Job")
    record = make_job().to_json()
    assert set(job["properties"]) == set(record) == set(job["required"])
    assert job["additionalProperties"] is False
    limits = schema("JobLimits")
    assert set(limits["properties"]) == set(Limits().to_json())
    assert set(limits["properties"]["io"]["properties"]) == set(IOLimits().to_json())
    assert set(schema("Usage")["properties"]) == set(Usage().to_json())
    assert set(schema("JobStatus")["enum"]) == {s.value for s in JobStatus}
    for status in JobStatus:
        validate(make_job(status).to_json({"stdout": 3, "stderr": 0}), job)


def test_job_request_schema_is_the_parser() -> None:
    """JobRequest and its parts have the parser's fields and refuse others."""
    parts = {
        "JobRequest": ({"command": "x"}, JobSpec("x").to_json(), None),
        "Limits": ({}, Limits().to_json(), "limits"),
        "IOLimits": ({}, IOLimits().to_json(), "io"),
        "Isolation": ({}, Isolation().to_json(), "isolation"),
    }
    for name, (minimal, fields, key) in parts.items():
        definition = schema(name)
        assert set(definition["properties"]) == set(fields), name
        assert definition["additionalProperties"] is False, name
        extra = {**minimal, "surplus": 1}
        request: dict[str, Any] = {"command": "x"}
        if key == "io":
            request["limits"] = {"io": extra}
        elif key is not None:
            request[key] = extra
        else:
            request = extra
        with pytest.raises(InvalidSpec, match="surplus: unknown field"):
            parse_job_spec(request)
    example = document_operations()["/v1/jobs", "POST"]["requestBody"]
    parse_job_spec(example["content"]["application/json"]["example"])


def test_size_pattern_is_the_parser() -> None:
    """The Size string pattern accepts and refuses the strings parse_size does."""
    pattern = schema("Size")["oneOf"][1]["pattern"]
    for text in ["256M", "1.5G", "64KiB", "10 k", "100", "2mb", " 1T ", "3 GiB"]:
        assert parse_size(text, "size") >= 1
        assert re.search(pattern, text), text
    for text in ["", "M", "-1K", "1 X", "1.5.5G", "1KK", "0x10"]:
        with pytest.raises(InvalidSpec):
            parse_size(text, "size")
        assert not re.search(pattern, text), text


def test_query_parameters_match_handlers() -> None:
    """Each operation documents exactly the query parameters its handler accepts."""
    for (path, method), endpoint in routes().items():
        accepted = handler_facts(endpoint, method).query or set()
        assert set(query_parameters(path, method)) == accepted, (path, method)


def test_output_parameters_match_settings() -> None:
    """The output read's defaults and bounds are the server's defaults."""
    settings = ApiSettings()
    parameters = query_parameters("/v1/jobs/{id}/output", "GET")
    assert set(parameters["stream"]["schema"]["enum"]) == {s.value for s in Stream}
    assert parameters["wait"]["schema"]["maximum"] == settings.max_wait
    assert parameters["limit"]["schema"]["default"] == settings.default_limit
    assert parameters["limit"]["schema"]["maximum"] == settings.max_limit
    status = query_parameters("/v1/jobs", "GET")["status"]["schema"]
    assert resolve(status["items"])["enum"] == [s.value for s in JobStatus]


def test_request_bodies_match_handlers() -> None:
    """A body is documented iff the handler reads one, optional iff it may be empty."""
    for (path, method), endpoint in routes().items():
        facts = handler_facts(endpoint, method)
        body = document_operations()[path, method].get("requestBody")
        assert (body is not None) == facts.reads_body, (path, method)
        if body is not None:
            assert body["required"] is not facts.body_optional, (path, method)


def test_grace_bounds_match_parser() -> None:
    """StopRequest's grace bounds are the ones parse_grace enforces."""
    grace = schema("StopRequest")["properties"]["grace"]
    assert parse_grace({"grace": grace["minimum"]}) == grace["minimum"]
    assert parse_grace({"grace": grace["maximum"]}) == grace["maximum"]
    for outside in (grace["minimum"] - 0.5, grace["maximum"] + 0.5):
        with pytest.raises(HTTPError):
            parse_grace({"grace": outside})


def test_error_codes_match_code() -> None:
    """The Error schema's codes are exactly the codes jobworker.http's routes
    answer with, and the wire's ErrorCode but the connection's own."""
    codes = set()
    for module in HTTP_MODULES:
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.Call) and dotted(node.func) == "HTTPError":
                code = dotted(node.args[1])
                assert code is not None and code.startswith("ErrorCode."), ast.unparse(
                    node
                )
                codes.add(ErrorCode[code.removeprefix("ErrorCode.")].value)
    error = schema("Error")["properties"]["error"]
    assert set(error["properties"]["code"]["enum"]) == codes
    assert codes == {code.value for code in ErrorCode} - CONNECTION_ERRORS
    for code in CONNECTION_ERRORS:
        assert f"`{code.value}`" in DOCUMENT["info"]["description"]
