"""
A small blocking HTTPS/1.1 client for load: one kept-alive TLS connection,
bodies streamed to a callback.

It is deliberately not the project's treq client: a benchmark must not be
limited by its own client, so this one does nothing per request beyond
sending the request and parsing the head, and hands body bytes to the caller
as memoryviews straight from the receive buffer. Several of these run in
threads (the ssl module releases the GIL while it waits and decrypts) and in
separate processes when one process is not enough.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECV_SIZE = 256 * 1024


@dataclass(frozen=True)
class Credentials:
    """Where the client's certificate, key and the CA are."""

    ca: Path
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_verify_locations(self.ca)
        context.load_cert_chain(self.cert, self.key)
        return context


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


class HTTPError(Exception):
    pass


class Connection:
    """One kept-alive HTTPS connection to the server."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        timeout: float = 60.0,
    ) -> None:
        self.host = host
        raw = socket.create_connection((host, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)
        self._start = 0  # unread bytes are _buf[_start:_end]
        self._end = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Requests

    def send(self, method: str, path: str, body: bytes | None = None) -> None:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        data = (head + "\r\n").encode("ascii") + (body or b"")
        self.sock.sendall(data)

    def request(self, method: str, path: str, body: Any = None) -> Response:
        """Send a request and read the whole response."""
        payload = None if body is None else json.dumps(body).encode()
        self.send(method, path, payload)
        pieces: list[bytes] = []
        response = self.read_response(lambda piece: pieces.append(bytes(piece)))
        response.body = b"".join(pieces)
        return response

    def stream(
        self, method: str, path: str, sink: Callable[[memoryview], None]
    ) -> Response:
        """Send a request and hand its body to ``sink`` piece by piece."""
        self.send(method, path)
        return self.read_response(sink)

    def read_response(self, sink: Callable[[memoryview], None]) -> Response:
        status_line = self._readline()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HTTPError(f"bad status line {status_line!r}")
        response = Response(int(parts[1]))
        while True:
            line = self._readline()
            if not line:
                break
            name, _, value = line.partition(b":")
            response.headers[name.decode("latin-1").lower()] = value.strip().decode(
                "latin-1"
            )
        headers = response.headers
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._readline().split(b";")[0], 16)
                if size == 0:
                    while self._readline():  # trailers
                        pass
                    break
                self._read_exact(size, sink)
                if self._readline():
                    raise HTTPError("chunk not followed by CRLF")
        elif "content-length" in headers:
            self._read_exact(int(headers["content-length"]), sink)
        else:
            raise HTTPError("response without length")
        return response

    # Reading

    def _fill(self) -> None:
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf):
            # Move what is unread to the front to make room.
            unread = self._end - self._start
            self._buf[:unread] = self._buf[self._start : self._end]
            self._start, self._end = 0, unread
        got = self.sock.recv_into(self._view[self._end :])
        if got == 0:
            raise ConnectionError("server closed the connection")
        self._end += got

    def _readline(self) -> bytes:
        while True:
            at = self._buf.find(b"\r\n", self._start, self._end)
            if at >= 0:
                line = bytes(self._buf[self._start : at])
                self._start = at + 2
                return line
            if self._end - self._start > 65536:
                raise HTTPError("header line too long")
            self._fill()

    def _read_exact(self, length: int, sink: Callable[[memoryview], None]) -> None:
        while length > 0:
            if self._start == self._end:
                self._start = self._end = 0
                got = self.sock.recv_into(self._view, min(length, len(self._buf)))
                if got == 0:
                    raise ConnectionError("server closed the connection")
                self._end = got
            take = min(length, self._end - self._start)
            sink(self._view[self._start : self._start + take])
            self._start += take
            length -= take
