"""
The ``jobworker-client`` console script: parse, connect, run the command on
the reactor, and exit with its code; every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from jobworker.cli.arguments import parse
from jobworker.cli.commands import COMMANDS, Invocation
from jobworker.cli.connection import Connect, Connection, connection_from
from jobworker.cli.console import PROG, Console, Interrupt
from jobworker.cli.exits import Exit, UsageError, explain
from jobworker.client import JobworkerClient


async def dispatch(
    args: argparse.Namespace,
    connect: Connect,
    console: Console,
    interrupt: Interrupt,
    environ: Mapping[str, str],
) -> int:
    """Run the command ``args`` name; any error becomes a line and a code."""
    server = ""
    try:
        connection = connection_from(args, environ)
        server = connection.server
        client = connect(connection)
        try:
            return await COMMANDS[args.name](
                Invocation(args, client, console, interrupt, connection)
            )
        finally:
            await client.close()
    except Exception as e:
        code, message = explain(e, server)
        if message:
            console.error(message)
        return code


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``jobworker-client`` console script."""
    console = Console(sys.stdout.buffer, sys.stderr)
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        console.error(f"{e} (see {PROG} --help)")
        raise SystemExit(Exit.USAGE) from None

    def run(reactor: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(_main(reactor, args, console))

    react(run)


async def _main(reactor: Any, args: argparse.Namespace, console: Console) -> None:
    interrupt = Interrupt()

    def on_sigint(number: int, frame: object) -> None:
        reactor.callFromThread(interrupt)

    def connect(connection: Connection) -> JobworkerClient:
        return JobworkerClient.from_files(
            reactor, connection.server, connection.ca, connection.cert, connection.key
        )

    # After the reactor's own handler, which would stop the reactor and exit 0.
    signal.signal(signal.SIGINT, on_sigint)
    running = Deferred.fromCoroutine(
        dispatch(args, connect, console, interrupt, os.environ)
    )
    interrupt.cancel = running.cancel
    code = await running
    if code == Exit.BROKEN_PIPE:
        # Nothing reads stdout: keep the interpreter's last flush from failing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(code)
