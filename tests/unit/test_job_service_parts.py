"""
The pieces the job service is made of, each alone with fakes: the records
kept while the database refuses them, the admission checks, the launch plan,
and the running job's phase table.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from jobworker.jobs.admission import Admission
from jobworker.jobs.confinement import Confinement, LimitsUnavailable
from jobworker.jobs.diskspace import DiskSpace
from jobworker.jobs.errors import ShuttingDown, StorageFull, TooManyJobs
from jobworker.jobs.launching import JobUser, LaunchPlanner
from jobworker.jobs.output import OutputLog
from jobworker.jobs.record import Job
from jobworker.jobs.records import Records
from jobworker.jobs.running import (
    PHASES,
    IllegalPhase,
    JobBounds,
    Phase,
    RunningJob,
)
from jobworker.jobs.spec import JobSpec, Limits
from jobworker.jobs.store import JobStore
from jobworker.linux.launcher import LaunchRequest
from jobworker.wire import JobStatus

KiB = 1024


def record(job_id: str = "a" * 32, **changes: object) -> Job:
    fields: dict[str, object] = dict(
        id=job_id,
        owner="alice",
        spec=JobSpec(command="true"),
        status=JobStatus.RUNNING,
        created_at="2026-11-22T10:00:00.000Z",
    )
    fields.update(changes)
    return Job(**fields)  # type: ignore[arg-type]


class RefusingStore(JobStore):
    """A real store whose writes fail, as on a full disk, while ``full``."""

    full = False

    def save(self, job: Job) -> None:
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        super().save(job)


@pytest.fixture
def store(tmp_path: Path) -> RefusingStore:
    return RefusingStore(tmp_path / "jobs.sqlite3")


def test_refused_record_is_served_from_memory_and_written_later(
    store: RefusingStore,
) -> None:
    """A record the database refuses is served from memory and retried on the
    clock until the database takes it."""
    clock = Clock()
    records = Records(store, clock, retry=5.0)
    records.save(record())
    store.full = True
    stopping = record(status=JobStatus.STOPPING)
    records.save(stopping)
    assert records.get(stopping.id) == stopping
    assert store.get(stopping.id) == record()
    clock.advance(5)  # still full: kept, and retried again
    assert records.get(stopping.id) == stopping
    store.full = False
    clock.advance(5)
    assert store.get(stopping.id) == stopping
    assert clock.getDelayedCalls() == []


def test_refused_first_record_means_no_job(store: RefusingStore) -> None:
    """A new job's first record that the disk refuses is StorageFull, and the
    job's other pieces are undone."""
    undone: list[bool] = []
    records = Records(store, Clock(), retry=5.0)
    store.full = True

    def full(job: Job) -> None:
        error = sqlite3.OperationalError("database or disk is full")
        error.sqlite_errorcode = sqlite3.SQLITE_FULL
        raise error

    store.save = full  # type: ignore[method-assign]
    with pytest.raises(StorageFull):
        records.create(record(), undo=lambda: undone.append(True))
    assert undone == [True]


def test_list_shows_current_records_while_some_are_unsaved(
    store: RefusingStore,
) -> None:
    """With records unsaved, a list filters what they are now, not what the
    database last knew."""
    records = Records(store, Clock(), retry=5.0)
    records.save(record("a" * 32))
    records.save(record("b" * 32))
    store.full = True
    records.save(record("a" * 32, status=JobStatus.EXITED, exit_code=0))
    running = records.list(None, {JobStatus.RUNNING}, lambda job_id: None)
    assert [job.id for job in running] == ["b" * 32]


def test_implausible_ids_never_reach_the_database(store: RefusingStore) -> None:
    """An id that cannot be a job's is unknown without a query."""
    records = Records(store, Clock(), retry=5.0)
    assert records.get("../etc/passwd") is None


def admission(tmp_path: Path, free: int = 100 * KiB, max_running: int = 2) -> Admission:
    def statvfs(path: Path) -> os.statvfs_result:
        return os.statvfs_result((KiB, KiB, 0, 0, free // KiB, 0, 0, 0, 0, 255))

    space = DiskSpace(tmp_path, reserve=10 * KiB, statvfs=statvfs)
    return Admission(max_running, space, Confinement.none(Clock(), "no cgroups here"))


def test_admission_takes_a_job_within_bounds(tmp_path: Path) -> None:
    """A job within every bound is admitted."""
    admission(tmp_path).check(JobSpec(command="true"), running=1)


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("closing", ShuttingDown),
        ("full", TooManyJobs),
        ("no room", StorageFull),
        ("limits", LimitsUnavailable),
    ],
)
def test_admission_refuses_with_the_reason(
    tmp_path: Path, case: str, error: type[Exception]
) -> None:
    """Each bound refuses with its own error."""
    checker = admission(tmp_path, free=10 * KiB if case == "no room" else 100 * KiB)
    checker.closing = case == "closing"
    limits = Limits(memory=1 << 20) if case == "limits" else Limits()
    with pytest.raises(error):
        checker.check(
            JobSpec(command="true", limits=limits), running=2 if case == "full" else 0
        )


def test_launch_plan_carries_the_orders_of_the_record() -> None:
    """The helper's orders come from the record and the server's settings:
    the job's PATH unless it sets one, its cwd, its network."""
    planner = LaunchPlanner(job_path="/bin", isolate=True)
    job = record(spec=JobSpec(command="ls", args=("-l",), env={"A": "1"}, cwd="/srv"))
    plan = planner.plan(job, JobUser(None, None), Confinement.none(Clock(), "off"))
    assert (plan.confinement, plan.error) == (None, None)
    request = plan.request
    assert (request.executable, request.argv) == ("ls", ("ls", "-l"))
    assert (request.env, request.cwd, request.isolate) == (
        {"PATH": "/bin", "A": "1"},
        "/srv",
        True,
    )
    assert (request.uid, request.cgroup_procs) == (None, ())


def test_every_phase_can_only_move_forward() -> None:
    """The phase table has no way back, and FINISHED is the end."""
    order = list(Phase)
    for phase, later in PHASES.items():
        assert all(order.index(p) > order.index(phase) for p in later)
    assert PHASES[Phase.FINISHED] == frozenset()


def test_finished_job_refuses_another_phase(tmp_path: Path) -> None:
    """A job that failed to start is FINISHED; its process cannot then be
    reported spawned."""
    clock = Clock()
    output = OutputLog.create(tmp_path / "out", clock)
    saved: list[Job] = []
    job = RunningJob(
        record(),
        output,
        clock,
        saved.append,
        JobBounds(output_limit=KiB, default_grace=1.0),
        LaunchRequest("/bin/true", ("true",)),
    )
    job.fail_to_start("spawn true: No such file or directory (ENOENT)")
    assert (job.phase, saved[-1].status) == (Phase.FINISHED, JobStatus.FAILED_TO_START)
    with pytest.raises(IllegalPhase):
        job.spawned(object())  # type: ignore[arg-type]
