"""
No silent unsafe mode: unisolated jobs of a root server only when asked for
by name, and a lost job's leftovers killed only where they are provably its.

Root is a patched ``os.geteuid``: the refusals come before anything is read
or made, so nothing real is touched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from jobworker.jobs.confinement import Confinement
from jobworker.jobs.errors import UnisolatedAsRoot
from jobworker.jobs.record import Job, new_job_id, utc_now
from jobworker.jobs.recovery import LOST, kill_leftovers, recover_lost
from jobworker.jobs.service import JobManager, Settings
from jobworker.jobs.spec import JobSpec
from jobworker.linux.cgroups import CgroupError
from jobworker.tap import Options, build_service
from jobworker.wire import JobStatus

REQUIRED = ["--cert", "s.pem", "--key", "s.key", "--ca", "ca.pem"]
FLAG = "--allow-unisolated-jobs-as-root"


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions([*REQUIRED, *argv])
    return options


# -- the server ---------------------------------------------------------------


@pytest.mark.usefixtures("as_root")
def test_no_isolation_as_root_is_refused_before_anything_is_read() -> None:
    """An operator who passes --no-isolation as root, thinking it harmless,
    is told what it means and how to insist; not even the certificates (none
    exist here) are read first."""
    with pytest.raises(UnisolatedAsRoot) as refused:
        build_service(parse("--no-isolation"))
    message = str(refused.value)
    assert "\n" not in message
    assert FLAG in message and "PID namespace" in message


def test_the_flag_alone_is_a_usage_error() -> None:
    """The flag allows one thing, --no-isolation as root: given without it,
    it would say something false about the server."""
    with pytest.raises(usage.UsageError, match="goes with --no-isolation"):
        parse(FLAG)


def test_the_flag_says_what_it_allows() -> None:
    """Its help names what jobs then share and lose."""
    help_text = " ".join(str(Options()).split())
    for words in ("PID namespace, /tmp, /dev and network", "one shared user"):
        assert words in help_text
    assert "no system call filter applies" in help_text


# -- the library --------------------------------------------------------------


def test_settings_do_not_allow_it_by_default() -> None:
    assert Settings().allow_unisolated_root is False


@pytest.mark.usefixtures("as_root")
def test_unisolated_settings_as_root_are_refused(tmp_path: Path) -> None:
    """A program using the library as root with isolate=False, and nothing
    more, is refused at open, and nothing is made."""
    reactor: Any = Clock()
    manager = JobManager(reactor, tmp_path / "data", Settings(isolate=False))
    with pytest.raises(UnisolatedAsRoot, match="allow_unisolated_root"):
        manager.open()
    assert not (tmp_path / "data").exists()


# -- a lost job's leftovers -----------------------------------------------------


class FakeConfinement(Confinement):
    """Cgroups that hold ``killed`` of a lost job's processes, none (None), or
    fail with ``error``."""

    def __init__(self, killed: int | None = None, error: str | None = None) -> None:
        super().__init__(None, "fake", Clock())
        self.killed = killed
        self.error = error

    def kill_lost(self, job_id: str) -> int | None:
        if self.error is not None:
            raise CgroupError(self.error)
        return self.killed


def lost_job(pid: int | None = None, start_time: int | None = None) -> Job:
    return Job(
        id=new_job_id(),
        owner="alice",
        spec=JobSpec(command="/bin/true"),
        status=JobStatus.RUNNING,
        created_at=utc_now(),
        pid=pid,
        pid_start_time=start_time,
    )


def test_the_cgroup_is_what_is_killed() -> None:
    """With a cgroup left, its processes are the job's: no PID is consulted
    (this record's would be anyone's)."""
    said = kill_leftovers(lost_job(pid=1, start_time=1), FakeConfinement(killed=2))
    assert said == "2 processes killed through its cgroup"


def test_an_empty_cgroup_means_nothing_is_left() -> None:
    """An empty cgroup is the whole truth: nothing runs, no session is swept."""
    said = kill_leftovers(lost_job(pid=1, start_time=1), FakeConfinement(killed=0))
    assert said == "0 processes killed through its cgroup"


@pytest.mark.parametrize(
    ("job", "why"),
    [
        (lost_job(), "no process of it was recorded: nothing killed"),
        (lost_job(pid=4242), "pid 4242 has no start time on record"),
    ],
)
def test_without_a_cgroup_or_a_leader_to_check_nothing_is_killed(
    job: Job, why: str
) -> None:
    said = kill_leftovers(job, FakeConfinement())
    assert said.startswith("no cgroup of it is left; ") and why in said


def test_a_cgroup_that_fails_is_said_so() -> None:
    """A cgroup that cannot be killed through falls back to the session, and
    the log line says both."""
    said = kill_leftovers(lost_job(), FakeConfinement(error="EACCES"))
    assert said == (
        "its cgroup could not be killed (EACCES);"
        " no process of it was recorded: nothing killed"
    )


def test_the_record_is_marked_lost() -> None:
    job = lost_job()
    lost, _ = recover_lost(job, FakeConfinement())
    assert (lost.id, lost.status, lost.error) == (job.id, JobStatus.LOST, LOST)
    assert lost.ended_at is not None
