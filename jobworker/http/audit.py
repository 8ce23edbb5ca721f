"""
The audit log: one structured line per request, allowed or denied, in the
``jobworker.audit`` namespace: who (the certificate's CN), what (the action),
on which job, the policy's answer and the status sent.

Requests the connection refuses before any exists (a header deadline, too
many or too large headers, a line Twisted cannot parse) get a line too, with
the action ``-``: nothing was asked, but someone was refused.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from jobworker.auth.policy import Identity

audit_log = Logger(namespace="jobworker.audit")
LINE = (
    "audit identity={identity} action={action} job={job_id}"
    " allowed={allowed} status={status}"
)


class Audit:
    """The audit line of one request, filled in as it is handled."""

    def __init__(
        self, identity: Identity | None, action: str, job_id: str | None
    ) -> None:
        self.identity = identity
        self.action = action
        # The job acted on; for a start, the new job once it exists.
        self.job_id = job_id
        # The policy's answer, once asked: None for a request refused
        # before it was (malformed, unknown route, wrong method).
        self.allowed: bool | None = None if identity is not None else False

    def finished(self, result: object, request: IRequest) -> None:
        audit_log.info(
            LINE,
            identity=self.identity.name if self.identity else None,
            action=self.action,
            job_id=self.job_id,
            allowed=self.allowed,
            status=request.code,  # type: ignore[attr-defined]
            completed=not isinstance(result, Failure),
        )


def audit_refusal(identity: str | None, status: int, **details: Any) -> None:
    """The line of a request refused by the connection, before it existed."""
    audit_log.info(
        LINE,
        identity=identity,
        action="-",
        job_id=None,
        allowed=None,
        status=status,
        completed=True,
        **details,
    )
