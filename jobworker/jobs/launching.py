"""
What a new job's launch needs, put together from its record and the
server's settings: the user it runs as, its cgroup, and the helper's orders
(``LaunchRequest``). Nothing here spawns; ``RunningJob.launch`` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from jobworker.jobs.confinement import Confinement, JobConfinement
from jobworker.jobs.errors import OUT_OF_DESCRIPTORS, OutOfDescriptors
from jobworker.jobs.record import Job
from jobworker.jobs.sandbox import JobSandbox
from jobworker.linux.cgroups import CgroupError
from jobworker.linux.launcher import (
    DEFAULT_TMPFS_INODES,
    DEFAULT_TMPFS_SIZE,
    LaunchRequest,
    User,
    resolve_user,
)


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
    ) -> None:
        self._job_path = job_path
        self._isolate = isolate
        # An isolated job's view of the filesystem (see LaunchRequest).
        self._masks = masks
        self._tmpfs = (tmpfs_size, tmpfs_inodes)
        self._users: dict[str, User] = {}

    def prepare_users(self, names: Iterable[str]) -> None:
        """
        Look up the users jobs may run as, once, before serving: the lookup
        may block (NSS, directory services) and an unknown user is a
        configuration error to report at start-up. Raises ``UnknownUser``.
        """
        for name in names:
            self._users[name] = resolve_user(name)

    def _user(self, name: str) -> User:
        if name not in self._users:
            self._users[name] = resolve_user(name)
        return self._users[name]

    def plan(
        self,
        record: Job,
        confinement: Confinement,
        sandbox: JobSandbox | None = None,
    ) -> LaunchPlan:
        """
        The job's cgroup (made here) and the helper's orders, with its
        ``sandbox`` where it differs from the server's usual one. Raises
        ``OutOfDescriptors`` when the cgroup's files cannot be opened for
        lack of descriptors: the server is busy, not the job wrong.
        """
        sandbox = sandbox or JobSandbox()
        # The user first: a lookup that fails then leaves no cgroup behind.
        user = None if record.run_as is None else self._user(record.run_as)
        try:
            cgroup = confinement.create(record.id, record.spec.limits)
        except CgroupError as e:
            if e.errno in OUT_OF_DESCRIPTORS:
                raise OutOfDescriptors(e.errno, str(e)) from e
            request = self._request(record, user, (), sandbox)
            return LaunchPlan(request, error=f"cgroup: {e}")
        procs = () if cgroup is None else cgroup.procs_paths()
        return LaunchPlan(self._request(record, user, procs, sandbox), cgroup)

    def _request(
        self,
        record: Job,
        user: User | None,
        cgroup_procs: tuple[str, ...],
        sandbox: JobSandbox,
    ) -> LaunchRequest:
        spec = record.spec
        return LaunchRequest(
            executable=spec.command,  # a bare name: the helper looks it up
            cgroup_procs=cgroup_procs,
            argv=(spec.command, *spec.args),
            env={"PATH": self._job_path, **spec.env},
            cwd=spec.cwd,
            isolate=self._isolate,
            network=spec.isolation.network,
            uid=None if user is None else user.uid,
            gid=None if user is None else user.gid,
            groups=() if user is None else user.groups,
            seccomp=sandbox.seccomp,
            tmpfs_size=sandbox.tmpfs_size or self._tmpfs[0],
            tmpfs_inodes=self._tmpfs[1],
            masks=self._masks,
            writable=sandbox.writable,
        )
