"""
A root server runs the launch helper as root: it refuses one that a user
other than root could change, the file or any directory above it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobworker.linux import build
from jobworker.linux.build import UnsafeHelper, check_root_only, helper_path

# Making files another user's needs root, and so does the check.
pytestmark = pytest.mark.root
NOBODY = 65534


@pytest.fixture
def helper(tmp_path: Path) -> Path:
    """A helper in directories only root can write, as a root install makes."""
    directory = tmp_path / "venv" / "site-packages"
    directory.mkdir(parents=True)
    for place in (tmp_path / "venv", directory):
        place.chmod(0o755)
    path = directory / "jobworker-exec"
    path.write_bytes(b"\x7fELF")
    path.chmod(0o755)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(UnsafeHelper) as caught:
        check_root_only(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"the job launch helper {path} is not safe")
    return message


def test_a_root_only_helper_is_accepted(helper: Path) -> None:
    check_root_only(helper)


def test_a_helper_another_user_owns_is_refused(helper: Path) -> None:
    os.chown(helper, NOBODY, NOBODY)
    assert f"it is owned by uid {NOBODY}, not root" in refusal(helper)


def test_a_directory_another_user_owns_is_refused(helper: Path) -> None:
    os.chown(helper.parent.parent, NOBODY, NOBODY)
    message = refusal(helper)
    assert f"{helper.parent.parent} is owned by uid {NOBODY}" in message


def test_a_group_writable_helper_is_refused(helper: Path) -> None:
    helper.chmod(0o775)
    assert "it is writable by its group" in refusal(helper)


def test_an_other_writable_parent_is_refused(helper: Path) -> None:
    helper.parent.chmod(0o757)
    assert f"{helper.parent} is writable by others" in refusal(helper)


def test_a_sticky_parent_is_like_tmp(helper: Path) -> None:
    """Others may write a sticky directory, but not move what is root's."""
    helper.parent.chmod(0o1777)
    check_root_only(helper)


def test_helper_path_checks_where_the_helper_really_is(
    helper: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a symlink, the directories checked are the real ones."""
    link = tmp_path / "link"
    link.symlink_to(helper.parent, target_is_directory=True)
    monkeypatch.setattr(build, "HELPER", link / helper.name)
    assert helper_path() == helper
    helper.parent.parent.chmod(0o777)
    with pytest.raises(UnsafeHelper, match=f"{helper.parent.parent} is writable"):
        helper_path()


def test_a_server_that_is_not_root_runs_its_own_helper(
    helper: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's own server may run a helper that user owns: no root to hand."""
    os.chown(helper, NOBODY, NOBODY)
    monkeypatch.setattr(build, "HELPER", helper)
    monkeypatch.setattr(os, "geteuid", lambda: NOBODY)
    assert helper_path() == helper


def test_the_installed_helper_passes(tmp_path: Path) -> None:
    """The helper this checkout's tests use is root's alone."""
    build.build()
    assert helper_path() == Path(os.path.realpath(build.HELPER))
