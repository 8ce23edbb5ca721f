"""
The job routes in memory: ``/v1/jobs``, ``/v1/jobs/{id}`` and its stop,
through the real site and resource tree, over fake jobs and the real policy.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest

from jobworker.auth.policy import Policy
from jobworker.http.settings import ApiSettings
from jobworker.jobs.confinement import LimitsUnavailable
from jobworker.jobs.errors import ShuttingDown, StorageFull, TooManyJobs
from jobworker.jobs.spec import JobSpec
from jobworker.wire import JobStatus
from tests.fakes import POLICY, Served, Started, serve

START = {"command": "/bin/echo", "args": ["hi"]}


@pytest.fixture
def served() -> Served:
    return serve()


def ids(body: Any) -> list[str]:
    return [job["id"] for job in body["jobs"]]


# Starting


def test_start_answers_201_with_the_record_and_location(served: Served) -> None:
    """A start is 201: the new record, and its path in Location."""
    response = served.client.request("POST", "/v1/jobs", START)
    assert response.status == 201
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["owner"], job["command"], job["args"]) == ("alice", "/bin/echo", ["hi"])
    assert (job["status"], job["run_as"]) == ("running", "worker")


def test_start_runs_as_the_role_within_its_ceilings(served: Served) -> None:
    """The job library is asked for the parsed spec, as the role's user, with
    the role's ceilings for the limits the request leaves out."""
    body = {**START, "limits": {"pids": 10}}
    assert served.client.request("POST", "/v1/jobs", body).status == 201
    operator = Policy.from_toml_text(POLICY).roles["operator"]
    (started,) = served.jobs.started
    assert started == Started(
        JobSpec("/bin/echo", ("hi",), limits=started.spec.limits),
        "alice",
        "worker",
        operator.ceilings,
        operator.sandbox,
    )
    assert started.spec.limits.pids == 10 and started.spec.limits.memory is None


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"memory": "2G"}, "limits.memory"),
        ({"pids": 101}, "limits.pids"),
        ({"io": {"read_bps": "11M"}}, "limits.io.read_bps"),
    ],
)
def test_limit_above_the_ceiling_is_403_naming_it(
    served: Served, limits: dict[str, Any], field: str
) -> None:
    """A limit above the role's ceiling is 403 naming the limit, and nothing starts."""
    response = served.client.request("POST", "/v1/jobs", {**START, "limits": limits})
    assert (response.status, response.error_code) == (403, "forbidden")
    assert response.json()["error"]["message"].startswith(f"{field}: ")
    assert served.jobs.started == []


def test_host_network_without_permission_is_403(served: Served) -> None:
    """Host networking the role does not allow is 403 naming isolation.network."""
    body = {**START, "isolation": {"network": "host"}}
    response = served.client.request("POST", "/v1/jobs", body)
    assert response.status == 403
    assert response.json()["error"]["message"].startswith("isolation.network: ")


@pytest.mark.parametrize("who", ["bob", "mallory"])
def test_start_without_the_grant_is_403(served: Served, who: str) -> None:
    """A role without start, or no role at all, may not start a job."""
    response = served.client.request("POST", "/v1/jobs", START, identity=who)
    assert (response.status, response.error_code) == (403, "forbidden")
    assert response.json()["error"]["message"] == f"{who} may not start jobs"
    assert served.jobs.started == []


def test_no_identity_is_403(served: Served) -> None:
    """A request with no identity (no certificate) is 403 on any route; this
    API has no 401."""
    for method, path in [
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/healthz"),
    ]:
        response = served.client.request(method, path, START, identity=None)
        assert (response.status, response.error_code) == (403, "forbidden")
        assert response.json()["error"]["message"] == "no client certificate"


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (b"{", "invalid_json", "body: not valid JSON: "),
        (b"\xff", "invalid_json", "body: not UTF-8"),
        (b"", "invalid_json", "body: not valid JSON: "),
        (b"[1]", "invalid_request", "body: must be a JSON object"),
        (
            b'{"command": "x", "colour": "red"}',
            "invalid_request",
            "colour: unknown field",
        ),
        (b'{"command": ""}', "invalid_request", "command: must not be empty"),
    ],
)
def test_malformed_start_is_400(
    served: Served, body: bytes, code: str, message: str
) -> None:
    """A body that is not JSON, or not a valid job request, is 400 saying why."""
    response = served.client.request("POST", "/v1/jobs", body)
    assert (response.status, response.error_code) == (400, code)
    assert response.json()["error"]["message"].startswith(message)
    assert served.jobs.started == []


def test_huge_body_is_413() -> None:
    """A body over the limit is 413, and nothing starts."""
    served = serve(settings=ApiSettings(max_body=1024))
    body = {**START, "args": ["x" * 2000]}
    response = served.client.request("POST", "/v1/jobs", body)
    assert (response.status, response.error_code) == (413, "body_too_large")
    assert served.jobs.started == []


@pytest.mark.parametrize(
    ("error", "status", "code", "retry_after"),
    [
        (TooManyJobs("3 jobs are running already"), 429, "too_many_jobs", "1"),
        (StorageFull("no room"), 503, "storage_full", "60"),
        (ShuttingDown("the server is shutting down"), 503, "shutting_down", None),
        (LimitsUnavailable("no cgroups"), 503, "limits_unavailable", None),
        (OSError(errno.EMFILE, "Too many open files"), 503, "out_of_resources", "1"),
        (OSError(errno.ENFILE, "File table overflow"), 503, "out_of_resources", "1"),
    ],
)
def test_start_refused_for_now_is_429_or_503(
    served: Served,
    error: Exception,
    status: int,
    code: str,
    retry_after: str | None,
) -> None:
    """A start the server cannot take now is 429 or 503, with Retry-After
    where a retry soon may succeed."""
    served.jobs.fail("start", error)
    response = served.client.request("POST", "/v1/jobs", START)
    assert (response.status, response.error_code) == (status, code)
    assert response.headers.get("retry-after") == retry_after


def test_unexpected_error_is_500_without_details(served: Served) -> None:
    """A bug is 500 with a message pointing at the server log, no traceback."""
    served.jobs.fail("start", OSError(errno.EIO, "disk on fire"))
    response = served.client.request("POST", "/v1/jobs", START)
    assert (response.status, response.error_code) == (500, "internal_error")
    assert response.json()["error"]["message"] == "internal error; see server log"


# Listing


def test_list_shows_what_the_role_may_read(served: Served) -> None:
    """alice lists her own jobs, bob everyone's, mallory nothing (200, empty)."""
    mine = served.jobs.add("alice")
    theirs = served.jobs.add("carol")
    for who, expected in [
        ("alice", [mine.id]),
        ("bob", [mine.id, theirs.id]),
        ("mallory", []),
    ]:
        response = served.client.request("GET", "/v1/jobs", identity=who)
        assert (response.status, ids(response.json())) == (200, expected), who


def test_list_filters_by_status_and_owner(served: Served) -> None:
    """?status= and ?owner= narrow the list."""
    running = served.jobs.add("alice")
    ended = served.jobs.add("carol", JobStatus.EXITED)
    query = "/v1/jobs?status=exited,stopped"
    assert ids(served.client.request("GET", query, identity="bob").json()) == [ended.id]
    query = "/v1/jobs?owner=alice"
    assert ids(served.client.request("GET", query, identity="bob").json()) == [
        running.id
    ]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=sleeping", "status: must be one of "),
        ("colour=red", "colour: unknown query parameter"),
        ("owner=a&owner=b", "owner: give it once"),
    ],
)
def test_bad_list_query_is_400(served: Served, query: str, message: str) -> None:
    """An unknown status or parameter, or one given twice, is 400 naming it."""
    response = served.client.request("GET", f"/v1/jobs?{query}")
    assert (response.status, response.error_code) == (400, "invalid_request")
    assert response.json()["error"]["message"].startswith(message)


# One job


def test_get_answers_the_record(served: Served) -> None:
    """GET /v1/jobs/{id} is the record, with its output sizes."""
    job = served.jobs.add("alice", JobStatus.EXITED, output=b"hi\n")
    response = served.client.request("GET", f"/v1/jobs/{job.id}")
    assert response.status == 200
    record = response.json()
    assert (record["id"], record["status"], record["exit_code"]) == (
        job.id,
        "exited",
        0,
    )
    assert record["output_bytes"] == {"stdout": 3, "stderr": 0}


def test_unknown_job_is_404(served: Served) -> None:
    """A job id nobody has is 404 on every route, naming the id."""
    missing = "f" * 32
    for method, path in [
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/stop"),
        ("GET", "/output"),
    ]:
        response = served.client.request(method, f"/v1/jobs/{missing}{path}")
        assert (response.status, response.error_code) == (404, "not_found"), path
        assert missing in response.json()["error"]["message"]


def test_a_job_the_caller_may_not_see_is_404_not_403(served: Served) -> None:
    """carol's job does not exist as far as alice may know: 404, not 403."""
    job = served.jobs.add("carol")
    for method, path in [("GET", ""), ("POST", "/stop"), ("DELETE", "")]:
        response = served.client.request(method, f"/v1/jobs/{job.id}{path}")
        assert response.status == 404, (method, path)
    assert served.jobs.stopped == []


def test_an_action_not_granted_on_a_visible_job_is_403(served: Served) -> None:
    """bob may read alice's job, not stop or purge it: 403 naming the action."""
    job = served.jobs.add("alice")
    response = served.client.request("POST", f"/v1/jobs/{job.id}/stop", identity="bob")
    assert (response.status, response.error_code) == (403, "forbidden")
    assert response.json()["error"]["message"] == f"bob may not stop job {job.id}"
    response = served.client.request("DELETE", f"/v1/jobs/{job.id}", identity="bob")
    assert response.status == 403
    assert served.jobs.stopped == [] and job.id in served.jobs.jobs


def test_purge_an_ended_job_is_204(served: Served) -> None:
    """Purging an ended job is 204 with no body; then it is not found."""
    job = served.jobs.add("alice", JobStatus.EXITED)
    response = served.client.request("DELETE", f"/v1/jobs/{job.id}")
    assert (response.status, response.body) == (204, b"")
    assert served.client.request("GET", f"/v1/jobs/{job.id}").status == 404


def test_purge_a_running_job_is_409(served: Served) -> None:
    """A running job cannot be purged: 409, and it stays."""
    job = served.jobs.add("alice")
    response = served.client.request("DELETE", f"/v1/jobs/{job.id}")
    assert (response.status, response.error_code) == (409, "conflict")
    assert job.id in served.jobs.jobs


# Stopping


@pytest.mark.parametrize(
    ("body", "grace"), [(b"", None), ({"grace": 2}, 2.0), ({"grace": 0.5}, 0.5)]
)
def test_stop_is_202_stopping(served: Served, body: Any, grace: float | None) -> None:
    """A stop is 202 with the record (stopping), with the grace asked for, if any."""
    job = served.jobs.add("alice")
    response = served.client.request("POST", f"/v1/jobs/{job.id}/stop", body)
    assert (response.status, response.json()["status"]) == (202, "stopping")
    assert served.jobs.stopped == [(job.id, grace)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"grace": -1}, "grace: must be a number of seconds from 0 to 3600"),
        ({"grace": 3601}, "grace: must be a number of seconds from 0 to 3600"),
        ({"grace": True}, "grace: must be a number of seconds from 0 to 3600"),
        ({"signal": 9}, "signal: unknown field"),
        ([2], "body: must be a JSON object"),
    ],
)
def test_bad_stop_is_400(served: Served, body: Any, message: str) -> None:
    """A bad grace or an unknown field is 400 naming it, and nothing is stopped."""
    job = served.jobs.add("alice")
    response = served.client.request("POST", f"/v1/jobs/{job.id}/stop", body)
    assert (response.status, response.error_code) == (400, "invalid_request")
    assert response.json()["error"]["message"] == message
    assert served.jobs.stopped == []


def test_stop_an_ended_job_is_409(served: Served) -> None:
    """Stopping a job that has ended is 409."""
    job = served.jobs.add("alice", JobStatus.STOPPED)
    response = served.client.request("POST", f"/v1/jobs/{job.id}/stop")
    assert (response.status, response.error_code) == (409, "conflict")


# Paths and methods


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/jobs", "GET, POST"),
        ("GET", "/v1/jobs/{id}/stop", "POST"),
        ("POST", "/v1/jobs/{id}", "DELETE, GET"),
        ("DELETE", "/v1/healthz", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(
    served: Served, method: str, path: str, allow: str
) -> None:
    """A method a route does not answer is 405, and Allow lists those it does."""
    job = served.jobs.add("alice")
    response = served.client.request(method, path.replace("{id}", job.id))
    assert (response.status, response.error_code) == (405, "method_not_allowed")
    assert response.headers["allow"] == allow


@pytest.mark.parametrize(
    "path", ["/", "/v2/jobs", "/v1", "/v1/nope", "/v1/jobs/abc/nope", "/v1/healthz/x"]
)
def test_unknown_path_is_a_json_404(served: Served, path: str) -> None:
    """A path the API does not have is a JSON 404 naming it."""
    response = served.client.request("GET", path)
    assert (response.status, response.error_code) == (404, "not_found")
    assert response.json()["error"]["message"] == f"no such path: {path}"


def test_health_counts_running_jobs(served: Served) -> None:
    """Health is 200 for any caller, with the running jobs and followers."""
    served.jobs.add("alice")
    served.jobs.add("carol", JobStatus.EXITED)
    response = served.client.request("GET", "/v1/healthz", identity="mallory")
    assert response.status == 200
    assert response.json() == {"status": "ok", "running_jobs": 1, "followers": 0}
