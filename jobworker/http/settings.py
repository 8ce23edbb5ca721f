"""
The HTTP layer's knobs, written once: what the routes accept (bodies, waits,
reads) and what one connection may take (deadlines, header sizes). The
server's command-line options take their defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class ApiSettings:
    """Sizes in bytes, times in seconds; a deadline of None is none."""

    max_body: int = MiB
    # The longest long-poll an output read may ask for (``wait``).
    max_wait: float = 300.0
    # An output read's ``limit``: when left out, and at most.
    default_limit: int = MiB
    max_limit: int = 16 * MiB
    # Idle connections are closed after this long; so is one whose client
    # stops reading a response (a follow stream) for as long.
    idle_timeout: float | None = 60.0
    # Deadlines Twisted has no setting for (see jobworker.http.channel): to
    # finish the TLS handshake, to send a request's headers, to send its body.
    handshake_timeout: float | None = 10.0
    header_timeout: float | None = 20.0
    body_timeout: float | None = 60.0
    # Request line and headers together, in bytes; and how many headers.
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
