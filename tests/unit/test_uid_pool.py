"""
Uids of a job's own: the range and its refusals, the host-wide reservation
by lock files (in a temporary directory), exhaustion, the host's ids skipped,
release; and who the launch planner says a job runs as.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from jobworker.auth import Policy
from jobworker.http.errors import as_http_error
from jobworker.jobs.confinement import Confinement
from jobworker.jobs.errors import OutOfUids
from jobworker.jobs.launching import JobUser, LaunchPlanner
from jobworker.jobs.record import Job
from jobworker.jobs.spec import JobSpec
from jobworker.linux.launcher import HelperLauncher, LaunchRequest
from jobworker.linux.uids import (
    InvalidUidRange,
    NoFreeUid,
    UidPool,
    UidRange,
    UidReservation,
    UnsafeUidDirectory,
)
from jobworker.tap import Options, job_uid_range
from jobworker.wire import ErrorCode, JobStatus

FIRST = 0x70000000


def locked_elsewhere(path: Path) -> bool:
    """Whether another open file description holds ``path``'s lock."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        assert e.errno == errno.EWOULDBLOCK
        return True
    finally:
        os.close(fd)
    return False


@pytest.fixture
def no_host_ids(tmp_path: Path) -> tuple[Path, ...]:
    files = (tmp_path / "passwd", tmp_path / "group")
    for path in files:
        path.write_text("root:x:0:0:root:/root:/bin/sh\n")
    return files


@pytest.fixture
def pool(tmp_path: Path, no_host_ids: tuple[Path, ...]) -> Iterator[UidPool]:
    yield UidPool(UidRange(FIRST, FIRST + 3), tmp_path / "uids", no_host_ids)


def drain(pool: UidPool) -> list[UidReservation]:
    taken = []
    while True:
        try:
            taken.append(pool.reserve())
        except NoFreeUid:
            return taken


# The range


def test_the_default_range_is_systemds_unused_one() -> None:
    uids = UidRange()
    assert (uids.first, uids.last, len(uids)) == (0x70000000, 0x7000FFFF, 65536)
    assert str(uids) == "1879048192-1879113727"
    assert UidRange.parse(str(uids)) == uids
    # Above systemd's container range, below its own end and (uid_t)-1.
    assert uids.first > 1879048191 and uids.last < 2**31


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0-70000", "overlaps 0-999"),
        ("500-2000", "overlaps 0-999"),
        ("60000-70000", "overlaps 65534-65535"),
        ("65535-65535", "overlaps 65534-65535"),
        ("70000-69999", "FIRST <= LAST"),
        ("70000-4294967295", "FIRST <= LAST <= 4294967294"),
        ("70000", "must be FIRST-LAST"),
        ("a-b", "must be FIRST-LAST"),
        ("-5-10", "must be FIRST-LAST"),
    ],
)
def test_a_bad_range_is_refused_saying_why(text: str, problem: str) -> None:
    with pytest.raises(InvalidUidRange) as caught:
        UidRange.parse(text)
    assert problem in str(caught.value)


def test_the_option_names_itself_in_its_error() -> None:
    options = Options()
    options.parseOptions(
        ["--cert", "c", "--key", "k", "--ca", "a", "--job-uid-range", "0-100"]
    )
    with pytest.raises(InvalidUidRange) as caught:
        job_uid_range(options)
    message = str(caught.value)
    assert message.startswith("--job-uid-range 0-100: overlaps 0-999")
    assert "\n" not in message
    default = Options()
    default.parseOptions(["--cert", "c", "--key", "k", "--ca", "a"])
    assert job_uid_range(default) == UidRange()


# Reservations


def test_a_reservation_holds_the_uids_lock(pool: UidPool) -> None:
    held = pool.reserve()
    assert held.uid in pool.uids and held.gid == held.uid
    assert held.path == pool.directory / str(held.uid)
    assert locked_elsewhere(held.path)
    held.release()
    assert not held.path.exists()


def test_the_directory_is_made_for_root_alone(pool: UidPool) -> None:
    pool.reserve().release()
    assert os.stat(pool.directory).st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", [0o755, 0o1777, 0o770])
def test_a_directory_others_may_use_is_refused(
    tmp_path: Path, no_host_ids: tuple[Path, ...], mode: int
) -> None:
    directory = tmp_path / "uids"
    directory.mkdir()
    directory.chmod(mode)
    pool = UidPool(UidRange(FIRST, FIRST), directory, no_host_ids)
    with pytest.raises(UnsafeUidDirectory, match="mode 0700"):
        pool.reserve()


def test_a_symlink_for_a_directory_is_refused(
    tmp_path: Path, no_host_ids: tuple[Path, ...]
) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "uids").symlink_to(real)
    with pytest.raises(UnsafeUidDirectory):
        UidPool(UidRange(FIRST, FIRST), tmp_path / "uids", no_host_ids).prepare()


def test_every_uid_once_then_exhausted(pool: UidPool) -> None:
    """Four uids, four jobs; a fifth is refused, one ended lets one more in."""
    taken = drain(pool)
    assert sorted(r.uid for r in taken) == list(range(FIRST, FIRST + 4))
    with pytest.raises(NoFreeUid, match=f"all 4 uids of the job uid range {FIRST}-"):
        pool.reserve()
    taken[2].release()
    again = pool.reserve()
    assert again.uid == taken[2].uid
    for reservation in [*taken, again]:
        reservation.release()


def test_uids_are_not_given_again_at_once(pool: UidPool) -> None:
    """Released at once each time, still the next start gets the next uid."""
    seen = []
    for _ in range(4):
        reservation = pool.reserve()
        seen.append(reservation.uid)
        reservation.release()
    assert sorted(seen) == list(range(FIRST, FIRST + 4))


def test_the_hosts_ids_are_skipped(tmp_path: Path) -> None:
    """A uid /etc/passwd names, or a gid /etc/group names, is never a job's;
    a change to the files is seen at the next reservation."""
    passwd, group = tmp_path / "passwd", tmp_path / "group"
    passwd.write_text(f"svc:x:{FIRST}:100::/:/bin/sh\nbroken line\n")
    group.write_text(f"svc:x:{FIRST + 1}:\n")
    pool = UidPool(UidRange(FIRST, FIRST + 3), tmp_path / "uids", (passwd, group))
    assert sorted(r.uid for r in drain(pool)) == [FIRST + 2, FIRST + 3]
    other = UidPool(UidRange(FIRST, FIRST + 3), tmp_path / "more", (passwd, group))
    passwd.write_text("root:x:0:0::/:/bin/sh\n")
    group.write_text(f"one:x:{FIRST + 3}:\ntwo:x:{FIRST + 2}:\n")
    assert sorted(r.uid for r in drain(other)) == [FIRST, FIRST + 1]


def test_another_server_never_gets_a_uid_in_use(
    tmp_path: Path, no_host_ids: tuple[Path, ...]
) -> None:
    """Two pools on one directory, as two servers on one host: disjoint."""
    uids = UidRange(FIRST, FIRST + 5)
    one = UidPool(uids, tmp_path / "uids", no_host_ids)
    two = UidPool(uids, tmp_path / "uids", no_host_ids)
    mine = [one.reserve() for _ in range(3)]
    theirs = drain(two)
    assert len(theirs) == 3
    assert not {r.uid for r in mine} & {r.uid for r in theirs}


def test_the_helpers_copy_keeps_the_uid_after_the_servers_is_closed(
    pool: UidPool,
) -> None:
    """The lock is the open file description's: a copy the job's init
    inherited holds it after the server's is closed (or the server is gone),
    and the uid is free once that copy is closed too."""
    held = pool.reserve()
    assert held.fd is not None
    inherited = os.dup(held.fd)
    held.close()
    assert held.fd is None and locked_elsewhere(held.path)
    with pytest.raises(NoFreeUid):
        for _ in range(4):  # every other uid, then none
            assert pool.reserve().uid != held.uid
    held.release()  # the job has "ended" while its init lives: nothing lost
    assert held.path.exists() and locked_elsewhere(held.path)
    os.close(inherited)
    assert not locked_elsewhere(held.path)


def test_release_leaves_a_file_someone_else_holds(pool: UidPool) -> None:
    held = pool.reserve()
    held.close()
    other = os.open(held.path, os.O_RDWR)  # another server's job, since
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.release()
    assert held.path.exists()  # not ours to remove: another holds it
    os.close(other)
    held.release()  # twice is harmless
    assert not held.path.exists()


def test_a_lock_file_removed_meanwhile_is_not_trusted(pool: UidPool) -> None:
    """A file its last holder removed (after another opened it) does not
    count as the uid's lock: the reservation takes the one there now."""
    held = pool.reserve()
    stale = os.open(held.path, os.O_RDWR)
    held.release()  # removes it: stale now names a removed file
    assert os.fstat(stale).st_nlink == 0
    os.close(stale)
    again = [pool.reserve() for _ in range(4)]
    assert all(r.path.exists() and os.fstat(r.fd or -1).st_nlink == 1 for r in again)


# Who a job runs as


def job() -> Job:
    return Job(
        id="a" * 32,
        owner="alice",
        spec=JobSpec(command="id"),
        status=JobStatus.RUNNING,
        created_at="2026-11-22T10:00:00.000Z",
    )


def as_root(monkeypatch: pytest.MonkeyPatch, uid: int = 0) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: uid)


def test_an_isolated_job_with_no_user_named_gets_a_uid_of_its_own(
    pool: UidPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_root(monkeypatch)
    planner = LaunchPlanner("/bin", isolate=True, uids=pool)
    user = planner.user(None)
    assert user.reservation is not None and user.run_as is None
    assert (user.uid, user.gid) == (user.reservation.uid,) * 2
    request = planner.plan(job(), user, Confinement.none(Clock(), "off")).request
    assert (request.uid, request.gid, request.groups) == (user.uid, user.uid, ())
    assert request.hold_fd == user.reservation.fd
    assert request.passwd_entry is not None
    assert request.passwd_entry.option() == "job:/tmp:/bin/sh"
    argv = HelperLauncher(Clock(), Path("/helper")).helper_argv(request)  # type: ignore[arg-type]
    assert argv[argv.index("--passwd-entry") + 1] == "job:/tmp:/bin/sh"
    assert argv[argv.index("--hold-fd") + 1] == "5"
    user.release()


def test_exhaustion_is_a_refusal_the_api_answers_503(
    tmp_path: Path, no_host_ids: tuple[Path, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    as_root(monkeypatch)
    pool = UidPool(UidRange(FIRST, FIRST), tmp_path / "uids", no_host_ids)
    planner = LaunchPlanner("/bin", isolate=True, uids=pool)
    first = planner.user(None)
    with pytest.raises(OutOfUids) as caught:
        planner.user(None)
    answer = as_http_error(caught.value)
    assert answer is not None
    assert (answer.status, answer.code) == (503, ErrorCode.OUT_OF_RESOURCES)
    assert answer.headers == {b"Retry-After": b"1"}
    first.release()
    planner.user(None).release()


def test_a_named_user_and_the_servers_without_isolation(
    pool: UidPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A role's user is that user; no user named and no isolation (no view
    to name a new uid in) is nobody; a server that is not root runs every
    job as itself. None of these reserves a uid."""
    as_root(monkeypatch)
    isolating = LaunchPlanner("/bin", isolate=True, uids=pool)
    unisolated = LaunchPlanner("/bin", isolate=False, uids=pool)
    nobody = isolating.user("nobody")
    assert (nobody.run_as, nobody.uid, nobody.reservation) == ("nobody", 65534, None)
    fallback = unisolated.user(None)
    assert (fallback.run_as, fallback.uid, fallback.reservation) == (
        "nobody",
        65534,
        None,
    )
    as_root(monkeypatch, 4242)
    itself = unisolated.user("nobody")
    assert itself == JobUser(None, None)
    assert (itself.uid, itself.gid) == (os.getuid(), os.getgid())
    assert not pool.directory.exists() or not list(pool.directory.iterdir())


def test_a_passwd_entry_needs_a_uid_and_isolation() -> None:
    from jobworker.linux.users import PasswdEntry

    with pytest.raises(ValueError, match="needs a uid and isolation"):
        LaunchRequest("/bin/id", ("id",), isolate=True, passwd_entry=PasswdEntry())
    with pytest.raises(ValueError, match="only an isolated job's init"):
        LaunchRequest("/bin/id", ("id",), hold_fd=5)
    for bad in ({"name": "a:b"}, {"home": "tmp"}, {"shell": "/bin/sh\n"}):
        with pytest.raises(ValueError):
            PasswdEntry(**bad)


def test_a_role_without_run_as_names_no_user() -> None:
    policy = Policy.from_toml_text('[roles.r]\ngrants = { start = "own" }\n')
    assert policy.roles["r"].run_as is None
    named = Policy.from_toml_text('[roles.r]\nrun_as = "nobody"\n')
    assert named.roles["r"].run_as == "nobody"


def test_start_up_removes_the_free_files_a_crashed_server_left(
    tmp_path: Path, no_host_ids: tuple[Path, ...]
) -> None:
    """A free lock file is a dead server's leftover: removed. One held (a
    job of another server, or an orphan of a dead one) stays, held."""
    directory = tmp_path / "uids"
    directory.mkdir(mode=0o700)
    (directory / str(FIRST)).touch()
    held = os.open(directory / str(FIRST + 1), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    UidPool(UidRange(FIRST, FIRST + 3), directory, no_host_ids).prepare()
    assert sorted(os.listdir(directory)) == [str(FIRST + 1)]
    assert locked_elsewhere(directory / str(FIRST + 1))
    os.close(held)
