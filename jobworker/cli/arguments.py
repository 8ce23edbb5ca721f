"""
The command line of jobworker-client: its commands and their options, and
the parse that checks them before anything is sent.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from jobworker.cli.console import PROG
from jobworker.cli.exits import UsageError
from jobworker.cli.options import (
    STATUSES,
    STREAMS,
    env_pair,
    grace_value,
    non_negative_int,
    owner_name,
    positive,
    shlex_split,
    size_value,
    status_names,
)
from jobworker.client import DEFAULT_SERVER


class ArgumentParser(argparse.ArgumentParser):
    """Usage errors raise instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()
        raise UsageError(f"{command}: {message}" if command else message)


def add_common(parser: argparse.ArgumentParser, top: bool) -> None:
    """
    Connection options and --json, accepted before and after the command.
    After it, they default to SUPPRESS so that they do not hide a value
    given before it.
    """
    default = None if top else argparse.SUPPRESS
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--server",
        metavar="URL",
        default=default,
        help=f"server URL (env JOBWORKER_SERVER; default {DEFAULT_SERVER})",
    )
    group.add_argument(
        "--ca",
        metavar="FILE",
        default=default,
        help="CA certificate of the server (env JOBWORKER_CA; default certs/ca.pem)",
    )
    group.add_argument(
        "--cert",
        metavar="FILE",
        default=default,
        help="our certificate (env JOBWORKER_CERT; default certs/USER.pem)",
    )
    group.add_argument(
        "--key",
        metavar="FILE",
        default=default,
        help="our private key (env JOBWORKER_KEY; default certs/USER.key)",
    )
    group.add_argument(
        "--user",
        metavar="USER",
        default=default,
        help="who to be with the dev PKI in certs/ (env JOBWORKER_USER; default alice)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="machine-readable output (see jobworker-client --help)",
    )


def add_job_options(parser: argparse.ArgumentParser) -> None:
    job = parser.add_argument_group("job")
    job.add_argument(
        "--env",
        metavar="NAME=VALUE",
        type=env_pair,
        action="append",
        default=[],
        help="environment variable (repeatable); the job gets only these",
    )
    job.add_argument("--cwd", metavar="DIR", help="working directory (absolute)")
    job.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=positive(float),
        help="stop the job after this long",
    )
    job.add_argument(
        "--network",
        choices=("none", "host"),
        help="none: only its own loopback (default); host: if policy allows",
    )
    limits = parser.add_argument_group("limits (default: the server's)")
    limits.add_argument("--cpu", metavar="CPUS", type=positive(float), help="e.g. 0.5")
    limits.add_argument("--memory", metavar="SIZE", type=size_value, help="e.g. 256M")
    limits.add_argument(
        "--pids", metavar="N", type=positive(int), help="processes and threads"
    )
    for name, metavar, kind, example in [
        ("io-read-bps", "SIZE", size_value, "bytes read per second, e.g. 20M"),
        ("io-write-bps", "SIZE", size_value, "bytes written per second, e.g. 10M"),
        ("io-read-iops", "N", positive(int), "read operations per second"),
        ("io-write-iops", "N", positive(int), "write operations per second"),
    ]:
        limits.add_argument(f"--{name}", metavar=metavar, type=kind, help=example)


def command_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND [ARG...]",
        help="the command and its arguments; no shell is involved "
        "(use -- sh -c '...' for one)",
    )


def parser() -> ArgumentParser:
    # The package's docstring is the help text. The package imports this
    # module, so it is looked up here, once both are loaded.
    import jobworker.cli

    doc = jobworker.cli.__doc__ or ""
    top = ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run and watch jobs on a jobworker server.",
        epilog=doc[doc.index("The server and") :],
    )
    commands = top.add_subparsers(
        title="commands",
        dest="name",
        metavar="COMMAND",
        required=True,
        parser_class=ArgumentParser,
    )
    add_common(top, top=True)

    def command(name: str, summary: str, details: str = "") -> ArgumentParser:
        sub: ArgumentParser = commands.add_parser(
            name,
            help=summary,
            description=summary + ("\n\n" + details if details else ""),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_common(sub, top=False)
        return sub

    start = command(
        "start",
        "start one or several jobs; print their ids",
        "One job:      jobworker-client start [options] -- COMMAND [ARG...]\n"
        "Several jobs: jobworker-client start [options] --job 'CMD ARG' "
        "--job 'CMD ARG'\n\n"
        "Each --job is split into words as a shell would (quotes, "
        "backslashes),\nbut no shell runs it. The options apply to every "
        "job. A job that\nfailed to start is reported, and the exit code "
        "is 127.",
    )
    add_job_options(start)
    start.add_argument(
        "--job",
        metavar="'CMD ARG...'",
        action="append",
        default=[],
        help="a job as one string (repeatable)",
    )
    command_argument(start)

    run = command(
        "run",
        "start a job, follow its output, exit with its exit code",
        "jobworker-client run [options] -- COMMAND [ARG...]\n\n"
        "The job's output (stdout and stderr, in order) goes to stdout.\n"
        "Ctrl-C stops the job (SIGTERM, then SIGKILL after the grace "
        "period),\nwaits for it to end and exits 130; Ctrl-C again leaves "
        "at once.",
    )
    add_job_options(run)
    command_argument(run)

    stop = command("stop", "stop jobs: SIGTERM, then SIGKILL after the grace")
    stop.add_argument(
        "--grace",
        metavar="SECONDS",
        type=grace_value,
        help="seconds from SIGTERM to SIGKILL (default: the server's, 10)",
    )
    stop.add_argument("ids", nargs="+", metavar="ID")

    status = command("status", "show jobs' records")
    status.add_argument("ids", nargs="+", metavar="ID")

    listing = command(
        "list",
        "list our jobs, or with --all every job our role may read",
        "Our jobs are those owned by the subject CN of our certificate (--cert).",
    )
    listing.add_argument(
        "--status",
        type=status_names,
        action="extend",
        metavar="STATUS[,STATUS...]",
        help=f"only these: {', '.join(STATUSES)}",
    )
    whose = listing.add_mutually_exclusive_group()
    whose.add_argument(
        "--owner", metavar="NAME", type=owner_name, help="only this owner's jobs"
    )
    whose.add_argument(
        "--all",
        action="store_true",
        help="every job our role may read, whoever owns it",
    )

    output = command(
        "output",
        "write a job's output to stdout",
        "Without -f: what is there now. With -f: until the job ends, "
        "reconnecting\nif the connection drops, without losing or "
        "repeating a byte.",
    )
    output.add_argument("-f", "--follow", action="store_true", help="follow it")
    output.add_argument("--stream", choices=STREAMS, default="combined")
    output.add_argument(
        "--offset",
        metavar="N",
        type=non_negative_int,
        default=0,
        help="start at this byte of the stream",
    )
    output.add_argument("id", metavar="ID")

    wait = command("wait", "wait for a job to end; exit with its exit code")
    wait.add_argument("id", metavar="ID")

    purge = command("purge", "delete ended jobs and their output")
    purge.add_argument("ids", nargs="+", metavar="ID")
    return top


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line, or raise UsageError naming what is wrong."""
    args = parser().parse_args(argv)
    command = getattr(args, "command", None)
    if command is not None:
        args.command = command[1:] if command[:1] == ["--"] else command
        if args.name == "run" and not args.command:
            raise UsageError("run: give the command to run: run [options] -- CMD")
        if args.name == "start" and not (args.command or args.job):
            raise UsageError("start: give a command (-- CMD ARG...) or --job")
        # Parse them now: a bad one should stop everything before any starts.
        for text in getattr(args, "job", []):
            shlex_split(text)
    return args
