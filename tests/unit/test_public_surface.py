"""The package's public surface: every name in ``jobworker.__all__`` is there."""

from __future__ import annotations

import pytest

import jobworker


@pytest.mark.parametrize("name", jobworker.__all__)
def test_every_public_name_resolves(name: str) -> None:
    """Each public name is the object its home module defines under that name."""
    value = getattr(jobworker, name)
    assert getattr(value, "__name__", name) == name


def test_all_names_each_public_name_once() -> None:
    """``__all__`` and the table of homes list the same names."""
    assert sorted(jobworker.__all__) == sorted(jobworker._HOMES)


def test_unknown_name_is_an_attribute_error() -> None:
    """A name that is not public is an AttributeError, as for any module."""
    with pytest.raises(AttributeError, match="no attribute 'JobWorker'"):
        jobworker.JobWorker  # noqa: B018
