"""
``/v1/jobs/{id}/output`` in memory: reads, long-polls against the clock,
follow streams, and clients that go away while they wait.
"""

from __future__ import annotations

import pytest

from jobworker.http.follow import FOLLOW_CHUNK
from jobworker.jobs.record import Job
from jobworker.wire import JobStatus, Stream
from tests.fakes import Served, serve


@pytest.fixture
def served() -> Served:
    return serve()


def output_path(job: Job, query: str = "") -> str:
    return f"/v1/jobs/{job.id}/output" + (f"?{query}" if query else "")


# Reads


def test_read_answers_bytes_and_offsets(served: Served) -> None:
    """A read is the bytes from the offset, with where they start and end, and
    whether that is all there will be."""
    job = served.jobs.add("alice", JobStatus.EXITED, output=b"hello\n")
    response = served.client.request("GET", output_path(job, "offset=1&limit=3"))
    assert (response.status, response.body) == (200, b"ell")
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["jobworker-offset"] == "1"
    assert response.headers["jobworker-next-offset"] == "4"
    assert response.headers["jobworker-complete"] == "false"
    response = served.client.request("GET", output_path(job, "offset=4"))
    assert (response.body, response.headers["jobworker-complete"]) == (b"o\n", "true")


def test_read_of_one_stream(served: Served) -> None:
    """?stream= picks stdout or stderr; combined is both in order."""
    job = served.jobs.add("alice")
    output = served.jobs.outputs[job.id]
    output.write(Stream.STDOUT, b"out ")
    output.write(Stream.STDERR, b"err ")
    output.write(Stream.STDOUT, b"more")
    for stream, expected in [
        ("stdout", b"out more"),
        ("stderr", b"err "),
        ("combined", b"out err more"),
    ]:
        response = served.client.request("GET", output_path(job, f"stream={stream}"))
        assert response.body == expected, stream


def test_long_read_is_sent_whole_in_pieces(served: Served) -> None:
    """An answer larger than one piece arrives whole, as its Content-Length says."""
    data = bytes(range(256)) * (FOLLOW_CHUNK // 256 * 2 + 3)
    job = served.jobs.add("alice", JobStatus.EXITED, output=data)
    response = served.client.request("GET", output_path(job, f"limit={len(data)}"))
    assert response.headers["content-length"] == str(len(data))
    assert response.body == data


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("offset=-1", "offset: must be a whole number"),
        ("offset=x", "offset: must be a whole number"),
        ("offset=1&offset=2", "offset: give it once"),
        ("limit=0", "limit: must be from 1 to 16777216"),
        ("wait=301", "wait: must be from 0 to 300"),
        ("wait=nan", "wait: must be a number"),
        ("stream=stdin", "stream: must be stdout, stderr or combined"),
        ("follow=yes", "follow: must be true or false"),
        ("colour=red", "colour: unknown query parameter"),
    ],
)
def test_bad_output_query_is_400(served: Served, query: str, message: str) -> None:
    """A bad offset, limit, wait, stream or follow is 400 naming it."""
    job = served.jobs.add("alice")
    response = served.client.request("GET", output_path(job, query))
    assert (response.status, response.error_code) == (400, "invalid_request")
    assert response.json()["error"]["message"] == message


@pytest.mark.parametrize("query", ["offset=4", "offset=4&follow=true"])
def test_offset_past_the_end_is_416(served: Served, query: str) -> None:
    """Past the end of an ended job's output is 416, with the size there is."""
    job = served.jobs.add("alice", JobStatus.EXITED, output=b"hi\n")
    response = served.client.request("GET", output_path(job, query))
    assert (response.status, response.error_code) == (416, "offset_out_of_range")
    assert response.headers["jobworker-size"] == "3"


def test_output_of_an_unseen_job_is_404(served: Served) -> None:
    """Another's job's output does not exist for alice: 404."""
    job = served.jobs.add("carol", output=b"secret")
    response = served.client.request("GET", output_path(job))
    assert (response.status, response.error_code) == (404, "not_found")


# Long-polls


def test_long_poll_is_woken_by_new_bytes(served: Served) -> None:
    """A long-poll with nothing to read yet answers as soon as bytes come."""
    job = served.jobs.add("alice")
    poll = served.client.send("GET", output_path(job, "wait=30"))
    served.clock.advance(29)
    assert not poll.answered
    served.jobs.outputs[job.id].write(Stream.STDOUT, b"late\n")
    assert poll.answered
    response = poll.response()
    assert (response.status, response.body) == (200, b"late\n")
    assert response.headers["jobworker-next-offset"] == "5"


def test_long_poll_ends_at_its_deadline(served: Served) -> None:
    """A long-poll nothing wakes answers at its deadline: 200, no bytes yet."""
    job = served.jobs.add("alice")
    poll = served.client.send("GET", output_path(job, "wait=30"))
    served.clock.advance(29.9)
    assert not poll.answered
    served.clock.advance(0.1)
    assert poll.answered
    response = poll.response()
    assert (response.status, response.body) == (200, b"")
    assert response.headers["jobworker-next-offset"] == "0"
    assert response.headers["jobworker-complete"] == "false"
    assert served.jobs.outputs[job.id].waiter_count() == 0


def test_long_poll_is_woken_by_the_end(served: Served) -> None:
    """A job that ends with nothing more to say ends the long-poll: complete."""
    job = served.jobs.add("alice")
    poll = served.client.send("GET", output_path(job, "wait=30"))
    served.jobs.outputs[job.id].close()
    assert poll.response().headers["jobworker-complete"] == "true"


def test_client_gone_mid_poll_cancels_the_wait(served: Served) -> None:
    """A client that disconnects mid-poll leaves no waiter and no deadline, and
    is answered nothing."""
    job = served.jobs.add("alice")
    poll = served.client.send("GET", output_path(job, "wait=30"))
    output = served.jobs.outputs[job.id]
    assert output.waiter_count() == 1
    poll.disconnect()
    assert output.waiter_count() == 0
    assert served.clock.getDelayedCalls() == []
    assert poll.transport.value() == b""


# Follow streams


def test_follow_streams_until_the_job_ends(served: Served) -> None:
    """A follower gets what there is, then each new piece, then the end."""
    job = served.jobs.add("alice", output=b"one\n")
    follow = served.client.send("GET", output_path(job, "follow=true&offset=1"))
    assert follow.response().body == b"ne\n"
    assert follow.response().headers["jobworker-offset"] == "1"
    assert len(served.api.followers) == 1
    output = served.jobs.outputs[job.id]
    output.write(Stream.STDERR, b"two\n")
    assert follow.response().body == b"ne\ntwo\n"
    assert not follow.answered
    output.close()
    assert follow.answered
    assert follow.response().body == b"ne\ntwo\n"
    assert served.api.followers == set()


def test_client_gone_mid_follow_cancels_the_wait(served: Served) -> None:
    """A follower whose client disconnects is forgotten, and its wait cancelled."""
    job = served.jobs.add("alice", output=b"some\n")
    follow = served.client.send("GET", output_path(job, "follow=true"))
    output = served.jobs.outputs[job.id]
    assert output.waiter_count() == 1
    follow.disconnect()
    assert output.waiter_count() == 0
    assert served.api.followers == set()
    output.write(Stream.STDOUT, b"unheard\n")  # nobody is sent it


def test_follow_cut_short_closes_the_connection(served: Served) -> None:
    """Output that goes away under a follower (a purge) cuts the connection,
    so the client sees the stream did not end."""
    job = served.jobs.add("alice", output=b"some\n")
    follow = served.client.send("GET", output_path(job, "follow=true"))
    output = served.jobs.outputs[job.id]
    output.gone = True
    output.write(Stream.STDOUT, b"more\n")
    assert follow.transport.disconnecting
    assert not follow.transport.value().endswith(b"0\r\n\r\n")
    assert served.api.followers == set()
