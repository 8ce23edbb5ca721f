"""
The client library over real TLS on 127.0.0.1: a good certificate is
accepted, and each certificate problem and a closed port surfaces as the
client's error for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from jobworker.client import (
    CertificateRejected,
    ConnectionFailed,
    JobworkerClient,
    ServerNotTrusted,
)
from jobworker.tls import server_tls_options
from tests.pki_fixtures import DevPKI, Pair

pytest_plugins = ["tests.pki_fixtures"]

reactor: Any = global_reactor


class Health(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"status": "ok", "running_jobs": 0, "followers": 0}'


@pytest.fixture
def tls_server(dev_pki: DevPKI) -> Iterator[Callable[[Pair | None], int]]:
    ports: list[IListeningPort] = []

    def listen(pair: Pair | None = None) -> int:
        pair = pair or dev_pki.server
        options = server_tls_options(pair.cert, pair.key, dev_pki.ca)
        port = reactor.listenSSL(0, Site(Health()), options, interface="127.0.0.1")
        ports.append(port)
        return int(port.getHost().port)

    yield listen
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


async def health_over_tls(
    dev_pki: DevPKI, port: int, client: Pair, ca: Path | None = None
) -> None:
    client_ = JobworkerClient.from_files(
        reactor, f"https://127.0.0.1:{port}", ca or dev_pki.ca, client.cert, client.key
    )
    try:
        await client_.health()
    finally:
        await client_.close()


@pytest_twisted.ensureDeferred
async def test_tls_health_with_a_good_certificate(
    dev_pki: DevPKI, tls_server: Callable[[Pair | None], int]
) -> None:
    """from_files() builds a client that the server accepts."""
    await health_over_tls(dev_pki, tls_server(None), dev_pki.client("alice"))


@pytest.mark.parametrize("which", ["other_ca_client", "expired_client"])
@pytest_twisted.ensureDeferred
async def test_tls_refused_client_certificate(
    dev_pki: DevPKI, tls_server: Callable[[Pair | None], int], which: str
) -> None:
    """A client certificate the server refuses is CertificateRejected."""
    with pytest.raises(CertificateRejected, match="alert"):
        await health_over_tls(dev_pki, tls_server(None), getattr(dev_pki, which))


@pytest.mark.parametrize("which", ["other_ca_server", "wrong_host_server"])
@pytest_twisted.ensureDeferred
async def test_tls_untrusted_server(
    dev_pki: DevPKI, tls_server: Callable[[Pair | None], int], which: str
) -> None:
    """A server certificate from another CA or for another host: not trusted."""
    port = tls_server(getattr(dev_pki, which))
    with pytest.raises(ServerNotTrusted):
        await health_over_tls(dev_pki, port, dev_pki.client("alice"))


@pytest_twisted.ensureDeferred
async def test_tls_nothing_listening(dev_pki: DevPKI) -> None:
    """A port nobody listens on is ConnectionFailed."""
    port = reactor.listenTCP(0, Site(Health()), interface="127.0.0.1")
    number = port.getHost().port
    await port.stopListening()
    with pytest.raises(ConnectionFailed, match="refused"):
        await health_over_tls(dev_pki, number, dev_pki.client("alice"))
