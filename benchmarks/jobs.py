"""
The programs the benchmark runs as jobs, and what their output should be.

Jobs run as ``nobody`` in their own namespaces, so they cannot read this
checkout: each program is passed whole to the system's ``python3 -c``.
"""

from __future__ import annotations

import hashlib
import shutil
import zlib
from typing import Any

PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"
BLOCK = 4 << 20

# Writes a deterministic 4 MiB block to stdout COUNT times. With a GO path it
# first waits (at most a minute) until that file exists, so that followers
# can be connected before the first byte.
GENERATOR = """
import hashlib, os, sys, time
count = int(sys.argv[1])
go = sys.argv[2] if len(sys.argv) > 2 else None
block = b"".join(hashlib.sha256(i.to_bytes(8, "little")).digest()
                 for i in range(BLOCK // 32))
if go:
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.001)
for _ in range(count):
    view = memoryview(block)
    while view:
        view = view[os.write(1, view):]
""".replace("BLOCK", str(BLOCK))

# Writes "<n> <CLOCK_MONOTONIC ns>" every INTERVAL seconds, COUNT times.
# The job shares the host's monotonic clock (there is no time namespace).
TICKER = """
import os, sys, time
count, interval = int(sys.argv[1]), float(sys.argv[2])
due = time.monotonic() + interval
for n in range(count):
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    os.write(1, b"%d %d\\n" % (n, time.monotonic_ns()))
    due += interval
"""


def block() -> bytes:
    return b"".join(
        hashlib.sha256(i.to_bytes(8, "little")).digest() for i in range(BLOCK // 32)
    )


def expected_crc(blocks: int) -> int:
    data, crc = block(), 0
    for _ in range(blocks):
        crc = zlib.crc32(data, crc)
    return crc


def generator(blocks: int, go: str | None = None) -> dict[str, Any]:
    args = ["-c", GENERATOR, str(blocks)] + ([go] if go else [])
    return {"command": PYTHON, "args": args}


def ticker(count: int, interval: float) -> dict[str, Any]:
    return {"command": PYTHON, "args": ["-c", TICKER, str(count), str(interval)]}


def true() -> dict[str, Any]:
    return {"command": "/bin/true"}


def sleeper(seconds: int) -> dict[str, Any]:
    return {"command": "/bin/sleep", "args": [str(seconds)]}
