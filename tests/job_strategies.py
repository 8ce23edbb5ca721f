"""
Hypothesis strategies for job records: every status, limits set and unset,
environments, usage, errors, exit codes and signals, and numbers at and
beyond the edges of SQLite's integers.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from hypothesis import strategies as st

from jobworker.jobs.record import Job, Usage, format_time
from jobworker.jobs.spec import IOLimits, Isolation, JobSpec, Limits
from jobworker.wire import JobStatus

INT64 = st.integers(-(2**63), 2**63 - 1)
COUNT = st.integers(0, 2**63 - 1)
# What a client may ask for has no upper bound.
POSITIVE = st.integers(min_value=1)
FLOAT = st.floats(allow_nan=False, allow_infinity=False)
POSITIVE_FLOAT = st.floats(min_value=1e-9, allow_nan=False, allow_infinity=False)
# Any text a person could write (no lone surrogates).
TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
HEX_ID = st.text("0123456789abcdef", min_size=32, max_size=32)
TIME = st.datetimes(min_value=datetime(2000, 1, 1), timezones=st.just(UTC)).map(
    format_time
)
ENV_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)


def optional(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.none() | strategy


limits = st.builds(
    Limits,
    cpu=optional(POSITIVE_FLOAT),
    memory=optional(POSITIVE),
    pids=optional(POSITIVE),
    io=st.builds(
        IOLimits,
        read_bps=optional(POSITIVE),
        write_bps=optional(POSITIVE),
        read_iops=optional(POSITIVE),
        write_iops=optional(POSITIVE),
    ),
)

specs = st.builds(
    JobSpec,
    command=TEXT.filter(bool),
    args=st.lists(TEXT, max_size=5).map(tuple),
    env=st.dictionaries(ENV_NAME, TEXT, max_size=5),
    cwd=optional(TEXT.map(lambda path: f"/{path}")),
    timeout=optional(POSITIVE_FLOAT),
    limits=st.just(Limits()) | limits,
    isolation=st.sampled_from(["none", "host"]).map(Isolation),
)

usages = st.builds(
    Usage,
    cpu_seconds=FLOAT.map(abs),
    memory_peak=optional(COUNT),
    io_read_bytes=COUNT,
    io_write_bytes=COUNT,
)

jobs = st.builds(
    Job,
    id=HEX_ID,
    owner=TEXT.filter(bool),
    spec=specs,
    status=st.sampled_from(JobStatus),
    created_at=TIME,
    run_as=optional(TEXT),
    started_at=optional(TIME),
    ended_at=optional(TIME),
    exit_code=optional(st.integers(0, 255) | INT64),
    signal=optional(st.integers(1, 64)),
    oom_killed=st.booleans(),
    error=optional(TEXT),
    usage=optional(usages),
    pid=optional(st.integers(1, 2**22)),
    pid_start_time=optional(COUNT),
    uid=optional(st.integers(0, 2**32 - 2)),
    gid=optional(st.integers(0, 2**32 - 2)),
)
# Records as versions before 2 of the schema held them: no uid or gid.
jobs_without_ids = jobs.map(lambda job: dataclasses.replace(job, uid=None, gid=None))
