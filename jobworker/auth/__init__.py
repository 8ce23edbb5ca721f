"""
Who may do what: identities from certificates, roles and their ceilings
(``policy``), and the TOML file they are read from (``policy_file``).
"""

from jobworker.auth.policy import (
    Action,
    CeilingExceeded,
    Decision,
    Forbidden,
    Identity,
    PermissionDenied,
    Policy,
    Role,
    Scope,
    check_job_request,
)
from jobworker.auth.policy_file import PolicyError

__all__ = [
    "Action",
    "CeilingExceeded",
    "Decision",
    "Forbidden",
    "Identity",
    "PermissionDenied",
    "Policy",
    "PolicyError",
    "Role",
    "Scope",
    "check_job_request",
]
