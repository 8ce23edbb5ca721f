"""
The terminal a command runs at: where its output and its errors go, and
what Ctrl-C does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import IO, Any

PROG = "jobworker-client"


class Console:
    """Where a command writes: job output and lines to stdout, errors to stderr."""

    def __init__(self, stdout: IO[bytes], stderr: IO[str]) -> None:
        self.stdout = stdout
        self.stderr = stderr

    def output(self, data: bytes) -> None:
        """Job output: raw, and flushed at once so a reader sees it live."""
        self.stdout.write(data)
        self.stdout.flush()

    def line(self, text: str) -> None:
        # Through the same byte stream as job output, so the two keep order.
        self.output(text.encode("utf-8", "surrogateescape") + b"\n")

    def json(self, value: Any) -> None:
        self.line(json.dumps(value, sort_keys=True))

    def error(self, text: str) -> None:
        self.stderr.write(f"{PROG}: {text}\n")
        self.stderr.flush()


class Interrupt:
    """
    What Ctrl-C does. The first press runs ``first`` if the command set one
    (``run`` stops its job and keeps following); otherwise, and on a second
    press, ``cancel`` ends the command.
    """

    def __init__(self) -> None:
        self.first: Callable[[], None] | None = None
        self.cancel: Callable[[], None] = lambda: None
        self.presses = 0

    def __call__(self) -> None:
        self.presses += 1
        if self.presses == 1 and self.first is not None:
            self.first()
        else:
            self.cancel()
