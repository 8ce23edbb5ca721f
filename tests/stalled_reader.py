"""A client that asks for output, then stops reading it."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path


def ask_then_stop_reading(
    certs: Path, port: int, path: str, release: threading.Event
) -> None:
    """
    GET ``path`` from 127.0.0.1:``port`` as alice over mutual TLS, with a
    small receive buffer; read the first bytes of the answer, then nothing
    more until ``release`` is set (30 s at most). Blocks: run it in a thread.
    """
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.load_cert_chain(certs / "alice.pem", certs / "alice.key")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        tls.recv(1024)
        release.wait(30)
