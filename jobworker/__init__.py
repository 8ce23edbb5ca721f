"""
jobworker: run Linux commands on a host from afar, with mutual TLS, cgroup
limits, live output, and records that survive the server.

The public surface, importable from here:

- the job library: ``JobManager`` (an ``IService``) and its ``Settings``;
  what a job is asked to be (``JobSpec``, ``Limits``, ``IOLimits``,
  ``Isolation``, ``InvalidSpec``); its record (``Job``, ``JobStatus``,
  ``Usage``); its output (``Stream``, ``OutputChunk``); and the errors it
  reports (``JobError`` and its kinds);
- the HTTP API's resource tree (``Api``) and the policy it asks (``Policy``);
- the client (``JobworkerClient``), which imports none of the server.

Names load on first use (PEP 562), so ``import jobworker.client`` pulls in
no server module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobworker.auth.policy import Policy
    from jobworker.client import JobworkerClient
    from jobworker.http.site import Api
    from jobworker.jobs.errors import (
        IsolationUnavailable,
        JobConflict,
        JobError,
        JobNotFound,
        ShuttingDown,
        StorageFull,
        TooManyJobs,
        UnisolatedAsRoot,
    )
    from jobworker.jobs.record import Job, Usage
    from jobworker.jobs.service import JobManager, Settings
    from jobworker.jobs.spec import IOLimits, Isolation, JobSpec, Limits
    from jobworker.wire import InvalidSpec, JobStatus, OutputChunk, Stream

# Each public name, and the module that defines it.
_HOMES = {
    "Api": "jobworker.http.site",
    "InvalidSpec": "jobworker.wire",
    "IOLimits": "jobworker.jobs.spec",
    "Isolation": "jobworker.jobs.spec",
    "IsolationUnavailable": "jobworker.jobs.errors",
    "Job": "jobworker.jobs.record",
    "JobConflict": "jobworker.jobs.errors",
    "JobError": "jobworker.jobs.errors",
    "JobManager": "jobworker.jobs.service",
    "JobNotFound": "jobworker.jobs.errors",
    "JobSpec": "jobworker.jobs.spec",
    "JobStatus": "jobworker.wire",
    "JobworkerClient": "jobworker.client",
    "Limits": "jobworker.jobs.spec",
    "OutputChunk": "jobworker.wire",
    "Policy": "jobworker.auth.policy",
    "Settings": "jobworker.jobs.service",
    "ShuttingDown": "jobworker.jobs.errors",
    "StorageFull": "jobworker.jobs.errors",
    "Stream": "jobworker.wire",
    "TooManyJobs": "jobworker.jobs.errors",
    "UnisolatedAsRoot": "jobworker.jobs.errors",
    "Usage": "jobworker.jobs.record",
}

__all__ = [
    "Api",
    "IOLimits",
    "InvalidSpec",
    "Isolation",
    "IsolationUnavailable",
    "Job",
    "JobConflict",
    "JobError",
    "JobManager",
    "JobNotFound",
    "JobSpec",
    "JobStatus",
    "JobworkerClient",
    "Limits",
    "OutputChunk",
    "Policy",
    "Settings",
    "ShuttingDown",
    "StorageFull",
    "Stream",
    "TooManyJobs",
    "UnisolatedAsRoot",
    "Usage",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'jobworker' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
