# twisted.web.http is not annotated; everything this module defines is.
# mypy: disallow-untyped-calls=False
"""
HTTP/1.1 connections with the deadlines and limits twisted.web lacks.

twisted.web's idle timeout (``Site(timeout=...)``) is reset by every byte a
client sends and is off while a response is being produced, and Twisted's
TLS has no handshake timeout. So, left alone, a client could hold a
connection for ever by finishing nothing: a handshake never completed, a
request sent a byte at a time ("slowloris"), a body that never ends, or a
response (a follow stream) it never reads. ``ApiChannel`` adds a deadline for
each, none of which traffic resets:

- handshake: from accept until the TLS handshake is done; then the
  connection is dropped (there is nothing to say in plain text);
- header: from a request's first byte until its last header line, and
- body: from its last header line until its last body byte; either way the
  client is answered 408 and the connection closed;
- stall: a response the client stops reading (the transport stays paused,
  its buffers full) for the idle timeout; then the connection is dropped,
  as no goodbye could get through.

It also answers headers over the size limits with 431 Request Header Fields
Too Large, where Twisted answers a bare 400 or, for one line over the limit,
closes without a word.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from zope.interface import implementer

from jobworker.auth.policy import Identity
from jobworker.http.audit import audit_refusal
from jobworker.http.settings import ApiSettings
from jobworker.tls import peer_common_name
from jobworker.wire import ErrorCode

REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


@implementer(IHandshakeListener)
class ApiChannel(HTTPChannel):
    """An ``HTTPChannel`` that enforces the settings' deadlines and limits."""

    log = Logger()
    # The TCP (or TLS) connection: typed loosely, as Twisted hands it over.
    transport: Any

    def __init__(self, settings: ApiSettings) -> None:
        super().__init__()
        self.settings = settings
        self.totalHeadersSize = settings.max_header_bytes
        # Twisted's per-line limit (LineReceiver) is otherwise a separate
        # 16 KiB: one line can never be longer than all of them together.
        self.MAX_LENGTH = settings.max_header_bytes
        self.maxHeaders = settings.max_headers
        self._deadline: IDelayedCall | None = None
        self._deadline_kind = ""
        # Set once the client has been refused: nothing more is read.
        self._refused = False
        self._peer: Identity | None = None
        self._peer_known = False

    # Deadlines

    def connectionMade(self) -> None:
        super().connectionMade()
        if ISSLTransport.providedBy(self.transport):
            self._arm("handshake", self.settings.handshake_timeout)

    def handshakeCompleted(self) -> None:
        self._disarm("handshake")

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        # The first byte of a request (line mode, no request in hand) starts
        # its header deadline; the bytes after it do not move it.
        if self._deadline is None and self.line_mode and not self._handlingRequest:
            self._arm("header", self.settings.header_timeout)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._disarm("header")
        super().allHeadersReceived()
        if self.length != 0:
            self._arm("body", self.settings.body_timeout)

    def allContentReceived(self) -> None:
        self._disarm("body")
        super().allContentReceived()

    def pauseProducing(self) -> None:
        # The transport's buffers are full: the client is not reading.
        if self._deadline is None:
            self._arm("stall", self.settings.idle_timeout)
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self._disarm("stall")
        super().resumeProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm(self._deadline_kind)
        super().connectionLost(reason)

    def _arm(self, kind: str, seconds: float | None) -> None:
        if seconds is None:
            return
        self._deadline_kind = kind
        clock: Any = self.callLater
        self._deadline = clock(seconds, self._expired, kind, seconds)

    def _disarm(self, kind: str) -> None:
        if self._deadline is not None and self._deadline_kind == kind:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _expired(self, kind: str, seconds: float) -> None:
        self._deadline = None
        self.log.info(
            "closing connection from {peer}: {kind} not done within {seconds} s",
            peer=str(self.transport.getPeer()),
            kind=kind,
            seconds=seconds,
        )
        if kind in ("handshake", "stall"):
            self.transport.abortConnection()
        else:
            self._refuse(
                408, ErrorCode.REQUEST_TIMEOUT, f"request {kind} not received in time"
            )

    def peer_identity(self) -> Identity | None:
        """
        Who the client is: its certificate's subject CN, read once per
        connection (the certificate cannot change: TLS 1.3 has no
        renegotiation, and post-handshake authentication is not offered).
        """
        if not self._peer_known:
            name = peer_common_name(self.transport)
            self._peer = None if name is None else Identity(name)
            self._peer_known = True
        return self._peer

    def _identity(self) -> str | None:
        """The client certificate's CN, for the audit line of a refusal."""
        identity = self.peer_identity()
        return None if identity is None else identity.name

    # Header limits

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        # The same sum Twisted checks after the fact, to answer 431 not 400.
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._too_large()
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted answers 400 and closes, but then goes on parsing the lines
        # it already has: over TLS the transport is not "disconnecting" until
        # the TLS close is done. The next blank line then finishes a request
        # whose first line never parsed, and raises. Read nothing more.
        if not self._refused:
            self._refused = True
            audit_refusal(self._identity(), 400)
        super()._respondToBadRequestAndDisconnect()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._too_large()

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse(
                431, ErrorCode.HEADERS_TOO_LARGE, f"more than {self.maxHeaders} headers"
            )
            return False
        ok: bool = super().headerReceived(line)
        return ok

    def _too_large(self) -> None:
        self._refuse(
            431,
            ErrorCode.HEADERS_TOO_LARGE,
            f"request line and headers over {self.totalHeadersSize} bytes",
        )

    def _refuse(self, status: int, code: ErrorCode, message: str) -> None:
        """Answer before any request exists (JSON, as the API's errors), close."""
        self._disarm(self._deadline_kind)
        if self._refused:
            return
        self._refused = True
        audit_refusal(self._identity(), status, code=code)
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n\r\n%s\n"
            % (status, REASONS[status], len(body) + 1, body)
        )
        # As Twisted's idle timeout does: give the answer time to leave, but
        # not for ever to a client that reads nothing.
        if self.abortTimeout is not None:
            clock: Any = self.callLater
            self._abortingCall = clock(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()
