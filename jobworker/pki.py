"""
A development PKI: one CA, a server certificate and a client certificate per
user, as the design prescribes (ECDSA P-256 keys, SHA-256 signatures, leaf
certificates valid at most 90 days).

It is meant for trying jobworker out and for tests. Keys are written
unencrypted (readable by their owner only); a production deployment brings
its own PKI.

    python -m jobworker.pki --dir certs --user alice --user bob
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MAX_LEAF_DAYS = 90
DEFAULT_CA_DAYS = 365
DEFAULT_USERS = ("alice", "bob", "charlie")
DEFAULT_HOSTNAMES = ("localhost", "127.0.0.1", "::1")
# Certificates start a little in the past so that a client whose clock is a
# few minutes behind does not reject a certificate minted just now.
CLOCK_SKEW = datetime.timedelta(minutes=5)
# A user name becomes both the certificate's CN (the identity) and a file
# name, so it must be a plain word: no path separators, no leading dot.
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")

DNS_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
DNS_NAME = re.compile(rf"^{DNS_LABEL}(\.{DNS_LABEL})*$")


@dataclass(frozen=True)
class CertifiedKey:
    """A private key and the certificate issued for it."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class PKIFiles:
    """What ``write_dev_pki`` did: the files it wrote and those it kept."""

    directory: Path
    written: tuple[Path, ...]
    kept: tuple[Path, ...]


def make_ca(common_name: str, days: int = DEFAULT_CA_DAYS) -> CertifiedKey:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    if days < 1:
        raise ValueError(f"a CA must be valid for at least one day, not {days}")
    key = _new_key()
    name = _name(common_name)
    not_before = _now() - CLOCK_SKEW
    builder = (
        _builder(name, name, key.public_key(), not_before, not_before + _days(days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=False, cert_sign=True), critical=True
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
    )
    return CertifiedKey(key, builder.sign(key, hashes.SHA256()))


def make_server_cert(
    ca: CertifiedKey, hostnames: Sequence[str], days: int = MAX_LEAF_DAYS
) -> CertifiedKey:
    """A server certificate for ``hostnames`` (DNS names and IP addresses)."""
    if not hostnames:
        raise ValueError("a server certificate needs at least one host name")
    names = [_general_name(h) for h in hostnames]
    not_before = _now() - CLOCK_SKEW
    return _make_leaf(
        ca,
        _name(hostnames[0]),
        not_before,
        not_before + _leaf_days(days),
        ExtendedKeyUsageOID.SERVER_AUTH,
        x509.SubjectAlternativeName(names),
    )


def make_client_cert(
    ca: CertifiedKey,
    common_name: str,
    days: int = MAX_LEAF_DAYS,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> CertifiedKey:
    """
    A client certificate whose subject CN is the identity ``common_name``.

    ``not_before`` and ``not_after`` override ``days``; tests use them to make
    a certificate that has already expired.
    """
    check_user_name(common_name)
    start = _now() - CLOCK_SKEW if not_before is None else not_before
    end = start + _leaf_days(days) if not_after is None else not_after
    return _make_leaf(
        ca, _name(common_name), start, end, ExtendedKeyUsageOID.CLIENT_AUTH
    )


def check_user_name(name: str) -> None:
    """Refuse a user name that is unfit as an identity and as a file name."""
    if not USER_NAME.match(name):
        raise ValueError(
            f"user name {name!r} must be 1 to 64 letters, digits or ._@- "
            "and start with a letter or digit"
        )


def write_dev_pki(
    directory: Path | str,
    users: Sequence[str] = DEFAULT_USERS,
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    force: bool = False,
) -> PKIFiles:
    """
    Write ``ca``, ``server`` and one pair per user as ``<name>.pem`` and
    ``<name>.key`` into ``directory``.

    An existing PKI is kept: its CA signs any user who has no certificate yet
    and no existing file is touched. ``force`` makes a new CA and replaces
    every file, which invalidates all certificates issued before.
    """
    for user in users:
        check_user_name(user)
    if "ca" in users or "server" in users:
        raise ValueError("'ca' and 'server' are taken by the CA and the server")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = None if force else _existing_ca(directory)
    written: list[Path] = []
    kept: list[Path] = []
    if ca is None:
        ca = make_ca("jobworker development CA")
        written += _write_pair(directory, "ca", ca)
    else:
        kept += [directory / "ca.pem", directory / "ca.key"]
    wanted: list[tuple[str, Callable[[], CertifiedKey]]] = [
        ("server", partial(make_server_cert, ca, hostnames))
    ]
    wanted += [(user, partial(make_client_cert, ca, user)) for user in users]
    for name, make in wanted:
        pair = [directory / f"{name}.pem", directory / f"{name}.key"]
        if not force and all(p.exists() for p in pair):
            kept += pair
        else:
            written += _write_pair(directory, name, make())
    return PKIFiles(directory, tuple(written), tuple(kept))


def load_certified_key(cert_path: Path, key_path: Path) -> CertifiedKey:
    """Read back a pair this module wrote (a PEM certificate, an ECDSA key)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an ECDSA key")
    return CertifiedKey(key, cert)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobworker.pki``: write a development PKI and say what."""
    options = _parser().parse_args(argv)
    try:
        files = write_dev_pki(
            options.dir,
            users=options.user or DEFAULT_USERS,
            hostnames=options.hostname or DEFAULT_HOSTNAMES,
            force=options.force,
        )
    except (OSError, ValueError) as e:
        print(f"gen-certs: {e}", file=sys.stderr)
        return 1
    for path in files.written:
        print(f"wrote {path}")
    for path in files.kept:
        print(f"kept  {path}")
    if files.kept:
        print("(existing files are kept; --force makes a new CA and replaces all)")
    return 0


def _parser() -> argparse.ArgumentParser:
    checkout_certs = Path(__file__).resolve().parent.parent / "certs"
    parser = argparse.ArgumentParser(
        prog="gen-certs",
        description="Write a development PKI: a CA, a server certificate and "
        "one client certificate per user (its CN is the user's identity).",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=checkout_certs,
        help="where to write the files (default: certs/ in this checkout)",
    )
    parser.add_argument(
        "--force", action="store_true", help="make a new CA and replace every file"
    )
    parser.add_argument(
        "--user",
        action="append",
        metavar="NAME",
        help="a client certificate for NAME (repeatable; "
        f"default: {', '.join(DEFAULT_USERS)})",
    )
    parser.add_argument(
        "--hostname",
        action="append",
        metavar="NAME",
        help="a DNS name or IP address the server certificate is valid for "
        f"(repeatable; default: {', '.join(DEFAULT_HOSTNAMES)})",
    )
    return parser


def _make_leaf(
    ca: CertifiedKey,
    subject: x509.Name,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    usage: x509.ObjectIdentifier,
    alt_names: x509.SubjectAlternativeName | None = None,
) -> CertifiedKey:
    _check_leaf_validity(ca, not_before, not_after)
    key = _new_key()
    builder = (
        _builder(subject, ca.cert.subject, key.public_key(), not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=False), True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if alt_names is not None:
        builder = builder.add_extension(alt_names, critical=False)
    return CertifiedKey(key, builder.sign(ca.key, hashes.SHA256()))


def _check_leaf_validity(
    ca: CertifiedKey, not_before: datetime.datetime, not_after: datetime.datetime
) -> None:
    if not_after <= not_before:
        raise ValueError("a certificate must end after it begins")
    if not_after - not_before > _days(MAX_LEAF_DAYS):
        raise ValueError(f"leaf certificates are valid at most {MAX_LEAF_DAYS} days")
    if not_after > ca.cert.not_valid_after_utc:
        raise ValueError("a certificate must not outlive the CA that signs it")


def _leaf_days(days: int) -> datetime.timedelta:
    if not 1 <= days <= MAX_LEAF_DAYS:
        raise ValueError(
            f"leaf certificates are valid 1 to {MAX_LEAF_DAYS} days, not {days}"
        )
    return _days(days)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def _key_usage(digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not DNS_NAME.match(host):
        raise ValueError(f"{host!r} is neither a DNS name nor an IP address")
    return x509.DNSName(host)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _days(days: int) -> datetime.timedelta:
    return datetime.timedelta(days=days)


def _existing_ca(directory: Path) -> CertifiedKey | None:
    """The CA already in ``directory``, or None where there is none."""
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    if not cert_path.exists() and not key_path.exists():
        return None
    try:
        return load_certified_key(cert_path, key_path)
    except FileNotFoundError as e:
        raise ValueError(
            f"{e.filename} is missing but its pair exists; --force makes a new CA"
        ) from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot load the CA in {directory}: {e}") from None


def _write_pair(directory: Path, name: str, pair: CertifiedKey) -> list[Path]:
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    _write_file(key_path, pair.key_pem(), 0o600)
    _write_file(cert_path, pair.cert_pem(), 0o644)
    return [cert_path, key_path]


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """
    Replace ``path`` atomically with a file created with ``mode``.

    The file is created with its final mode, so a private key is never
    readable by others, not even for an instant; and it is a fresh file, so an
    old file's looser mode is not inherited when it is replaced.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


if __name__ == "__main__":
    sys.exit(main())
