"""
``python -m benchmarks``: run jobworker's benchmarks against a real server
on 127.0.0.1 with real mutual TLS, print a table and optionally write JSON.
See ``scripts/bench --help``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from benchmarks.profile import Profiler
from benchmarks.report import Figure, machine, table, write_json
from benchmarks.scenarios import SCENARIOS, Bench
from benchmarks.server import Workspace


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark a real jobworker server on 127.0.0.1 (needs root:"
        " jobs run isolated).",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=sorted(SCENARIOS),
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer repeats and smaller sizes"
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="write figures as JSON")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile the server during each scenario (py-spy if installed,"
        " else cProfile) into DIR and print the top costs",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    options = parser().parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root: jobs run in namespaces", file=sys.stderr)
        return 2
    names = options.only or list(SCENARIOS)
    names = [n for n in SCENARIOS if n in names]  # in the usual order
    profiler = Profiler(options.profile) if options.profile else None
    workspace = Workspace()
    bench = Bench(workspace, options.quick, profiler, shared={})
    figures: list[Figure] = []
    seconds: dict[str, float] = {}
    # The 1-minute load average as each scenario began: other work on the
    # machine shows here (the figures are only as quiet as the machine was).
    loads: dict[str, float] = {}
    failed: list[str] = []
    began = time.monotonic()
    try:
        for name in names:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            loads[name] = round(os.getloadavg()[0], 2)
            start = time.monotonic()
            try:
                figures += SCENARIOS[name](bench)
            except Exception:
                traceback.print_exc()
                failed.append(name)
            seconds[name] = round(time.monotonic() - start, 1)
            print(f"bench: {name} took {seconds[name]} s", file=sys.stderr)
            if profiler:
                print(profiler.summary(name), file=sys.stderr)
    finally:
        workspace.remove()
    info = machine()
    info["load_average_at_start"] = loads
    total = round(time.monotonic() - began, 1)
    print(table(figures, info))
    print(f"\n{len(names)} scenarios in {total} s{' (quick)' if options.quick else ''}")
    if options.json:
        write_json(
            options.json,
            figures,
            info,
            {
                "quick": options.quick,
                "seconds": seconds,
                "total_seconds": total,
                "failed": failed,
            },
        )
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
