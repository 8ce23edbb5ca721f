"""
The root launch helper takes its orders from the server alone.

The helper runs as root until it drops to the job's user, so nothing of the
job may reach it before then: it is spawned with an empty environment, and
the job's environment comes as data in the go-ahead, for the command's
execve alone. A bare command name is looked up by the helper, after the
drop, on the job's PATH. The attacks: a shared object whose constructor
reports its euid, as ``LD_PRELOAD`` and ``LD_AUDIT``, and the job's own
output file as ``LD_PRELOAD``.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor

from jobworker.jobs.record import Job
from jobworker.jobs.service import JobManager, Settings
from jobworker.jobs.spec import parse_job_spec
from jobworker.linux import launcher
from jobworker.linux.build import build, helper_path
from jobworker.linux.launcher import LaunchRequest, resolve_user
from jobworker.wire import JobStatus, Stream
from tests.host_dirs import visible_tempdir

reactor: Any = global_reactor
NOBODY = resolve_user("nobody").uid

# Says, on stderr, under which euid it was loaded: as a preloaded library
# (its constructor) and as an auditing one (la_version, then its constructor).
PROBE_SOURCE = r"""
#include <stdio.h>
#include <unistd.h>

static void say(const char *how)
{
    char line[64];
    int n = snprintf(line, sizeof line, "%s euid=%d\n", how, (int)geteuid());
    if (write(2, line, (size_t)n) < 0) {
    }
}

__attribute__((constructor)) static void loaded(void) { say("loaded"); }

unsigned int la_version(unsigned int version)
{
    say("audit");
    return version;
}
"""

ISOLATED = pytest.param(True, id="isolated")
PLAIN = pytest.param(False, id="plain")


@pytest.fixture(scope="module", autouse=True)
def helper() -> None:
    """The helper as its source is now, not as it was last built."""
    build()


@pytest.fixture(scope="module")
def probe() -> Iterator[Path]:
    """The probe library, in a directory every user (and job) may read."""
    directory = visible_tempdir("jobworker-probe-")
    (directory / "probe.c").write_text(PROBE_SOURCE)
    library = directory / "probe.so"
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(library), str(directory / "probe.c")],
        check=True,
    )
    library.chmod(0o755)
    yield library
    shutil.rmtree(directory)


def go_ahead(**env: str) -> bytes:
    return LaunchRequest("/bin/true", ("true",), env=env).go_ahead


def run_helper(
    message: bytes,
    *command: str,
    env: dict[str, str] | None = None,
    options: tuple[str, ...] = (),
) -> tuple[str, bytes]:
    """Run the helper itself with ``message`` on its stdin: status, stdout."""
    status_read, status_write = os.pipe()
    helper = [str(helper_path()), "--status-fd", str(status_write), *options]
    try:
        result = subprocess.run(
            [*helper, "--", *command],
            input=message,
            capture_output=True,
            pass_fds=(status_write,),
            env=env or {},
            timeout=30,
        )
    finally:
        os.close(status_write)
    with os.fdopen(status_read, "rb") as status:
        return status.read().decode(), result.stdout


def executable(path: Path, script: str) -> Path:
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


# The go-ahead


def test_go_ahead_carries_the_environment() -> None:
    """Each variable ends with a NUL, and the message with one more."""
    assert go_ahead(A="1", EMPTY="", B="x=y") == b"A=1\0EMPTY=\0B=x=y\0\0"
    assert go_ahead() == b"\0"


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"": "x"}, "not an environment variable"),
        ({"A=B": "x"}, "not an environment variable"),
        ({"A\0": "x"}, "not an environment variable"),
        ({"A": "x\0y"}, "not an environment variable"),
        ({"A": "\ud800"}, "surrogates not allowed"),
    ],
)
def test_launch_request_refuses_what_cannot_be_sent(
    env: dict[str, str], error: str
) -> None:
    """A name that is empty or holds '=' or NUL, a NUL in a value, or a string
    that is no Unicode, is refused before anything is spawned."""
    with pytest.raises(ValueError, match=error):
        LaunchRequest("/bin/true", ("true",), env=env)


def test_command_gets_the_go_ahead_environment_only() -> None:
    """The command's environment is the go-ahead's, not the helper's own."""
    status, out = run_helper(
        go_ahead(A="1", EMPTY="", B="x=y z"),
        *("/usr/bin/env", "env"),
        env={"HELPERS_OWN": "1"},
    )
    assert (status, out.decode().splitlines()) == ("", ["A=1", "EMPTY=", "B=x=y z"])


@pytest.mark.parametrize(
    ("message", "number"),
    [
        (b"", errno.EPIPE),  # the server died before its go-ahead
        (b"A=1\0", errno.EPIPE),  # ... or while sending it
        (b"A=1", errno.EPIPE),
        (b"NOEQUALS\0\0", errno.EINVAL),
        (b"=x\0\0", errno.EINVAL),
        (b"A=1\0\0more", errno.EINVAL),
    ],
)
def test_no_whole_go_ahead_runs_nothing(message: bytes, number: int) -> None:
    """A go-ahead cut short or malformed is an error, and the command never runs."""
    status, out = run_helper(message, "/bin/sh", "sh", "-c", "echo ran")
    assert (status, out) == (f"error go {number}\n", b"")


# Finding a bare command name


def test_bare_name_is_looked_up_on_the_jobs_path(tmp_path: Path) -> None:
    """A bare name is found on the job's PATH, never on the helper's own."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    executable(ours / "tool", "echo ours")
    executable(theirs / "tool", "echo theirs")
    path = f"{tmp_path}/missing:{theirs / 'tool'}:{theirs}:{ours}"
    status, out = run_helper(
        go_ahead(PATH=path), "tool", "tool", env={"PATH": str(ours)}
    )
    assert (status, out) == ("", b"theirs\n")


def test_bare_name_without_path_uses_the_default() -> None:
    """A job environment without PATH finds commands in the usual places."""
    status, out = run_helper(go_ahead(), "sh", "sh", "-c", "echo found")
    assert (status, out) == ("", b"found\n")


def test_helpers_default_path_is_the_servers() -> None:
    """The helper's PATH for an environment without one is the server's
    default for jobs: one default, whoever starts the helper."""
    source = (Path(launcher.__file__).parent / "exec.c").read_text()
    assert f'#define DEFAULT_PATH "{launcher.DEFAULT_JOB_PATH}"' in source


@pytest.mark.parametrize(
    ("mode", "number"), [(None, errno.ENOENT), (0o644, errno.EACCES)]
)
def test_bare_name_not_found_or_not_executable(
    tmp_path: Path, mode: int | None, number: int
) -> None:
    """Not on the PATH is ENOENT; there but not executable is EACCES."""
    if mode is not None:
        (tmp_path / "tool").write_text("#!/bin/sh\necho ran\n")
        (tmp_path / "tool").chmod(mode)
    status, out = run_helper(go_ahead(PATH=f"/nonexistent:{tmp_path}"), "tool", "tool")
    assert (status, out) == (f"error exec {number}\n", b"")


@pytest.mark.root
def test_bare_name_is_looked_up_as_the_jobs_user() -> None:
    """The lookup runs as the job's user: a directory on its PATH that only
    root may search is passed over, as the job itself would."""
    top = Path(tempfile.mkdtemp(prefix="jobworker-path-"))
    try:
        top.chmod(0o755)
        root_only, usable = top / "root-only", top / "usable"
        root_only.mkdir(mode=0o700)
        usable.mkdir(mode=0o755)
        executable(root_only / "tool", "echo root")
        executable(usable / "tool", "echo usable")
        status, out = run_helper(
            go_ahead(PATH=f"{root_only}:{usable}"),
            *("tool", "tool"),
            options=("--uid", str(NOBODY), "--gid", str(NOBODY)),
        )
        assert (status, out) == ("", b"usable\n")
    finally:
        shutil.rmtree(top)


# Attacks, as root: the helper is root until the drop


@pytest.fixture
def make_manager(tmp_path: Path, managers: list[JobManager]) -> Any:
    """Managers isolating jobs or not, shut down at the end."""

    def make(isolate: bool) -> JobManager:
        data = tmp_path / f"data{len(managers)}"
        manager = JobManager(
            reactor,
            data,
            Settings(isolate=isolate, allow_unisolated_root=True, default_grace=2),
        )
        manager.open()
        managers.append(manager)
        return manager

    return make


async def run_as_nobody(
    manager: JobManager, command: str, *args: str, **fields: Any
) -> tuple[Job, bytes, bytes]:
    """Run a job as nobody to its end: its record, stdout and stderr."""
    spec = parse_job_spec({"command": command, "args": list(args), **fields})
    job = await manager.start(spec, "mallory", run_as="nobody")
    ended = await manager.wait(job.id)
    out = await manager.read_output(job.id, Stream.STDOUT, limit=1 << 24)
    err = await manager.read_output(job.id, Stream.STDERR, limit=1 << 24)
    return ended, out.data, err.data


@pytest.mark.root
@pytest.mark.parametrize("isolate", [ISOLATED, PLAIN])
@pytest.mark.parametrize(
    ("variable", "hook"), [("LD_PRELOAD", "loaded"), ("LD_AUDIT", "audit")]
)
@pytest_twisted.ensureDeferred
async def test_loader_variables_never_run_as_root(
    make_manager: Any, probe: Path, isolate: bool, variable: str, hook: str
) -> None:
    """A job's LD_PRELOAD or LD_AUDIT library is loaded by its command, as the
    job's user, and nowhere else."""
    manager = make_manager(isolate)
    ended, _, err = await run_as_nobody(
        manager, "/bin/true", env={variable: str(probe)}
    )
    assert (ended.status, ended.exit_code) == (JobStatus.EXITED, 0)
    lines = [line.split() for line in err.decode().splitlines()]
    assert hook in {how for how, _ in lines}
    assert {euid for _, euid in lines} == {f"euid={NOBODY}"}


@pytest.mark.root
@pytest.mark.parametrize("isolate", [ISOLATED, PLAIN])
@pytest_twisted.ensureDeferred
async def test_job_output_as_ld_preload_is_never_loaded(
    make_manager: Any, probe: Path, isolate: bool
) -> None:
    """A library a job wrote as its output, which only root may read, is not
    loaded by anyone when a later job names it in LD_PRELOAD."""
    manager = make_manager(isolate)
    writer, library, _ = await run_as_nobody(manager, "/bin/cat", str(probe))
    assert library == probe.read_bytes()
    stdout = manager.data_dir / "jobs" / writer.id / "stdout"
    ended, _, err = await run_as_nobody(
        manager, "/bin/true", env={"LD_PRELOAD": str(stdout)}
    )
    assert (ended.status, ended.exit_code) == (JobStatus.EXITED, 0)
    assert b"euid=" not in err  # the loader says it cannot open it; no more
    assert b"cannot be preloaded" in err


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_helper_runs_with_an_empty_environment(make_manager: Any) -> None:
    """An isolated job's init, root for the job's life, has no environment;
    the command has the job's."""
    manager = make_manager(True)
    spec = parse_job_spec(
        {"command": "sleep", "args": ["1000"], "env": {"GCONV_PATH": "/tmp"}}
    )
    job = await manager.start(spec, "mallory", run_as="nobody")
    assert job.pid is not None
    init = psutil.Process(job.pid)
    (command,) = init.children()
    assert Path(f"/proc/{init.pid}/environ").read_bytes() == b""
    assert command.environ() == {
        "PATH": manager.settings.job_path,
        "GCONV_PATH": "/tmp",
    }
    manager.stop(job.id)
    await manager.wait(job.id)


@pytest.mark.root
@pytest.mark.parametrize("isolate", [ISOLATED, PLAIN])
@pytest_twisted.ensureDeferred
async def test_bare_python3_runs(
    make_manager: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolate: bool
) -> None:
    """``python3`` is found on the job's PATH, as the job's user: a python3
    first on the server's PATH, which the job may not run, is not used."""
    servers_own = tmp_path / "servers-bin"
    servers_own.mkdir(mode=0o700)
    executable(servers_own / "python3", "echo the server's")
    monkeypatch.setenv("PATH", f"{servers_own}:{os.environ['PATH']}")
    manager = make_manager(isolate)
    script = "import os, sys; print(os.geteuid(), sys.executable)"
    ended, out, err = await run_as_nobody(manager, "python3", "-c", script)
    assert (ended.status, ended.exit_code, err) == (JobStatus.EXITED, 0, b"")
    assert out.decode().split() == [
        str(NOBODY),
        shutil.which("python3", path=manager.settings.job_path),
    ]


@pytest.mark.root
@pytest_twisted.ensureDeferred
async def test_bare_name_not_on_the_jobs_path_fails_to_start(
    make_manager: Any,
) -> None:
    """A bare name not on the job's own PATH is a failed start naming it."""
    manager = make_manager(True)
    ended, _, _ = await run_as_nobody(
        manager, "python3", "-c", "pass", env={"PATH": "/nonexistent"}
    )
    assert (ended.status, ended.error) == (
        JobStatus.FAILED_TO_START,
        "exec python3: No such file or directory (ENOENT)",
    )
