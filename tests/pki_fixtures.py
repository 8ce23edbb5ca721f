"""
A development PKI minted once per test session, for tests that speak real TLS.

A test module uses it by naming this module as a plugin, then asking for the
``dev_pki`` fixture::

    pytest_plugins = ["tests.pki_fixtures"]

Besides the PKI ``gen-certs`` writes (CA, server, alice, bob, charlie) it
holds the certificates unhappy-path tests need: a client certificate for
"alice" signed by another CA, an expired one for "alice", a server certificate
for another host name, and a server certificate from another CA.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobworker.pki import (
    CertifiedKey,
    load_certified_key,
    make_ca,
    make_client_cert,
    make_server_cert,
    write_dev_pki,
)
from jobworker.tls import ClientTLSPolicy, client_tls_policy

USERS = ("alice", "bob", "charlie")
HOSTNAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Pair:
    """Where a certificate and its key were written."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class DevPKI:
    """Paths of the session's certificates; every pair is PEM on disk."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server(self) -> Pair:
        return self.pair("server")

    def client(self, name: str) -> Pair:
        """One of the users' pairs: alice, bob or charlie."""
        return self.pair(name)

    @property
    def other_ca(self) -> Path:
        return self.directory / "other-ca.pem"

    @property
    def other_ca_client(self) -> Pair:
        """A certificate for "alice" that the other CA signed."""
        return self.pair("other-ca-alice")

    @property
    def expired_client(self) -> Pair:
        """A certificate for "alice" from our CA that expired yesterday."""
        return self.pair("expired-alice")

    @property
    def wrong_host_server(self) -> Pair:
        """A server certificate from our CA for another host only."""
        return self.pair("wrong-host-server")

    @property
    def other_ca_server(self) -> Pair:
        """A server certificate for localhost that the other CA signed."""
        return self.pair("other-ca-server")

    def pair(self, name: str) -> Pair:
        return Pair(self.directory / f"{name}.pem", self.directory / f"{name}.key")

    def client_policy(self, name: str) -> ClientTLSPolicy:
        """A client TLS policy presenting ``name``'s certificate."""
        pair = self.client(name)
        return client_tls_policy(self.ca, pair.cert, pair.key)


def make_dev_pki(directory: Path) -> DevPKI:
    """Write the whole test PKI into ``directory``."""
    write_dev_pki(directory, users=USERS, hostnames=HOSTNAMES)
    pki = DevPKI(directory)
    ca = load_certified_key(pki.ca, directory / "ca.key")
    other_ca = make_ca("another CA")
    pki.other_ca.write_bytes(other_ca.cert_pem())
    now = datetime.datetime.now(datetime.UTC)
    expired = make_client_cert(
        ca,
        "alice",
        not_before=now - datetime.timedelta(days=10),
        not_after=now - datetime.timedelta(days=1),
    )
    _write(pki.expired_client, expired)
    _write(pki.other_ca_client, make_client_cert(other_ca, "alice"))
    _write(pki.wrong_host_server, make_server_cert(ca, ["other.example"]))
    _write(pki.other_ca_server, make_server_cert(other_ca, HOSTNAMES))
    return pki


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    """The session's PKI, minted on first use."""
    return make_dev_pki(tmp_path_factory.mktemp("pki"))


def _write(pair: Pair, certified: CertifiedKey) -> None:
    pair.cert.write_bytes(certified.cert_pem())
    pair.key.write_bytes(certified.key_pem())
