"""
The values the command line takes: each option's type, which turns its text
into a value or an error that names what a good one looks like.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from typing import Any

from jobworker.cli.exits import UsageError
from jobworker.wire import ENV_NAME, InvalidSpec, JobStatus, Stream, parse_size

# In the order --help shows them: the default first.
STREAMS = tuple(s.value for s in (Stream.COMBINED, Stream.STDOUT, Stream.STDERR))
STATUSES = tuple(status.value for status in JobStatus)


def shlex_split(text: str) -> list[str]:
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise UsageError(f"--job {text!r}: {e}") from None
    if not argv:
        raise UsageError("--job: give a command")
    return argv


def size_value(text: str) -> int:
    try:
        return parse_size(text, "size")
    except InvalidSpec:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size such as 268435456, 512K, 256M or 2G"
        ) from None


def positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return value

    convert.__name__ = kind.__name__
    return convert


def non_negative_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def grace_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError("give seconds from 0 to 3600")
    return value


def env_pair(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not ENV_NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def status_names(text: str) -> list[str]:
    names = [s for s in text.split(",") if s]
    for name in names:
        if name not in STATUSES:
            raise argparse.ArgumentTypeError(
                f"{name!r} is not one of {', '.join(STATUSES)}"
            )
    return names


def owner_name(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("give a name (or --all for everyone's)")
    return text
