"""
Profiling the server while a scenario runs: py-spy (sampling, attached to
the running twistd) where it is installed, else cProfile (twistd run under
it; its figures are inflated by its own overhead, but the ranking holds).
Each scenario's profile is summarised as the functions with the most time of
their own, and the most time including what they call.
"""

from __future__ import annotations

import collections
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def find_py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, directory: Path, rate: int = 200) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.py_spy = find_py_spy()
        self.rate = rate
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self.kind = "py-spy" if self.py_spy else "cProfile"

    def wrap(self, name: str) -> list[str]:
        """What to put before twistd's command line."""
        if self.py_spy:
            return []
        return [sys.executable, "-m", "cProfile", "-o", str(self._out(name))]

    def attach(self, name: str, pid: int) -> None:
        if not self.py_spy:
            return
        self._running[name] = subprocess.Popen(
            [
                self.py_spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--output",
                str(self._out(name)),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def detach(self, name: str) -> None:
        process = self._running.pop(name, None)
        if process is None:
            return
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)

    def _out(self, name: str) -> Path:
        suffix = ".txt" if self.py_spy else ".prof"
        return self.directory / f"{name}{suffix}"

    def summary(self, name: str, top: int = 12) -> str:
        path = self._out(name)
        if not path.exists():
            return f"(no profile for {name})"
        if self.py_spy:
            return summarise_collapsed(path, top)
        return summarise_pstats(path, top)


def _label(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    file = match["file"]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    if "jobworker/" in file:
        file = "jobworker/" + file.split("jobworker/", 1)[1]
    return f"{match['function']} ({file})"


def summarise_collapsed(path: Path, top: int) -> str:
    """Self and inclusive sample shares from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_label(f) for f in stack.split(";")]
        # The first frame is the thread; idle samples end in epoll's poll.
        total += count
        own[frames[-1]] += count
        for frame in set(frames[1:]):
            inclusive[frame] += count
    if not total:
        return "(empty profile)"
    lines = [f"{total} samples; own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("including callees:")
    lines += [
        f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top * 2)
    ]
    return "\n".join(lines)


def summarise_pstats(path: Path, top: int) -> str:
    stats = pstats.Stats(str(path))
    rows = []
    total = stats.total_tt  # type: ignore[attr-defined]
    for (file, _line, function), row in stats.stats.items():  # type: ignore[attr-defined]
        _cc, _nc, tt, ct, _callers = row
        rows.append((tt, ct, _label(f"{function} ({file})")))
    lines = [f"{total:.2f} s profiled; own time:"]
    for tt, _ct, label in sorted(rows, reverse=True)[:top]:
        lines.append(f"  {100 * tt / total:5.1f}%  {label}")
    lines.append("including callees:")
    for _tt, ct, label in sorted(rows, key=lambda r: -r[1])[: top * 2]:
        lines.append(f"  {100 * ct / total:5.1f}%  {label}")
    return "\n".join(lines)
