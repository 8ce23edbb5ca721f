"""
The audit line in memory: one per request, allowed or denied, with who, the
action, the job, the policy's answer and the status sent.
"""

from __future__ import annotations

from jobworker.wire import JobStatus
from tests.fakes import audit_lines, serve

START = {"command": "true"}


def test_one_audit_line_per_request() -> None:
    """Every request leaves one line: "allowed" is the policy's answer, None
    where the request was refused before the policy was asked."""
    served = serve()
    job = served.jobs.add("alice")
    ended = served.jobs.add("alice", JobStatus.EXITED)
    path = f"/v1/jobs/{job.id}"
    client = served.client
    with audit_lines() as lines:
        client.request("GET", path)
        client.request("GET", "/v1/jobs", identity="mallory")
        client.request("POST", path + "/stop", {"grace": -1})
        client.request("POST", path + "/stop", identity="bob")
        client.request("GET", path + "?colour=red")
        client.request("DELETE", f"/v1/jobs/{ended.id}")
        client.request("GET", "/v1/healthz", identity="bob")
        client.request("PUT", "/v1/jobs")
    assert lines == [
        ("alice", "read", job.id, True, 200),
        ("mallory", "read", None, False, 200),  # an empty list
        ("alice", "stop", job.id, True, 400),  # allowed, but a bad grace
        ("bob", "stop", job.id, False, 403),
        ("alice", "read", job.id, None, 400),  # refused before asking
        ("alice", "purge", ended.id, True, 204),
        ("bob", "get", None, True, 200),
        ("alice", "put", None, None, 405),
    ]


def test_start_is_audited_with_the_new_job() -> None:
    """An allowed start names the job it made; a denied one, none."""
    served = serve()
    with audit_lines() as lines:
        created = served.client.request("POST", "/v1/jobs", START).json()
        served.client.request("POST", "/v1/jobs", START, identity="bob")
        served.client.request("POST", "/v1/jobs", {**START, "limits": {"pids": 999}})
    assert lines == [
        ("alice", "start", created["id"], True, 201),
        ("bob", "start", None, False, 403),
        ("alice", "start", None, True, 403),  # the role may start, not this much
    ]


def test_requests_nobody_may_make_are_audited_denied() -> None:
    """No identity, an unknown job, another's job, an unknown path: each is a
    line, denied (or, for a path, not asked)."""
    served = serve()
    theirs = served.jobs.add("carol")
    missing = "f" * 32
    with audit_lines() as lines:
        served.client.request("GET", "/v1/jobs", identity=None)
        served.client.request("GET", f"/v1/jobs/{missing}")
        served.client.request("GET", f"/v1/jobs/{theirs.id}/output")
        served.client.request("GET", "/v1/nope", identity="bob")
    assert lines == [
        (None, "read", None, False, 403),
        ("alice", "read", missing, False, 404),
        ("alice", "read", theirs.id, False, 404),
        ("bob", "unknown_path", None, None, 404),
    ]


def test_a_poll_the_client_left_is_audited_once() -> None:
    """A long-poll whose client went away still leaves its one line."""
    served = serve()
    job = served.jobs.add("alice")
    with audit_lines() as lines:
        poll = served.client.send("GET", f"/v1/jobs/{job.id}/output?wait=30")
        assert lines == []
        poll.disconnect()
    assert len(lines) == 1
    assert lines[0][:4] == ("alice", "read", job.id, True)
