"""
Writing an answer: a JSON body (or none, for 204), or an error as JSON; never
to a client that has gone, and never a second answer on one request.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.server import Request

from jobworker.http.errors import HTTPError
from jobworker.http.request import client_gone

JSON = b"application/json"
OCTETS = b"application/octet-stream"


def send_json(request: Request, status: int, body: Any) -> None:
    """Answer ``status`` with ``body`` as JSON (no body for 204)."""
    if client_gone(request):
        return
    data = b"" if status == 204 else json.dumps(body).encode() + b"\n"
    request.setResponseCode(status)
    if data:
        request.setHeader(b"Content-Type", JSON)
    request.setHeader(b"Content-Length", str(len(data)).encode())
    request.write(data)
    request.finish()


def send_error(request: Request, error: HTTPError) -> None:
    """Answer ``error``; cut the connection if an answer had begun already."""
    if client_gone(request):
        return
    if request.finished or request.startedWriting:
        request.loseConnection()
        return
    for name, value in error.headers.items():
        request.setHeader(name, value)
    send_json(request, error.status, error.body())
