"""
What a new job's launch needs, put together from its record and the
server's settings: the user it runs as, its cgroup, and the helper's orders
(``LaunchRequest``). Nothing here spawns; ``RunningJob.launch`` does.

Who a job runs as (``LaunchPlanner.user``): only a root server changes
users; one that is not runs every job as itself. A root server runs a job
as its role's ``run_as`` user; a role that names none gets, on an isolating
server, a uid and gid of the job's own (``jobworker.linux.uids``), named
``job`` in its view; on a server that does not isolate (it has no view to
name a new uid in), ``nobody``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

from jobworker.jobs.confinement import Confinement, JobConfinement
from jobworker.jobs.errors import OUT_OF_DESCRIPTORS, OutOfDescriptors, OutOfUids
from jobworker.jobs.record import Job
from jobworker.jobs.sandbox import JobSandbox
from jobworker.linux.cgroups import CgroupError
from jobworker.linux.launcher import (
    DEFAULT_TMPFS_INODES,
    DEFAULT_TMPFS_SIZE,
    LaunchRequest,
)
from jobworker.linux.uids import NoFreeUid, UidPool, UidReservation
from jobworker.linux.users import PasswdEntry, UnknownUser, User, resolve_user

# Who a root server that does not isolate runs a job whose role names no one.
UNISOLATED_USER = "nobody"


@dataclass(frozen=True)
class JobUser:
    """Who a new job runs as, decided before its record is written."""

    run_as: str | None  # the user named, as the record says
    ids: User | None  # what the helper switches to; None: the server's own
    # A uid of the job's own: held until the job has ended (``release``).
    reservation: UidReservation | None = None

    @property
    def uid(self) -> int:
        return os.getuid() if self.ids is None else self.ids.uid

    @property
    def gid(self) -> int:
        return os.getgid() if self.ids is None else self.ids.gid

    def release(self) -> None:
        if self.reservation is not None:
            self.reservation.release()


@dataclass(frozen=True)
class LaunchPlan:
    """A job's launch, ready to go; or why it cannot start (``error``)."""

    request: LaunchRequest
    confinement: JobConfinement | None = None
    error: str | None = None


class LaunchPlanner:
    """Turns new jobs' records into launch plans."""

    def __init__(
        self,
        job_path: str,
        isolate: bool,
        masks: tuple[str, ...] = (),
        tmpfs_size: int = DEFAULT_TMPFS_SIZE,
        tmpfs_inodes: int = DEFAULT_TMPFS_INODES,
        uids: UidPool | None = None,
    ) -> None:
        self._job_path = job_path
        self._isolate = isolate
        # An isolated job's view of the filesystem (see LaunchRequest).
        self._masks = masks
        self._tmpfs = (tmpfs_size, tmpfs_inodes)
        self._users: dict[str, User] = {}
        self._uids = uids or UidPool()

    def prepare_users(self, names: Iterable[str]) -> None:
        """
        Look up the users jobs may run as, once, before serving: the lookup
        may block (NSS, directory services) and an unknown user is a
        configuration error to report at start-up. Raises ``UnknownUser``.
        """
        for name in names:
            self._users[name] = resolve_user(name)
        if self._isolate:  # and uids of the jobs' own: their lock directory
            self._uids.prepare()
        else:  # or nobody, for roles that name no one (if any does not)
            with contextlib.suppress(UnknownUser):
                self._user(UNISOLATED_USER)

    def _user(self, name: str) -> User:
        if name not in self._users:
            self._users[name] = resolve_user(name)
        return self._users[name]

    def user(self, run_as: str | None) -> JobUser:
        """
        Who a new job runs as, given its role's ``run_as`` (see the module's
        docstring). Raises ``OutOfUids`` when the job would get a uid of its
        own and none is free, ``UnknownUser`` for a user the host lacks.
        """
        if os.geteuid() != 0:
            return JobUser(None, None)
        if run_as is not None or not self._isolate:
            name = run_as or UNISOLATED_USER
            return JobUser(name, self._user(name))
        try:
            reservation = self._uids.reserve()
        except NoFreeUid as e:
            raise OutOfUids(str(e)) from None
        return JobUser(None, User(reservation.uid, reservation.gid, ()), reservation)

    def plan(
        self,
        record: Job,
        user: JobUser,
        confinement: Confinement,
        sandbox: JobSandbox | None = None,
    ) -> LaunchPlan:
        """
        The job's cgroup (made here) and the helper's orders, with its
        ``sandbox`` where it differs from the server's usual one. Raises
        ``OutOfDescriptors`` when the cgroup's files cannot be opened for
        lack of descriptors: the server is busy, not the job wrong (and the
        job's uid, if its own, is released).
        """
        sandbox = sandbox or JobSandbox()
        try:
            cgroup = confinement.create(record.id, record.spec.limits)
        except CgroupError as e:
            if e.errno in OUT_OF_DESCRIPTORS:
                user.release()
                raise OutOfDescriptors(e.errno, str(e)) from e
            request = self._request(record, user, (), sandbox)
            return LaunchPlan(request, error=f"cgroup: {e}")
        procs = () if cgroup is None else cgroup.procs_paths()
        return LaunchPlan(self._request(record, user, procs, sandbox), cgroup)

    def _request(
        self,
        record: Job,
        user: JobUser,
        cgroup_procs: tuple[str, ...],
        sandbox: JobSandbox,
    ) -> LaunchRequest:
        spec = record.spec
        ids, own = user.ids, user.reservation
        return LaunchRequest(
            executable=spec.command,  # a bare name: the helper looks it up
            cgroup_procs=cgroup_procs,
            argv=(spec.command, *spec.args),
            env={"PATH": self._job_path, **spec.env},
            cwd=spec.cwd,
            isolate=self._isolate,
            network=spec.isolation.network,
            uid=None if ids is None else ids.uid,
            gid=None if ids is None else ids.gid,
            groups=() if ids is None else ids.groups,
            passwd_entry=None if own is None else PasswdEntry(),
            hold_fd=None if own is None else own.fd,
            seccomp=sandbox.seccomp,
            tmpfs_size=sandbox.tmpfs_size or self._tmpfs[0],
            tmpfs_inodes=self._tmpfs[1],
            masks=self._masks,
            writable=sandbox.writable,
        )
