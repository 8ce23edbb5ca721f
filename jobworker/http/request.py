"""
The request the site makes for each HTTP request: one that will not store a
body over the limit, and that knows when its client has gone.

twisted.web reads the whole body before a resource sees the request; this
request drops the bytes past ``max_body`` as they arrive, and the handler
that reads the body answers 413. Any other request (a test's, a stub's) has
no such limit and is taken as still connected.
"""

from __future__ import annotations

from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from jobworker.http.settings import MiB


class ApiRequest(Request):
    """A request with a body limit (``max_body``) that knows its client left."""

    max_body = MiB
    body_too_large = False
    client_gone = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.body_too_large = True
            length = 0  # keep it in memory: nothing of it will be stored
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.max_body:
            self.body_too_large = True
        if not self.body_too_large:
            super().handleContentChunk(data)

    def connectionLost(self, reason: Failure) -> None:
        self.client_gone = True
        super().connectionLost(reason)


def request_factory(max_body: int) -> type[Request]:
    """The ``ApiRequest`` class a site makes, for bodies up to ``max_body``."""
    return type("ApiRequest", (ApiRequest,), {"max_body": max_body})


def body_too_large(request: IRequest) -> bool:
    return isinstance(request, ApiRequest) and request.body_too_large


def client_gone(request: IRequest) -> bool:
    return isinstance(request, ApiRequest) and request.client_gone
