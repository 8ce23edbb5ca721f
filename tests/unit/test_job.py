"""Job records: the state machine and the stored form."""

from __future__ import annotations

import pytest

from jobworker.jobs.record import TRANSITIONS, IllegalTransition, Job, Usage
from jobworker.jobs.rows import job_from_row, job_to_row
from jobworker.jobs.spec import JobSpec
from jobworker.wire import JobStatus


def make_job(status: JobStatus = JobStatus.RUNNING) -> Job:
    return Job(
        id="0" * 32,
        owner="alice",
        spec=JobSpec(command="true", args=("a",)),
        status=status,
        created_at="2026-11-22T10:00:00.123Z",
    )


@pytest.mark.parametrize("before", list(JobStatus))
@pytest.mark.parametrize("after", list(JobStatus))
def test_transitions_follow_the_table(before: JobStatus, after: JobStatus) -> None:
    """A status change is allowed exactly when the table lists it."""
    job = make_job(before)
    if after is before or after in TRANSITIONS[before]:
        assert job.evolve(status=after).status is after
    else:
        with pytest.raises(IllegalTransition):
            job.evolve(status=after)


def test_ended_statuses_are_final() -> None:
    """Nothing follows an ended status, and only the live ones are not ended."""
    for status in JobStatus:
        assert status.ended == (not TRANSITIONS[status])


def test_record_shape() -> None:
    """The JSON record carries the fields the API documents."""
    record = make_job().to_json({"stdout": 3, "stderr": 0})
    assert set(record) >= {
        "id",
        "owner",
        "command",
        "args",
        "status",
        "exit_code",
        "signal",
        "oom_killed",
        "error",
        "created_at",
        "started_at",
        "ended_at",
        "limits",
        "isolation",
        "run_as",
        "usage",
        "output_bytes",
    }
    assert record["status"] == "running"
    assert record["output_bytes"] == {"stdout": 3, "stderr": 0}


def test_stored_form_round_trips() -> None:
    """What the store writes rebuilds the same record, private fields included."""
    job = make_job().evolve(
        status=JobStatus.EXITED,
        exit_code=3,
        pid=1234,
        pid_start_time=99,
        usage=Usage(cpu_seconds=0.5, memory_peak=10, io_read_bytes=1),
    )
    assert job_from_row(job_to_row(job)) == job
