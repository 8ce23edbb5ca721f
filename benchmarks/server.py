"""
The server under test: a real ``twistd jobworker`` on 127.0.0.1, with its
own temporary PKI, policy and data directory, run as a subprocess so that
its memory and CPU can be read from outside.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.client import Connection, Credentials
from jobworker.linux.launcher import under_private_mount
from jobworker.pki import write_dev_pki

IDENTITY = "bench"
POLICY = f"""
[roles.bench]
grants = {{ start = "all", stop = "all", read = "all", purge = "all" }}
run_as = "nobody"

[identities]
{IDENTITY} = "bench"
"""
START_TIMEOUT = 30.0
# Where the workspace goes: jobs must see its scratch area, and an isolated
# job's /tmp, /var/tmp and /run are its own.
WORKSPACE_BASES = ("/srv", "/var/lib", "/opt")
STOP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _base() -> str | None:
    for base in WORKSPACE_BASES:
        real = os.path.realpath(base)
        if os.access(real, os.W_OK) and not under_private_mount(real):
            return real
    return None  # the temporary directory


class Workspace:
    """A temporary directory with the PKI, policy and a shared scratch area."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="jobworker-bench-", dir=_base()))
        self.pki = self.root / "pki"
        write_dev_pki(self.pki, users=(IDENTITY,))
        self.policy = self.root / "policy.toml"
        self.policy.write_text(POLICY)
        # Jobs run as nobody and may need to see files here (a "go" signal).
        self.scratch = self.root / "scratch"
        self.scratch.mkdir()
        os.chmod(self.root, 0o755)
        os.chmod(self.scratch, 0o755)
        self.credentials = Credentials(
            ca=self.pki / "ca.pem",
            cert=self.pki / f"{IDENTITY}.pem",
            key=self.pki / f"{IDENTITY}.key",
        )

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class Server:
    """One twistd jobworker process with a fresh data directory."""

    def __init__(self, workspace: Workspace, name: str, profiler: Any = None) -> None:
        self.workspace = workspace
        self.name = name
        self.port = free_port()
        self.data_dir = workspace.root / f"data-{name}"
        self.log_path = workspace.root / f"server-{name}.log"
        self.profiler = profiler
        self.process: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    def argv(self) -> list[str]:
        pki = self.workspace.pki
        twistd = str(Path(sys.executable).with_name("twistd"))
        return [
            *(self.profiler.wrap(self.name) if self.profiler else []),
            twistd, "--pidfile=", "-n", "--logfile", str(self.log_path),
            "jobworker",
            "--port", str(self.port),
            "--cert", str(pki / "server.pem"),
            "--key", str(pki / "server.key"),
            "--ca", str(pki / "ca.pem"),
            "--policy", str(self.workspace.policy),
            "--data-dir", str(self.data_dir),
            "--max-jobs", "2000",
            "--output-limit", "20G",
        ]  # fmt: skip

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}; see {self.log_path}"
                )
            try:
                with self.connect() as c:
                    if c.request("GET", "/v1/healthz").status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not answer within {START_TIMEOUT}s")
            time.sleep(0.05)
        # twistd itself: cProfile runs it in the same process, py-spy attaches.
        self.ps = psutil.Process(self.process.pid)
        if self.profiler:
            self.profiler.attach(self.name, self.ps.pid)

    def connect(self, timeout: float = 60.0) -> Connection:
        context = self.workspace.credentials.context()
        return Connection("127.0.0.1", self.port, context, timeout=timeout)

    def rss(self) -> int:
        assert self.ps is not None
        return int(self.ps.memory_info().rss)

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        all_lines = text.splitlines()
        shown = all_lines[-lines:]
        # The first error is the one that tells most.
        for i, line in enumerate(all_lines):
            if "Traceback" in line or "unexpected error" in line:
                shown = [*all_lines[i : i + lines], "...", *shown]
                break
        tail = "\n".join(shown)
        return f"--- from the server's log ---\n{tail}"

    def stop(self) -> None:
        """SIGTERM (graceful: jobs are stopped), then SIGKILL if it hangs."""
        if self.process is None:
            return
        if self.profiler:
            self.profiler.detach(self.name)
        if self.process.poll() is None:
            target = self.process.pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"bench: server {self.name} hung on SIGTERM; killing it")
                os.kill(target, signal.SIGKILL)
                self.process.wait(10)
        self.process = None
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
