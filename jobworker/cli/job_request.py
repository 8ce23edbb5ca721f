"""
The API's job request, made from a command line and the job options.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from jobworker.cli.exits import UsageError


def job_spec(argv: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    """The API's job request from a command line and the job options."""
    argv = list(argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise UsageError("give the command to run (after --)")
    spec: dict[str, Any] = {"command": argv[0], "args": argv[1:]}
    if args.env:
        spec["env"] = dict(args.env)
    if args.cwd is not None:
        spec["cwd"] = args.cwd
    if args.timeout is not None:
        spec["timeout"] = args.timeout
    limits = present(cpu=args.cpu, memory=args.memory, pids=args.pids)
    io = present(
        read_bps=args.io_read_bps,
        write_bps=args.io_write_bps,
        read_iops=args.io_read_iops,
        write_iops=args.io_write_iops,
    )
    if io:
        limits["io"] = io
    if limits:
        spec["limits"] = limits
    if args.network is not None:
        spec["isolation"] = {"network": args.network}
    return spec


def present(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
