"""
Shared test configuration.

Tests that need root (cgroups, namespaces, changing users) are marked
``@pytest.mark.root``. Where they cannot run they are skipped, except when
``JOBWORKER_REQUIRE_ROOT_TESTS=1`` (CI sets it): then a skip is a failure, so
a CI run can never pass without having run them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from jobworker.jobs.service import JobManager

REQUIRE_ROOT_TESTS = os.environ.get("JOBWORKER_REQUIRE_ROOT_TESTS") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip this test, or fail it where CI requires it to run."""
    if REQUIRE_ROOT_TESTS:
        pytest.fail(f"required test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def managers() -> Iterator[list[JobManager]]:
    """Managers a test opens: add them here, and each still open is shut
    down (its jobs stopped) at the end."""
    opened: list[JobManager] = []
    yield opened
    for manager in opened:
        if manager._records is not None:
            pytest_twisted.blockon(Deferred.fromCoroutine(manager.shutdown()))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        skip_or_fail("needs root")


# The cgroup v2 tests run only inside the VM that tests/integration/test_vm.py
# boots (this host has no v2 controllers); it runs them there, with skips made
# failures.
collect_ignore = (
    []
    if os.environ.get("JOBWORKER_CGROUP_V2_VM") == "1"
    else ["integration/test_vm_cgroup_v2.py"]
)


@pytest.fixture(scope="session", autouse=True)
def uid_locks_left_as_found() -> Iterator[None]:
    """Servers the tests start as root reserve jobs' uids in the host's lock
    directory (jobworker.linux.uids): remove it after, if they made it."""
    from jobworker.linux.uids import UID_LOCKS

    top = UID_LOCKS.parent
    existed = top.exists()
    yield
    if not existed and top.exists():
        shutil.rmtree(top, ignore_errors=True)
