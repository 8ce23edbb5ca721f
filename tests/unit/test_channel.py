"""ApiChannel's parsing edge cases, on an in-memory transport."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from jobworker.http.channel import ApiChannel
from jobworker.http.settings import ApiSettings

NO_DEADLINES = ApiSettings(
    handshake_timeout=None, header_timeout=None, body_timeout=None,
    idle_timeout=None,
)  # fmt: skip


@pytest.fixture
def audited() -> Iterator[list[tuple[Any, ...]]]:
    """The audit lines logged: identity, action, allowed, status."""
    lines: list[tuple[Any, ...]] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "jobworker.audit":
            lines.append(
                (event["identity"], event["action"], event["allowed"], event["status"])
            )

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def connected_channel() -> tuple[ApiChannel, StringTransport]:
    site = Site(Resource(), timeout=None)  # no idle timer on the real reactor
    site.protocol = functools.partial(ApiChannel, NO_DEADLINES)  # type: ignore[method-assign, assignment]
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0))
    assert isinstance(channel, ApiChannel)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


@pytest.mark.parametrize(
    "pieces",
    [
        [b"GET /v1/healthz HTTP/1.1 more words\r\n", b"Host: x\r\n", b"\r\n"],
        # A header line is parsed once the next one arrives.
        [b"GET /v1/healthz HTTP/1.1\r\nNo colon\r\nHost: x\r\n", b"\r\n"],
    ],
    ids=["request-line", "header-line"],
)
def test_nothing_is_parsed_after_a_bad_request(
    pieces: list[bytes], audited: list[tuple[Any, ...]]
) -> None:
    """A request refused as malformed is one bare 400 and one audit line;
    lines that arrive after it (over TLS they do, until the close completes)
    are ignored, where Twisted went on parsing them and raised on the blank
    line."""
    channel, transport = connected_channel()
    for piece in pieces:
        channel.dataReceived(piece)
    assert transport.value() == b"HTTP/1.1 400 Bad Request\r\n\r\n"
    assert transport.disconnecting
    assert audited == [(None, "-", None, 400)]


def test_too_many_headers_is_431_and_audited(audited: list[tuple[Any, ...]]) -> None:
    """More headers than the limit: 431 in JSON, and an audit line for it."""
    channel, transport = connected_channel()
    headers = b"".join(b"X-%d: y\r\n" % n for n in range(NO_DEADLINES.max_headers))
    channel.dataReceived(b"GET /v1/healthz HTTP/1.1\r\n" + headers + b"Z: z\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 431 Request Header Fields")
    assert audited == [(None, "-", None, 431)]
