"""
TLS for both ends of the API, following Mozilla's "modern" profile.

- TLS 1.3 only. Its cipher suites are all AEAD, and TLS 1.3 has neither
  compression nor renegotiation, so no options are needed to switch those off.
- Key exchange only over X25519MLKEM768 (where the linked OpenSSL has it),
  X25519, P-256 and P-384: nothing else (no X448, P-521 or finite-field
  groups), on both ends.
- Mutual authentication: the server requires a client certificate signed by
  the client CA; the client checks the server's certificate against its CA and
  the host name it dialled (service_identity, via ``optionsForClientTLS``).

Certificates and keys are read and checked when the options are built, so a
bad file stops the server at start-up with one line naming the file, never at
the first connection.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    ISSLTransport,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

if TYPE_CHECKING:
    # Twisted defines this interface only in a private module.
    from twisted.internet._sslverify import IOpenSSLTrustRoot

StrPath = str | os.PathLike[str]
# The kinds of private key pyOpenSSL can hand to OpenSSL for a certificate.
_Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

# Most preferred first. The hybrid post-quantum group needs OpenSSL 3.5 or
# later; where the linked OpenSSL lacks it the others are used alone.
POST_QUANTUM_GROUPS = ("X25519MLKEM768",)
CLASSICAL_GROUPS = ("X25519", "P-256", "P-384")

# Both ends: nothing older and nothing newer than TLS 1.3, so that a future
# protocol version is a deliberate change here rather than a silent upgrade.
TLS_1_3_ONLY = {
    "raiseMinimumTo": TLSVersion.TLSv1_3,
    "lowerMaximumSecurityTo": TLSVersion.TLSv1_3,
}


class TLSConfigError(Exception):
    """A certificate, key or CA file cannot be used; the message names it."""


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ServerTLSOptions:
    """
    Makes every server-side TLS connection from one checked context.

    Twisted's ``CertificateOptions`` builds the context (trust root, client
    certificate requirement, protocol versions); this class adds what it has
    no setting for, the key-exchange groups, and makes sure that every
    connection uses that restricted context. ALPN is not offered: the API
    speaks HTTP/1.1 only.
    """

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        return SSL.Connection(self._context, None)

    def getContext(self) -> SSL.Context:
        return self._context


@implementer(IOpenSSLClientConnectionCreator)
class _GroupRestrictingCreator:
    """Restricts the key-exchange groups of each connection ``creator`` makes."""

    def __init__(self, creator: IOpenSSLClientConnectionCreator) -> None:
        self._creator = creator

    def clientConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        connection = self._creator.clientConnectionForTLS(tlsProtocol)
        _set_groups(connection, allowed_groups())
        return connection


@implementer(IPolicyForHTTPS)
class ClientTLSPolicy:
    """
    A policy for treq's and twisted.web's ``Agent``: trust only the jobworker
    CA, check the server's host name, and present our client certificate.
    """

    def __init__(
        self, trust_root: IOpenSSLTrustRoot, identity: PrivateCertificate
    ) -> None:
        self._trust_root = trust_root
        self._identity = identity

    def creatorForNetloc(
        self, hostname: bytes, port: int
    ) -> IOpenSSLClientConnectionCreator:
        # optionsForClientTLS checks an IP address against the certificate's
        # IP address SANs and a name against its DNS SANs (service_identity).
        creator = optionsForClientTLS(
            hostname.decode("ascii"),
            trustRoot=self._trust_root,
            clientCertificate=self._identity,
            extraCertificateOptions=dict(TLS_1_3_ONLY),
        )
        return _GroupRestrictingCreator(creator)


def server_tls_options(
    cert_path: StrPath, key_path: StrPath, ca_path: StrPath
) -> ServerTLSOptions:
    """
    Server options: TLS 1.3, our groups, and a client certificate signed by
    the CA in ``ca_path`` required of every client.

    Raises ``TLSConfigError`` naming the file when one cannot be used.
    """
    chain = _load_certificates(cert_path, "server certificate")
    key = _load_key(key_path, cert_path, chain[0])
    authorities = _load_authorities(ca_path, "client CA certificate")
    options = CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
        trustRoot=_trust_root(authorities),
        **TLS_1_3_ONLY,
    )
    context = _build(options.getContext, cert_path)
    _set_groups(context, allowed_groups())
    return ServerTLSOptions(context)


def client_tls_policy(
    ca_path: StrPath, cert_path: StrPath, key_path: StrPath
) -> ClientTLSPolicy:
    """
    A policy for ``Agent(reactor, contextFactory=...)`` that trusts the CA in
    ``ca_path`` and presents the certificate and key given.

    Raises ``TLSConfigError`` naming the file when one cannot be used.
    """
    authorities = _load_authorities(ca_path, "CA certificate")
    chain = _load_certificates(cert_path, "client certificate")
    key = _load_key(key_path, cert_path, chain[0])
    return ClientTLSPolicy(
        _trust_root(authorities), _private_certificate(chain[0], key)
    )


def peer_common_name(transport: object) -> str | None:
    """
    The subject CN of the peer's certificate on a TLS transport, or None if
    there is no TLS, no certificate, or not exactly one CN.

    On the server the certificate has been verified against the client CA
    before any request arrives: the handshake fails otherwise.
    """
    tls = ISSLTransport(transport, None)
    if tls is None:
        return None
    peer = tls.getPeerCertificate()
    if not isinstance(peer, crypto.X509):
        return None
    return _common_name(peer.to_cryptography())


def certificate_common_name(path: StrPath, what: str = "certificate") -> str | None:
    """
    The subject CN of the first certificate in the PEM file ``path``: the
    identity a server takes its holder for. None if it has not exactly one.

    Raises ``TLSConfigError`` naming the file (as ``what``) when it cannot
    be read or holds no PEM certificate.
    """
    return _common_name(_load_certificates(path, what)[0])


def _common_name(certificate: x509.Certificate) -> str | None:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    # Two CNs would make the identity ambiguous: deny rather than pick one.
    if len(names) != 1:
        return None
    name = names[0].value
    return name if isinstance(name, str) and name else None


@cache
def allowed_groups() -> tuple[str, ...]:
    """The key-exchange groups we offer and accept, as OpenSSL names them."""
    probe = SSL.Context(SSL.TLS_METHOD)
    try:
        _set_groups(probe, POST_QUANTUM_GROUPS + CLASSICAL_GROUPS)
    except TLSConfigError:
        return CLASSICAL_GROUPS
    return POST_QUANTUM_GROUPS + CLASSICAL_GROUPS


def _set_groups(target: SSL.Context | SSL.Connection, groups: tuple[str, ...]) -> None:
    """
    Restrict ``target`` to the key-exchange ``groups``.

    pyOpenSSL has no public call for this (``set_tmp_ecdh`` takes a single EC
    curve and cannot name X25519 or hybrid groups), so we call OpenSSL's
    ``SSL_CTX_set1_groups_list`` through the binding pyOpenSSL itself uses,
    under its older name ``set1_curves_list`` (the same control in OpenSSL).
    The tests check the result from outside, by offering groups.
    """
    from OpenSSL.SSL import _lib  # type: ignore[attr-defined]

    names = ":".join(groups).encode("ascii")
    if isinstance(target, SSL.Context):
        ok = _lib.SSL_CTX_set1_curves_list(target._context, names)
    else:
        ok = _lib.SSL_set1_curves_list(target._ssl, names)
    if ok != 1:
        _lib.ERR_clear_error()
        raise TLSConfigError(f"this OpenSSL cannot use the groups {names.decode()}")


# Twisted's TLS helpers are not annotated yet; these wrappers give them types.


def _trust_root(authorities: list[x509.Certificate]) -> IOpenSSLTrustRoot:
    certificates = [
        Certificate(crypto.X509.from_cryptography(c))  # type: ignore[no-untyped-call]
        for c in authorities
    ]
    root: IOpenSSLTrustRoot = trustRootFromCertificates(certificates)  # type: ignore[no-untyped-call]
    return root


def _private_certificate(cert: x509.Certificate, key: _Key) -> PrivateCertificate:
    private: PrivateCertificate = PrivateCertificate.fromCertificateAndKeyPair(  # type: ignore[no-untyped-call]
        Certificate(crypto.X509.from_cryptography(cert)),  # type: ignore[no-untyped-call]
        KeyPair(crypto.PKey.from_cryptography_key(key)),  # type: ignore[no-untyped-call]
    )
    return private


def _build(make: Callable[[], SSL.Context], cert_path: StrPath) -> SSL.Context:
    try:
        return make()
    except SSL.Error as e:
        raise TLSConfigError(f"cannot use {os.fspath(cert_path)}: {e}") from None


def _read(path: StrPath, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(
            f"cannot read {what} {os.fspath(path)}: {e.strerror}"
        ) from None


def _load_certificates(path: StrPath, what: str) -> list[x509.Certificate]:
    """Every certificate in a PEM file, in order (a leaf and its chain)."""
    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigError(
            f"{what} {os.fspath(path)} is not a PEM certificate"
        ) from None
    return certificates


def _load_authorities(path: StrPath, what: str) -> list[x509.Certificate]:
    """CA certificates: a leaf given by mistake is refused here, not later."""
    authorities = _load_certificates(path, what)
    for certificate in authorities:
        try:
            is_ca = certificate.extensions.get_extension_for_class(
                x509.BasicConstraints
            ).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            subject = certificate.subject.rfc4514_string()
            raise TLSConfigError(
                f"{what} {os.fspath(path)} holds {subject}, which is not a CA"
            )
    return authorities


def _load_key(path: StrPath, cert_path: StrPath, certificate: x509.Certificate) -> _Key:
    """The private key in ``path``, checked to belong to ``certificate``."""
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(
            f"private key {os.fspath(path)} is encrypted; give an unencrypted key"
        ) from None
    except ValueError:
        raise TLSConfigError(
            f"private key {os.fspath(path)} is not a PEM private key"
        ) from None
    if not isinstance(key, _Key):
        raise TLSConfigError(
            f"private key {os.fspath(path)} is of a kind TLS cannot use here; "
            "use an ECDSA, RSA or Ed25519 key"
        )
    if _spki(key.public_key()) != _spki(certificate.public_key()):
        raise TLSConfigError(
            f"private key {os.fspath(path)} does not match the certificate "
            f"{os.fspath(cert_path)}"
        )
    return key


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
