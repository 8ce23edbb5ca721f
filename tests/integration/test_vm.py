"""
The cgroup v2 stage: boot the test VM once and run the v2-only tests in it.

This host's controllers may all be bound to cgroup v1, so the v2 tests run in
a VM with a cgroup2-only kernel (see ``tests/vm/run_in_vm.py``). Inside it,
every test must run: a skip is a failure (``tests.vm.no_skips``). This test
skips only where QEMU cannot run at all, and says so loudly; under
``JOBWORKER_REQUIRE_ROOT_TESTS=1`` that is a failure too.
"""

from __future__ import annotations

import sys
import warnings

import pytest

from tests.conftest import skip_or_fail
from tests.vm import run_in_vm

# What the guest runs, relative to the checkout: the tests that need root in
# these files; those of the real cgroups find the v2 hierarchy there.
GUEST_TESTS = (
    "tests/integration/test_vm_cgroup_v2.py",
    "tests/integration/test_cgroups.py",
    "tests/integration/test_limits.py",
    "-m",
    "root",
)
GUEST_ENV = {
    # Only the plugins named on the command line: the others' imports cost
    # seconds each under emulation, and the guest tests need none of them.
    "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    "JOBWORKER_CGROUP_V2_VM": "1",
    "JOBWORKER_REQUIRE_ROOT_TESTS": "1",
}
# One boot: ~3-6 s to userspace, then the tests; TCG on a loaded host is slow.
TIMEOUT = 170.0


class VMWarning(UserWarning):
    """The cgroup v2 tests did not run on this machine."""


def guest_pytest() -> list[str]:
    # The host's interpreter is at the same path in the guest (same root);
    # the root is read-only there: no cache directory, no bytecode files.
    plugins = [
        "no:cacheprovider",
        "pytest_timeout",
        "pytest_twisted",
        "tests.vm.no_skips",
    ]
    options = [arg for p in plugins for arg in ("-p", p)] + ["-v", "-rs", "--color=no"]
    return [sys.executable, "-m", "pytest", *options, *GUEST_TESTS]


@pytest.fixture(scope="module")
def guest_run() -> run_in_vm.VMResult:
    try:
        run_in_vm.prepare()
    except run_in_vm.VMUnavailable as e:
        message = f"cgroup v2 tests NOT RUN: the test VM cannot run here: {e}"
        warnings.warn(message, VMWarning, stacklevel=1)
        skip_or_fail(message)
    env = run_in_vm.BASE_GUEST_ENV | GUEST_ENV
    return run_in_vm.run(
        guest_pytest(), env=env, cwd=str(run_in_vm.CHECKOUT), timeout=TIMEOUT
    )


def test_guest_tests_exist() -> None:
    """Every file the guest is to run is there: a test file moved or renamed
    must be named here anew, or the VM would run nothing of it."""
    paths = [arg for arg in GUEST_TESTS if arg.endswith(".py")]
    missing = [p for p in paths if not (run_in_vm.CHECKOUT / p).is_file()]
    assert paths and missing == []


@pytest.mark.root
# pytest-timeout's per-test bound must cover the VM's boot in the fixture.
@pytest.mark.timeout(TIMEOUT + 20)
def test_cgroup_v2_tests_pass_in_the_vm(guest_run: run_in_vm.VMResult) -> None:
    print(
        f"VM: tests started {guest_run.started:.1f} s after boot, ended at "
        f"{guest_run.ended:.1f} s; {guest_run.wall:.1f} s from QEMU's start to exit"
    )
    assert guest_run.status == 0, f"the guest's pytest failed:\n{guest_run.console}"
