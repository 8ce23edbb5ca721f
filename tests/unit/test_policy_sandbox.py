"""
A role's sandbox keys (``writable``, ``allow_root``, ``seccomp``, ``tmpfs``):
read strictly from the policy file, checked against the host at start-up,
and carried from the API's start to the launch helper's orders.
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from jobworker.auth import Policy, PolicyError
from jobworker.auth.host_check import check_on_host
from jobworker.jobs.confinement import Confinement
from jobworker.jobs.launching import JobUser, LaunchPlanner
from jobworker.jobs.record import Job
from jobworker.jobs.sandbox import JobSandbox
from jobworker.jobs.spec import JobSpec
from jobworker.linux.launcher import (
    DEFAULT_TMPFS_SIZE,
    HelperLauncher,
    under_private_mount,
)
from jobworker.wire import JobStatus
from tests.conftest import skip_or_fail
from tests.fakes import serve
from tests.host_dirs import visible_tempdir

M = 1 << 20
GRANTS = 'grants = { start = "own" }\n'


def role(keys: str, name: str = "builder") -> str:
    """A policy with one role of ``keys``, which alice has."""
    return f'[roles.{name}]\n{GRANTS}{keys}\n[identities]\nalice = "{name}"\n'


def parsed(keys: str) -> Any:
    return Policy.from_toml_text(role(keys), "policy.toml").roles["builder"]


def error(keys: str) -> str:
    """The PolicyError message for a role of ``keys`` (it must be refused)."""
    with pytest.raises(PolicyError) as caught:
        Policy.from_toml_text(role(keys), "policy.toml")
    return str(caught.value)


# Parsing


def test_a_role_without_sandbox_keys_has_the_usual_sandbox() -> None:
    builder = parsed("")
    assert (builder.sandbox, builder.allow_root) == (JobSandbox(), False)


def test_every_sandbox_key_is_read() -> None:
    builder = parsed(
        'run_as = "nobody"\nwritable = ["/srv/builds", "/srv/cache", "/srv/builds"]\n'
        'seccomp = "off"\ntmpfs = "64M"\nallow_root = false\n'
    )
    assert builder.sandbox == JobSandbox(
        writable=("/srv/builds", "/srv/cache"), seccomp=False, tmpfs_size=64 * M
    )
    assert parsed('seccomp = "default"\ntmpfs = 1048576\n').sandbox == JobSandbox(
        tmpfs_size=M
    )


def test_root_needs_allow_root() -> None:
    """``run_as = "root"`` alone is refused, saying how to mean it."""
    message = error('run_as = "root"\n')
    assert message.startswith("policy.toml: roles.builder.run_as: ")
    assert "allow_root = true" in message
    assert "no capabilities" in message
    assert "allow_root = false" not in message
    assert error('run_as = "root"\nallow_root = false\n') == message
    root = parsed('run_as = "root"\nallow_root = true\n')
    assert (root.run_as, root.allow_root) == ("root", True)


def test_writable_needs_a_run_as_user_in_the_file() -> None:
    """Whatever run_as defaults to, a role with writable paths must name
    one: files left there would pass to the next holder of a uid."""
    message = error('writable = ["/srv/builds"]\n')
    assert message.startswith("policy.toml: roles.builder.writable: needs")
    assert "run_as" in message and "uid" in message
    assert parsed('run_as = "nobody"\nwritable = []\n').sandbox == JobSandbox()
    assert parsed("writable = []\n").sandbox == JobSandbox()


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ('writable = "/srv/builds"', "writable: must be a list of paths"),
        ("writable = [1]", "writable: must be a list of paths (strings)"),
        ('writable = ["srv/builds"]', "'srv/builds' must be an absolute path"),
        ('writable = [""]', "'' must be an absolute path"),
        ('writable = ["//srv"]', "'//srv' must be an absolute path"),
        ('writable = ["/srv/../etc"]', "'/srv/../etc' must be a normalized path"),
        ('writable = ["/srv/./b"]', "'/srv/./b' must be a normalized path"),
        ('writable = ["/srv//b"]', "'/srv//b' must be a normalized path"),
        ('writable = ["/srv/b/"]', "'/srv/b/' must be a normalized path"),
        ('writable = ["/srv/\\u0000"]', "must be an absolute path"),
        ('writable = ["/"]', "'/' is the job's own"),
        ('writable = ["/tmp/out"]', "'/tmp/out' is the job's own"),
        ('writable = ["/proc"]', "'/proc' is the job's own"),
        ('writable = ["/dev/shm"]', "'/dev/shm' is the job's own"),
        ("writable = [" + ", ".join(f'"/s/{n}"' for n in range(65)) + "]", "64"),
        ('allow_root = "yes"', "allow_root: must be true or false"),
        ("allow_root = 1", "allow_root: must be true or false"),
        ('seccomp = "on"', 'seccomp: must be "default" (the filter) or "off"'),
        ('seccomp = "OFF"', 'seccomp: must be "default"'),
        ("seccomp = false", 'seccomp: must be "default"'),
        ('tmpfs = "512K"', "tmpfs: must be a size of at least 1M"),
        ('tmpfs = "256"', "tmpfs: must be a size of at least 1M"),
        ("tmpfs = 0", "tmpfs: must be a size of at least 1M"),
        ("tmpfs = -1", "tmpfs: must be a size of at least 1M"),
        ("tmpfs = true", "tmpfs: must be a size of at least 1M"),
        ('tmpfs = "lots"', "tmpfs: must be a size of at least 1M"),
        ('tmpfs = "9000000000000T"', "tmpfs: must be a size of at least 1M"),
        ("tmpfs_size = 1", "tmpfs_size: unknown key"),
    ],
)
def test_bad_sandbox_keys_name_the_file_and_key(keys: str, expected: str) -> None:
    message = error(f'run_as = "nobody"\n{keys}\n')
    assert message.startswith("policy.toml: roles.builder.")
    assert expected in message


# The host, at start-up


@pytest.fixture
def host() -> Iterator[Path]:
    """A directory standing for the host's /srv, outside what a job has of
    its own: builds/, and the server's data directory and policy file."""
    path = visible_tempdir("jobworker-policy-").resolve()
    try:
        if under_private_mount(str(path)):
            skip_or_fail("no directory outside /tmp that this user may write")
        (path / "builds").mkdir()
        (path / "data").mkdir()
        (path / "etc").mkdir()
        (path / "etc" / "policy.toml").write_text("")
        yield path
    finally:
        shutil.rmtree(path)


def server_paths(host: Path) -> tuple[str, ...]:
    return (str(host / "etc" / "policy.toml"), str(host / "data"))


def on_host(host: Path, *writable: str) -> Policy:
    paths = ", ".join(f'"{p}"' for p in writable)
    policy = Policy.from_toml_text(role(f'run_as = "nobody"\nwritable = [{paths}]'))
    return check_on_host(policy, "policy.toml", server_paths(host))


def refused(host: Path, *writable: str) -> str:
    with pytest.raises(PolicyError) as caught:
        on_host(host, *writable)
    message = str(caught.value)
    assert message.startswith("policy.toml: roles.builder.writable: ")
    return message


def test_writable_directories_pass_as_their_real_paths(host: Path) -> None:
    """A symlink on the way is resolved: the helper takes real paths."""
    (host / "link").symlink_to(host / "builds")
    policy = on_host(host, str(host / "builds"), str(host / "link"))
    assert policy.roles["builder"].sandbox.writable == (str(host / "builds"),)
    assert policy.identities == {"alice": "builder"}


def test_writable_must_be_a_directory_that_exists(host: Path) -> None:
    missing = refused(host, str(host / "nothing"))
    assert f"'{host}/nothing' is not a directory on this host" in missing
    (host / "file").write_text("")
    assert "is not a directory" in refused(host, str(host / "file"))


def test_writable_may_not_reach_the_servers_own_files(host: Path) -> None:
    """Not the data directory, nor in it, nor over it; nor over the policy
    file (or the TLS files): jobs never write those."""
    (host / "data" / "jobs").mkdir()
    for path in ("data", "data/jobs", "etc", ""):
        message = refused(host, str(host / path).rstrip("/"))
        assert "would let jobs write the server's own" in message


def test_a_symlink_into_a_private_mount_is_refused(host: Path) -> None:
    """A path that only looks like the host's: really /tmp, the job's own."""
    (host / "scratch").symlink_to("/tmp")
    message = refused(host, str(host / "scratch"))
    assert f"'{host}/scratch' (really '/tmp') is the job's own" in message


def test_another_name_for_uid_0_needs_allow_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``run_as = "toor"`` where toor is uid 0 is root by another name."""
    toor = pwd.struct_passwd(("toor", "x", 0, 0, "", "/root", "/bin/sh"))
    real = pwd.getpwnam
    monkeypatch.setattr(
        pwd, "getpwnam", lambda name: toor if name == "toor" else real(name)
    )
    policy = Policy.from_toml_text(role('run_as = "toor"'))
    with pytest.raises(PolicyError) as caught:
        check_on_host(policy, "policy.toml", ())
    assert str(caught.value).startswith(
        "policy.toml: roles.builder.run_as: 'toor' is uid 0: say allow_root = true"
    )
    allowed = Policy.from_toml_text(role('run_as = "toor"\nallow_root = true'))
    assert check_on_host(allowed, "policy.toml", ()) == allowed
    unknown = Policy.from_toml_text(role('run_as = "nosuchuser"'))
    assert check_on_host(unknown, "policy.toml", ()) == unknown


# Carried to the launch


def test_job_sandbox_refuses_what_the_helper_would() -> None:
    for path in ("relative", "/a/../b", "/", "/tmp/x", "/run"):
        with pytest.raises(ValueError):
            JobSandbox(writable=(path,))
    with pytest.raises(ValueError):
        JobSandbox(tmpfs_size=0)


def record() -> Job:
    return Job(
        id="a" * 32,
        owner="alice",
        spec=JobSpec(command="true"),
        status=JobStatus.RUNNING,
        created_at="2026-11-22T10:00:00.000Z",
    )


def helper_argv(sandbox: JobSandbox | None) -> list[str]:
    """The helper's orders for a job in ``sandbox``, of a server whose
    tmpfs size is 8M and which has a system call filter."""
    planner = LaunchPlanner(job_path="/bin", isolate=True, tmpfs_size=8 * M)
    nobody = JobUser(None, None)
    confinement = Confinement.none(Clock(), "off")
    request = planner.plan(record(), nobody, confinement, sandbox).request
    launcher = HelperLauncher(None, Path("/helper"), syscall_filter=object())  # type: ignore[arg-type]
    return launcher.helper_argv(request)


def option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == name]


def test_the_usual_sandbox_is_todays() -> None:
    for argv in (helper_argv(None), helper_argv(JobSandbox())):
        assert option(argv, "--tmpfs-size") == [str(8 * M)]
        assert option(argv, "--writable") == []
        assert "--seccomp-fd" in argv


def test_a_jobs_sandbox_reaches_the_helpers_orders() -> None:
    argv = helper_argv(
        JobSandbox(writable=("/srv/a", "/srv/b"), seccomp=False, tmpfs_size=2 * M)
    )
    assert option(argv, "--tmpfs-size") == [str(2 * M)]
    assert option(argv, "--writable") == ["/srv/a", "/srv/b"]
    assert "--seccomp-fd" not in argv
    assert str(DEFAULT_TMPFS_SIZE) not in argv


def test_the_api_starts_a_job_in_its_roles_sandbox() -> None:
    policy = role(
        f'run_as = "nobody"\nwritable = ["{os.sep}srv"]\nseccomp = "off"\n'
        'tmpfs = "32M"\n'
    )
    served = serve(policy=policy)
    response = served.client.request("POST", "/v1/jobs", {"command": "true"})
    assert response.status == 201
    (started,) = served.jobs.started
    assert started.sandbox == JobSandbox(("/srv",), seccomp=False, tmpfs_size=32 * M)
    assert "writable" not in response.json() and "sandbox" not in response.json()
