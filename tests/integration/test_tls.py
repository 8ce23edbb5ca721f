"""
Real TLS on 127.0.0.1: the server's and the client's options against each
other and against deliberately weaker or wrongly configured peers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)
from OpenSSL import SSL
from service_identity import VerificationError
from treq.client import HTTPClient
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IHandshakeListener,
    IListeningPort,
    IOpenSSLClientConnectionCreator,
)
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseNeverReceived,
    readBody,
)
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from jobworker.tls import (
    CLASSICAL_GROUPS,
    POST_QUANTUM_GROUPS,
    TLSConfigError,
    _set_groups,
    allowed_groups,
    client_tls_policy,
    peer_common_name,
    server_tls_options,
)
from tests.pki_fixtures import DevPKI, Pair

# The session's PKI fixture, dev_pki, lives in a module that API tests share.
pytest_plugins = ["tests.pki_fixtures"]

reactor: Any = global_reactor
ALERT = re.compile(r"^(sslv3|tlsv1|tlsv13|tls) alert ")
# How OpenSSL reports a negotiated group (in either case, depending on the
# version and the end), by the name we configure it with.
NEGOTIATED_NAME = {
    "X25519MLKEM768": "x25519mlkem768",
    "X25519": "x25519",
    "P-256": "secp256r1",
    "P-384": "secp384r1",
}


class PeerInfo(Resource):
    """Answers with what the server saw of the connection."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        transport: Any = request.channel.transport
        connection = transport.getHandle()
        return json.dumps(
            {
                "cn": peer_common_name(transport),
                "protocol": connection.get_protocol_version_name(),
                "group": connection.get_group_name(),
            }
        ).encode()


Listen = Callable[..., int]


@pytest.fixture
def listen(dev_pki: DevPKI) -> Iterator[Listen]:
    """Serve PeerInfo with our server options; ports close after the test."""
    ports: list[IListeningPort] = []

    def start(server: Pair | None = None, interface: str = "127.0.0.1") -> int:
        pair = server or dev_pki.server
        options = server_tls_options(pair.cert, pair.key, dev_pki.ca)
        port = reactor.listenSSL(0, Site(PeerInfo()), options, interface=interface)
        ports.append(port)
        number: int = port.getHost().port
        return number

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


async def get(policy: IPolicyForHTTPS, url: str) -> tuple[int, dict[str, Any]]:
    """GET ``url`` with treq over a fresh connection; the status and JSON."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
    response = await client.get(url)
    body = await response.json()
    return response.code, body


async def refusal(policy: IPolicyForHTTPS, url: str) -> list[str]:
    """The OpenSSL reasons a request failed with (it must fail)."""
    with pytest.raises(ResponseNeverReceived) as caught:
        await get(policy, url)
    return ssl_reasons(caught.value.reasons)


def ssl_reasons(failures: list[Failure | None]) -> list[str]:
    """
    OpenSSL's reasons for the failures, with the protocol prefix of received
    alerts removed ("sslv3 alert", "tls alert", ... differ between versions).
    """
    reasons = []
    for failure in failures:
        error = None if failure is None else failure.value
        assert isinstance(error, SSL.Error), failure
        reasons += [ALERT.sub("alert ", r) for _, _, r in error.args[0]]
    return reasons


# A hand-made client: any context we like, so it can be weaker than ours.


@implementer(IHandshakeListener)
class RawRequest(Protocol):
    """Sends one HTTP/1.0 GET; records the handshake and what came back."""

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self.data = b""
        self.protocol: str | None = None
        self.group: str | None = None

    def connectionMade(self) -> None:
        self.transport.write(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")  # type: ignore[union-attr]

    def handshakeCompleted(self) -> None:
        connection = self.transport.getHandle()  # type: ignore[union-attr]
        self.protocol = connection.get_protocol_version_name()
        self.group = connection.get_group_name()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.reason = reason
        self.done.callback(None)


@implementer(IOpenSSLClientConnectionCreator)
class RawCreator:
    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def clientConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_tlsext_host_name(b"localhost")
        return connection


def raw_context(
    pki: DevPKI,
    client: Pair | None,
    groups: tuple[str, ...] | None = None,
    max_version: int = SSL.TLS1_3_VERSION,
) -> SSL.Context:
    """A client context that trusts our CA, with the given weaknesses."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.load_verify_locations(str(pki.ca))
    context.set_verify(SSL.VERIFY_PEER)
    context.set_max_proto_version(max_version)
    if client is not None:
        context.use_certificate_file(str(client.cert))
        context.use_privatekey_file(str(client.key))
    if groups is not None:
        _set_groups(context, groups)
    return context


async def raw_exchange(port: int, context: SSL.Context) -> RawRequest:
    """One request from a client using ``context``; ``reason`` says how it ended."""
    request = RawRequest()
    endpoint = wrapClientTLS(
        RawCreator(context), TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    )
    try:
        await connectProtocol(endpoint, request)
    except SSL.Error:
        # The handshake failed before the connection was made.
        request.reason = Failure()
        return request
    await request.done.addTimeout(10, reactor)
    return request


async def raw_failure(port: int, context: SSL.Context) -> list[str]:
    """The OpenSSL reasons a raw request failed with (it must fail)."""
    request = await raw_exchange(port, context)
    assert request.data == b""
    return ssl_reasons([request.reason])


# The happy path.


@pytest.mark.parametrize("user", ["alice", "bob", "charlie"])
@pytest_twisted.ensureDeferred
async def test_client_is_identified_by_its_certificate_cn(
    dev_pki: DevPKI,
    listen: Listen,
    user: str,
) -> None:
    """A client with a certificate from our CA gets 200 and its CN is seen."""
    port = listen()
    code, body = await get(dev_pki.client_policy(user), f"https://localhost:{port}/")
    assert (code, body["cn"]) == (200, user)


@pytest_twisted.ensureDeferred
async def test_connection_is_tls_1_3_over_the_preferred_group(
    dev_pki: DevPKI,
    listen: Listen,
) -> None:
    """Our client and server speak TLS 1.3 over our most preferred group."""
    port = listen()
    _, body = await get(dev_pki.client_policy("alice"), f"https://localhost:{port}/")
    assert body["protocol"] == "TLSv1.3"
    assert body["group"].lower() == NEGOTIATED_NAME[allowed_groups()[0]]


def test_post_quantum_group_is_used_where_openssl_has_it() -> None:
    """X25519MLKEM768 leads the list exactly when the linked OpenSSL has it."""
    probe = SSL.Context(SSL.TLS_METHOD)
    try:
        _set_groups(probe, POST_QUANTUM_GROUPS)
    except TLSConfigError:
        assert allowed_groups() == CLASSICAL_GROUPS
    else:
        assert allowed_groups() == ("X25519MLKEM768", "X25519", "P-256", "P-384")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest_twisted.ensureDeferred
async def test_client_accepts_a_server_by_ip_address_or_name(
    dev_pki: DevPKI,
    listen: Listen,
    host: str,
) -> None:
    """The server certificate's IP and DNS SANs each satisfy the client."""
    port = listen()
    code, body = await get(dev_pki.client_policy("alice"), f"https://{host}:{port}/")
    assert (code, body["cn"]) == (200, "alice")


@pytest_twisted.ensureDeferred
async def test_client_accepts_a_server_by_ipv6_address(
    dev_pki: DevPKI,
    listen: Listen,
) -> None:
    """An IPv6 literal is checked against the certificate's IP SANs."""
    port = listen(interface="::1")
    # Agent itself: treq cannot parse a URL with an IPv6 literal (it hands the
    # address to IDNA encoding).
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, contextFactory=dev_pki.client_policy("alice"), pool=pool)
    response = await agent.request(b"GET", f"https://[::1]:{port}/".encode())
    body = json.loads(await readBody(response))
    assert (response.code, body["cn"]) == (200, "alice")


# The server refuses clients it should not trust.


@pytest_twisted.ensureDeferred
async def test_client_without_a_certificate_is_refused(
    dev_pki: DevPKI,
    listen: Listen,
) -> None:
    """No client certificate: the server ends the handshake, answering nothing."""
    port = listen()
    trust = Certificate.loadPEM(dev_pki.ca.read_bytes())
    policy = BrowserLikePolicyForHTTPS(trustRoot=trust)
    reasons = await refusal(policy, f"https://localhost:{port}/")
    assert reasons == ["alert certificate required"]


@pytest_twisted.ensureDeferred
async def test_client_certificate_from_another_ca_is_refused(
    dev_pki: DevPKI,
    listen: Listen,
) -> None:
    """A certificate for "alice" signed by another CA is refused."""
    port = listen()
    pair = dev_pki.other_ca_client
    policy = client_tls_policy(dev_pki.ca, pair.cert, pair.key)
    reasons = await refusal(policy, f"https://localhost:{port}/")
    assert reasons == ["alert unknown ca"]


@pytest_twisted.ensureDeferred
async def test_expired_client_certificate_is_refused(
    dev_pki: DevPKI,
    listen: Listen,
) -> None:
    """A certificate from our CA that has expired is refused."""
    port = listen()
    pair = dev_pki.expired_client
    policy = client_tls_policy(dev_pki.ca, pair.cert, pair.key)
    reasons = await refusal(policy, f"https://localhost:{port}/")
    assert reasons == ["alert certificate expired"]


@pytest_twisted.ensureDeferred
async def test_server_certificate_used_as_a_client_certificate_is_refused(
    dev_pki: DevPKI,
    listen: Listen,
) -> None:
    """A certificate without the clientAuth purpose cannot authenticate."""
    port = listen()
    pair = dev_pki.server
    policy = client_tls_policy(dev_pki.ca, pair.cert, pair.key)
    reasons = await refusal(policy, f"https://localhost:{port}/")
    assert reasons == ["alert unsupported certificate"]


@pytest_twisted.ensureDeferred
async def test_tls_1_2_client_is_refused(
    dev_pki: DevPKI,
    listen: Listen,
) -> None:
    """A client that cannot speak TLS 1.3 fails the handshake."""
    port = listen()
    context = raw_context(
        dev_pki, dev_pki.client("alice"), max_version=SSL.TLS1_2_VERSION
    )
    reasons = await raw_failure(port, context)
    assert reasons == ["alert protocol version"]


@pytest.mark.parametrize("group", ["X25519", "P-256", "P-384", "X25519MLKEM768"])
@pytest_twisted.ensureDeferred
async def test_each_allowed_group_is_accepted(
    dev_pki: DevPKI,
    listen: Listen,
    group: str,
) -> None:
    """A client offering only one of our groups gets TLS 1.3 over it."""
    if group not in allowed_groups():
        pytest.skip(f"the linked OpenSSL has no {group}")
    port = listen()
    context = raw_context(dev_pki, dev_pki.client("alice"), groups=(group,))
    request = await raw_exchange(port, context)
    assert request.protocol == "TLSv1.3"
    assert request.group is not None
    assert request.group.lower() == NEGOTIATED_NAME[group]
    assert request.data.startswith(b"HTTP/1.0 200 OK\r\n")
    assert json.loads(request.data.split(b"\r\n\r\n", 1)[1])["cn"] == "alice"


@pytest.mark.parametrize("group", ["X448", "P-521", "ffdhe2048", "ffdhe4096"])
@pytest_twisted.ensureDeferred
async def test_other_groups_are_refused(
    dev_pki: DevPKI,
    listen: Listen,
    group: str,
) -> None:
    """A client offering only a group outside the profile fails the handshake."""
    port = listen()
    context = raw_context(dev_pki, dev_pki.client("alice"), groups=(group,))
    reasons = await raw_failure(port, context)
    assert reasons == ["alert handshake failure"]


# The client refuses servers it should not trust.


@pytest.mark.parametrize(
    ("host", "mismatch"),
    [("localhost", "DNSMismatch"), ("127.0.0.1", "IPAddressMismatch")],
)
@pytest_twisted.ensureDeferred
async def test_client_refuses_a_server_certificate_for_another_host(
    dev_pki: DevPKI,
    listen: Listen,
    host: str,
    mismatch: str,
) -> None:
    """A certificate from our CA but for another name fails host checking."""
    port = listen(dev_pki.wrong_host_server)
    with pytest.raises(ResponseNeverReceived) as caught:
        await get(dev_pki.client_policy("alice"), f"https://{host}:{port}/")
    [failure] = caught.value.reasons
    assert failure.check(VerificationError)
    assert [type(e).__name__ for e in failure.value.errors] == [mismatch]


@pytest_twisted.ensureDeferred
async def test_client_refuses_a_server_from_another_ca(
    dev_pki: DevPKI,
    listen: Listen,
) -> None:
    """A server certificate for the right name but from another CA is refused."""
    port = listen(dev_pki.other_ca_server)
    reasons = await refusal(
        dev_pki.client_policy("alice"), f"https://localhost:{port}/"
    )
    assert reasons == ["certificate verify failed"]


@pytest_twisted.ensureDeferred
async def test_client_does_not_offer_groups_outside_the_profile(
    dev_pki: DevPKI,
) -> None:
    """Our client refuses a server that will only use X448."""
    options = server_tls_options(dev_pki.server.cert, dev_pki.server.key, dev_pki.ca)
    _set_groups(options.getContext(), ("X448",))
    port = reactor.listenSSL(0, Site(PeerInfo()), options, interface="127.0.0.1")
    try:
        reasons = await refusal(
            dev_pki.client_policy("alice"),
            f"https://localhost:{port.getHost().port}/",
        )
    finally:
        await port.stopListening()
    # The server's alert: our client offered no group it would take.
    assert reasons == ["alert handshake failure"]


# Files that cannot be used stop everything with one line naming the file.


def server_error(cert: Path, key: Path, ca: Path) -> str:
    with pytest.raises(TLSConfigError) as caught:
        server_tls_options(cert, key, ca)
    return str(caught.value)


def client_error(ca: Path, cert: Path, key: Path) -> str:
    with pytest.raises(TLSConfigError) as caught:
        client_tls_policy(ca, cert, key)
    return str(caught.value)


def test_missing_server_certificate_is_named(
    dev_pki: DevPKI,
    tmp_path: Path,
) -> None:
    """A missing certificate file is reported with its path and the OS error."""
    missing = tmp_path / "nope.pem"
    error = server_error(missing, dev_pki.server.key, dev_pki.ca)
    assert (
        error == f"cannot read server certificate {missing}: No such file or directory"
    )


def test_unreadable_key_is_named(dev_pki: DevPKI, tmp_path: Path) -> None:
    """A key that is a directory cannot be read; the error says which."""
    error = server_error(dev_pki.server.cert, tmp_path, dev_pki.ca)
    assert error == f"cannot read private key {tmp_path}: Is a directory"


def test_malformed_certificate_is_named(dev_pki: DevPKI, tmp_path: Path) -> None:
    """A file that holds no PEM certificate is reported as such."""
    bad = tmp_path / "server.pem"
    bad.write_text("hello\n")
    error = server_error(bad, dev_pki.server.key, dev_pki.ca)
    assert error == f"server certificate {bad} is not a PEM certificate"


def test_key_given_as_certificate_is_named(dev_pki: DevPKI) -> None:
    """Swapping --cert and --key is caught at once."""
    pair = dev_pki.server
    error = server_error(pair.key, pair.cert, dev_pki.ca)
    assert error == f"server certificate {pair.key} is not a PEM certificate"


def test_malformed_ca_is_named(dev_pki: DevPKI, tmp_path: Path) -> None:
    """An empty CA file is reported with its path."""
    empty = tmp_path / "ca.pem"
    empty.write_text("")
    pair = dev_pki.server
    error = server_error(pair.cert, pair.key, empty)
    assert error == f"client CA certificate {empty} is not a PEM certificate"


def test_leaf_given_as_ca_is_refused(dev_pki: DevPKI) -> None:
    """A server certificate passed as the CA is caught at start-up."""
    pair = dev_pki.server
    error = server_error(pair.cert, pair.key, pair.cert)
    assert error == (
        f"client CA certificate {pair.cert} holds CN=localhost, which is not a CA"
    )


def test_malformed_key_is_named(dev_pki: DevPKI, tmp_path: Path) -> None:
    """A key file without a PEM key is reported with its path."""
    bad = tmp_path / "server.key"
    bad.write_bytes(dev_pki.server.cert.read_bytes())
    error = server_error(dev_pki.server.cert, bad, dev_pki.ca)
    assert error == f"private key {bad} is not a PEM private key"


def test_encrypted_key_is_named(dev_pki: DevPKI, tmp_path: Path) -> None:
    """A key that needs a passphrase cannot be used by a service; say so."""
    key = load_pem_private_key(dev_pki.server.key.read_bytes(), None)
    encrypted = tmp_path / "server.key"
    encrypted.write_bytes(
        key.private_bytes(
            Encoding.PEM,
            PrivateFormat.PKCS8,
            BestAvailableEncryption(b"secret"),
        )
    )
    error = server_error(dev_pki.server.cert, encrypted, dev_pki.ca)
    assert error == f"private key {encrypted} is encrypted; give an unencrypted key"


def test_key_of_another_certificate_is_refused(dev_pki: DevPKI) -> None:
    """A key that does not belong to the certificate names both files."""
    key = dev_pki.client("alice").key
    error = server_error(dev_pki.server.cert, key, dev_pki.ca)
    assert error == (
        f"private key {key} does not match the certificate {dev_pki.server.cert}"
    )


def test_client_files_are_checked_like_the_server_files(
    dev_pki: DevPKI,
    tmp_path: Path,
) -> None:
    """The client policy reports a bad CA, certificate or key by name."""
    alice = dev_pki.client("alice")
    missing = tmp_path / "ca.pem"
    assert client_error(missing, alice.cert, alice.key) == (
        f"cannot read CA certificate {missing}: No such file or directory"
    )
    assert client_error(dev_pki.ca, alice.key, alice.key) == (
        f"client certificate {alice.key} is not a PEM certificate"
    )
    bob_key = dev_pki.client("bob").key
    assert client_error(dev_pki.ca, alice.cert, bob_key) == (
        f"private key {bob_key} does not match the certificate {alice.cert}"
    )


def test_peer_common_name_without_tls_is_none() -> None:
    """A transport that is not TLS has no identity."""
    assert peer_common_name(object()) is None
