"""The development PKI: what each certificate says, and how files are written."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jobworker.pki import (
    CertifiedKey,
    load_certified_key,
    main,
    make_ca,
    make_client_cert,
    make_server_cert,
    write_dev_pki,
)

CHECKOUT = Path(__file__).resolve().parents[2]
NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def ca() -> CertifiedKey:
    return make_ca("test CA")


def extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> object:
    return cert.extensions.get_extension_for_class(kind).value


def common_name(cert: x509.Certificate) -> object:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def validity(cert: x509.Certificate) -> datetime.timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_ca_is_a_p256_ca_signing_leaves_only(ca: CertifiedKey) -> None:
    """The CA has a P-256 key, SHA-256 self-signature, and path length 0."""
    assert isinstance(ca.key.curve, ec.SECP256R1)
    assert isinstance(ca.cert.signature_hash_algorithm, hashes.SHA256)
    assert ca.cert.issuer == ca.cert.subject
    assert extension(ca.cert, x509.BasicConstraints) == x509.BasicConstraints(
        ca=True, path_length=0
    )
    assert validity(ca.cert) == 365 * DAY


def test_ca_of_zero_days_is_refused() -> None:
    """A CA must be valid for at least a day."""
    with pytest.raises(ValueError, match="at least one day, not 0"):
        make_ca("test CA", days=0)


def test_server_cert_names_dns_and_ip_addresses(ca: CertifiedKey) -> None:
    """Host names become DNS SANs, addresses IP SANs; serverAuth only."""
    server = make_server_cert(ca, ["localhost", "127.0.0.1", "::1"])
    names = extension(server.cert, x509.SubjectAlternativeName)
    assert isinstance(names, x509.SubjectAlternativeName)
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert extension(server.cert, x509.ExtendedKeyUsage) == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    assert server.cert.issuer == ca.cert.subject
    assert validity(server.cert) == 90 * DAY
    ca.key.public_key().verify(
        server.cert.signature,
        server.cert.tbs_certificate_bytes,
        ec.ECDSA(hashes.SHA256()),
    )


def test_server_cert_refuses_a_bad_host_name(ca: CertifiedKey) -> None:
    """A host name that is neither a DNS name nor an address is refused."""
    with pytest.raises(ValueError, match="'bad host' is neither a DNS name"):
        make_server_cert(ca, ["bad host"])


def test_server_cert_needs_a_host_name(ca: CertifiedKey) -> None:
    """A server certificate without a name would match nothing."""
    with pytest.raises(ValueError, match="at least one host name"):
        make_server_cert(ca, [])


def test_client_cert_subject_is_the_identity(ca: CertifiedKey) -> None:
    """The client certificate's only CN is the user; clientAuth only."""
    alice = make_client_cert(ca, "alice")
    assert alice.cert.subject.rfc4514_string() == "CN=alice"
    assert common_name(alice.cert) == "alice"
    assert extension(alice.cert, x509.ExtendedKeyUsage) == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    assert extension(alice.cert, x509.BasicConstraints) == x509.BasicConstraints(
        ca=False, path_length=None
    )
    assert isinstance(alice.key.curve, ec.SECP256R1)


@pytest.mark.parametrize("days", [0, 91, 365])
def test_leaf_validity_outside_one_to_90_days_is_refused(
    ca: CertifiedKey, days: int
) -> None:
    """Leaf certificates are valid at most 90 days, and at least one."""
    with pytest.raises(ValueError, match=f"valid 1 to 90 days, not {days}"):
        make_client_cert(ca, "alice", days=days)
    with pytest.raises(ValueError, match=f"valid 1 to 90 days, not {days}"):
        make_server_cert(ca, ["localhost"], days=days)


def test_explicit_validity_over_90_days_is_refused(ca: CertifiedKey) -> None:
    """Explicit dates cannot get round the 90-day limit."""
    with pytest.raises(ValueError, match="valid at most 90 days"):
        make_client_cert(ca, "alice", not_before=NOW, not_after=NOW + 91 * DAY)


def test_certificate_ending_before_it_begins_is_refused(ca: CertifiedKey) -> None:
    """not_after must come after not_before."""
    with pytest.raises(ValueError, match="must end after it begins"):
        make_client_cert(ca, "alice", not_before=NOW, not_after=NOW - DAY)


def test_leaf_outliving_its_ca_is_refused() -> None:
    """A leaf may not be valid longer than the CA that signs it."""
    short_ca = make_ca("short CA", days=10)
    with pytest.raises(ValueError, match="must not outlive the CA"):
        make_client_cert(short_ca, "alice")


def test_expired_client_cert_can_be_made(ca: CertifiedKey) -> None:
    """Tests can mint a certificate that has already expired."""
    expired = make_client_cert(
        ca, "alice", not_before=NOW - 10 * DAY, not_after=NOW - DAY
    )
    assert expired.cert.not_valid_after_utc < NOW


@pytest.mark.parametrize("name", ["", "../alice", ".hidden", "a b", "a/b", "x" * 65])
def test_unfit_user_names_are_refused(ca: CertifiedKey, name: str) -> None:
    """A user name must be a plain word: it is an identity and a file name."""
    with pytest.raises(ValueError, match="must be 1 to 64 letters"):
        make_client_cert(ca, name)


def test_write_dev_pki_writes_every_pair(tmp_path: Path) -> None:
    """CA, server and one pair per user; keys 0600, certificates 0644."""
    files = write_dev_pki(tmp_path, users=["alice", "bob"])
    expected = [
        tmp_path / name
        for stem in ["ca", "server", "alice", "bob"]
        for name in [f"{stem}.pem", f"{stem}.key"]
    ]
    assert sorted(files.written) == sorted(expected)
    assert files.kept == ()
    assert sorted(tmp_path.iterdir()) == sorted(expected)
    for path in expected:
        wanted = 0o600 if path.suffix == ".key" else 0o644 & ~current_umask()
        assert mode(path) == wanted, path


def test_written_certificates_chain_to_the_ca(tmp_path: Path) -> None:
    """The files on disk verify with OpenSSL against the written CA."""
    write_dev_pki(tmp_path, users=["alice"])
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", "ca.pem", "server.pem", "alice.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout == "server.pem: OK\nalice.pem: OK\n", result.stderr


def test_keys_are_never_readable_by_others_even_with_a_loose_umask(
    tmp_path: Path,
) -> None:
    """Keys are created 0600, whatever the umask allows."""
    old = os.umask(0)
    try:
        write_dev_pki(tmp_path, users=["alice"])
    finally:
        os.umask(old)
    assert mode(tmp_path / "alice.key") == 0o600
    assert mode(tmp_path / "ca.key") == 0o600
    assert mode(tmp_path / "alice.pem") == 0o644


def test_existing_pki_is_kept(tmp_path: Path) -> None:
    """A second run keeps every file and the CA."""
    write_dev_pki(tmp_path, users=["alice"])
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    files = write_dev_pki(tmp_path, users=["alice"])
    assert files.written == ()
    assert sorted(files.kept) == sorted(before)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_new_user_is_signed_by_the_existing_ca(tmp_path: Path) -> None:
    """Adding a user to an existing PKI uses its CA and touches nothing else."""
    write_dev_pki(tmp_path, users=["alice"])
    ca_pem = (tmp_path / "ca.pem").read_bytes()
    files = write_dev_pki(tmp_path, users=["alice", "dave"])
    assert files.written == (tmp_path / "dave.pem", tmp_path / "dave.key")
    assert (tmp_path / "ca.pem").read_bytes() == ca_pem
    ca = load_certified_key(tmp_path / "ca.pem", tmp_path / "ca.key")
    dave = load_certified_key(tmp_path / "dave.pem", tmp_path / "dave.key")
    assert dave.cert.issuer == ca.cert.subject


def test_force_replaces_the_ca_and_every_pair(tmp_path: Path) -> None:
    """force makes a new CA; old keys are replaced by fresh 0600 files."""
    write_dev_pki(tmp_path, users=["alice"])
    old = {p: p.read_bytes() for p in tmp_path.iterdir()}
    (tmp_path / "alice.key").chmod(0o644)
    files = write_dev_pki(tmp_path, users=["alice"], force=True)
    assert sorted(files.written) == sorted(old)
    assert all(p.read_bytes() != data for p, data in old.items())
    assert mode(tmp_path / "alice.key") == 0o600


def test_half_a_ca_is_refused(tmp_path: Path) -> None:
    """A CA certificate without its key cannot sign; the error says so."""
    write_dev_pki(tmp_path, users=["alice"])
    (tmp_path / "ca.key").unlink()
    with pytest.raises(ValueError, match=r"ca\.key is missing but its pair exists"):
        write_dev_pki(tmp_path, users=["bob"])


@pytest.mark.parametrize("name", ["ca", "server"])
def test_reserved_user_names_are_refused(tmp_path: Path, name: str) -> None:
    """A user called ca or server would overwrite the CA's or server's files."""
    with pytest.raises(ValueError, match="taken by the CA and the server"):
        write_dev_pki(tmp_path, users=[name])
    assert list(tmp_path.iterdir()) == []


def test_main_prints_what_it_wrote_and_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command says which files it wrote, then which it kept."""
    assert main(["--dir", str(tmp_path), "--user", "dave"]) == 0
    first = capsys.readouterr().out.splitlines()
    assert first == [
        f"wrote {tmp_path / name}"
        for name in [
            "ca.pem",
            "ca.key",
            "server.pem",
            "server.key",
            "dave.pem",
            "dave.key",
        ]
    ]
    assert main(["--dir", str(tmp_path), "--user", "dave", "--user", "erin"]) == 0
    second = capsys.readouterr().out.splitlines()
    assert second[:2] == [
        f"wrote {tmp_path / 'erin.pem'}",
        f"wrote {tmp_path / 'erin.key'}",
    ]
    assert (
        second[-1]
        == "(existing files are kept; --force makes a new CA and replaces all)"
    )


def test_main_reports_a_bad_user_name_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad --user is one line on stderr and exit status 1."""
    assert main(["--dir", str(tmp_path), "--user", "../etc"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "gen-certs: user name '../etc' must be 1 to 64 letters, digits or ._@- "
        "and start with a letter or digit\n"
    )


def test_gen_certs_script_writes_the_default_users(tmp_path: Path) -> None:
    """scripts/gen-certs runs the module and writes alice, bob and charlie."""
    result = subprocess.run(
        [CHECKOUT / "scripts" / "gen-certs", "--dir", tmp_path / "certs"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == sorted(
        f"{stem}{suffix}"
        for stem in ["ca", "server", "alice", "bob", "charlie"]
        for suffix in [".pem", ".key"]
    )


def test_gen_certs_script_without_a_virtualenv_says_what_to_run(
    tmp_path: Path,
) -> None:
    """Where .venv is missing, gen-certs says to run scripts/serve or test."""
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "gen-certs"
    script.write_bytes((CHECKOUT / "scripts" / "gen-certs").read_bytes())
    script.chmod(0o755)
    result = subprocess.run([script], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "gen-certs: no virtualenv yet; run scripts/serve or scripts/test first\n"
    )
