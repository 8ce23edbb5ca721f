"""
Which server to talk to and which files prove who we are: from the flags,
then the environment, then the development PKI in ./certs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from jobworker.cli.exits import UsageError
from jobworker.client import DEFAULT_SERVER, JobworkerClient


@dataclass(frozen=True)
class Connection:
    """Where the server is and which files prove who we are."""

    server: str
    ca: str
    cert: str
    key: str


# How a command gets its client: from_files in main, a fake in tests.
Connect = Callable[[Connection], JobworkerClient]


def connection_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Connection:
    """Flags first, then the environment, then the development PKI in certs/."""
    user = args.user or environ.get("JOBWORKER_USER") or "alice"
    server = args.server or environ.get("JOBWORKER_SERVER") or DEFAULT_SERVER
    return Connection(
        server=server_url(server),
        ca=args.ca or environ.get("JOBWORKER_CA") or os.path.join("certs", "ca.pem"),
        cert=args.cert
        or environ.get("JOBWORKER_CERT")
        or os.path.join("certs", f"{user}.pem"),
        key=args.key
        or environ.get("JOBWORKER_KEY")
        or os.path.join("certs", f"{user}.key"),
    )


def server_url(text: str) -> str:
    """``host:port`` or an https URL; the API is under /v1 of it."""
    if "://" not in text:
        text = "https://" + text
    if not text.startswith("https://"):
        raise UsageError(f"--server {text}: the server speaks HTTPS only")
    return text.rstrip("/")
