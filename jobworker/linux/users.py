"""
Who a job runs as: a host user looked up by name, or a uid of the job's own
(``jobworker.linux.uids``) with the entry its view shows for it.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from typing import NamedTuple


class User(NamedTuple):
    """Who a job runs as, in the ids the helper takes."""

    uid: int
    gid: int
    groups: tuple[int, ...]


class UnknownUser(LookupError):
    """The user a job should run as does not exist on this host."""


def resolve_user(name: str) -> User:
    """
    The ids of user ``name``: its uid, primary gid and every group it is a
    member of. Looked up here, in the server, never in the job's process
    (which runs no NSS code between fork and exec); the lookup may block on
    a directory service, so do it once, at start-up, not per job.
    """
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise UnknownUser(f"no such user: {name!r}") from None
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    return User(entry.pw_uid, entry.pw_gid, tuple(dict.fromkeys(groups)))


@dataclass(frozen=True)
class PasswdEntry:
    """
    The name a uid of the job's own has in the job's view: the launch helper
    adds it, with the uid and gid it runs the command as, to the host's
    ``/etc/passwd`` and ``/etc/group`` there, so that ``id``, ``whoami``,
    git and ssh find a user.
    """

    name: str = "job"
    home: str = "/tmp"
    shell: str = "/bin/sh"

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in ":\n\0/"):
            raise ValueError(f"not a user name: {self.name!r}")
        for path in (self.home, self.shell):
            if not path.startswith("/") or any(c in path for c in ":\n\0"):
                raise ValueError(f"not an absolute path for passwd: {path!r}")

    def option(self) -> str:
        """The helper's ``--passwd-entry`` value."""
        return f"{self.name}:{self.home}:{self.shell}"
