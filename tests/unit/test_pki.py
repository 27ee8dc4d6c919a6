"""The Roadside CA: what it issues verifies, carries the right purpose, and round-trips."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import ssl
from pathlib import Path
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from roadside.cloud.broker.pki import (
    CA_CERT_FILE,
    CA_CRL_FILE,
    CA_KEY_FILE,
    CertificateAuthority,
    IssuedCert,
    load_ca,
    save_ca,
    write_issued,
)
from roadside.shared.errors import ConfigError


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("Test CA")


def _cert(issued: IssuedCert) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.cert_pem)


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_ca_is_a_self_signed_p256_ca_that_signs_leaves_only(ca: CertificateAuthority) -> None:
    cert = ca.certificate
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca
    assert constraints.path_length == 0
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    assert _cn(cert) == "Test CA"


def test_server_certificate_verifies_and_names_the_broker(ca: CertificateAuthority) -> None:
    issued = ca.issue_server("broker", hostnames=["localhost", "mqtt.example"], ips=["127.0.0.1", "::1"])
    cert = _cert(issued)
    cert.verify_directly_issued_by(ca.certificate)
    assert _cn(cert) == "broker" == issued.common_name
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "mqtt.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_client_certificate_carries_the_device_id_as_cn(ca: CertificateAuthority) -> None:
    issued = ca.issue_client("cam-0042")
    cert = _cert(issued)
    cert.verify_directly_issued_by(ca.certificate)
    assert _cn(cert) == "cam-0042"
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert issued.serial == cert.serial_number


def test_validity_starts_before_now_and_never_outlives_the_ca() -> None:
    short_ca = CertificateAuthority.create(valid_days=10)
    cert = _cert(short_ca.issue_client("dev-1", valid_days=825))
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc < now
    assert cert.not_valid_after_utc <= short_ca.certificate.not_valid_after_utc


def test_each_certificate_gets_its_own_key_and_serial(ca: CertificateAuthority) -> None:
    first, second = ca.issue_client("dev-1"), ca.issue_client("dev-1")
    assert first.serial != second.serial
    assert first.key_pem != second.key_pem


@pytest.mark.parametrize("name", ["", "dev/1", "dev#", "+", "a b", "dev\nuser hub", "x" * 65, "café"])
def test_client_cn_must_be_safe_in_an_acl_file(ca: CertificateAuthority, name: str) -> None:
    with pytest.raises(ConfigError, match="not allowed"):
        ca.issue_client(name)


@settings(max_examples=40, deadline=None)
@given(name=st.text(max_size=70))
def test_client_cn_is_issued_verbatim_or_refused(ca: CertificateAuthority, name: str) -> None:
    try:
        issued = ca.issue_client(name)
    except ConfigError:
        return
    assert issued.common_name == name


def test_server_certificate_needs_a_name_and_valid_ips(ca: CertificateAuthority) -> None:
    with pytest.raises(ConfigError, match="hostname or IP"):
        ca.issue_server("broker", hostnames=[], ips=[])
    with pytest.raises(ConfigError, match="not an IP address"):
        ca.issue_server("broker", hostnames=[], ips=["300.1.1.1"])


def test_validity_must_be_positive(ca: CertificateAuthority) -> None:
    with pytest.raises(ConfigError, match="at least one day"):
        ca.issue_client("dev-1", valid_days=0)
    with pytest.raises(ConfigError, match="at least one day"):
        CertificateAuthority.create(valid_days=-1)


def test_pem_round_trip_keeps_the_same_ca(ca: CertificateAuthority) -> None:
    again = CertificateAuthority.from_pem(*ca.to_pem())
    assert again.cert_pem == ca.cert_pem
    _cert(again.issue_client("dev-2")).verify_directly_issued_by(ca.certificate)


def test_from_pem_refuses_a_key_of_another_ca(ca: CertificateAuthority) -> None:
    other_key, _ = CertificateAuthority.create().to_pem()
    with pytest.raises(ConfigError, match="does not belong"):
        CertificateAuthority.from_pem(other_key, ca.cert_pem)


def test_from_pem_refuses_garbage_and_leaf_certificates(ca: CertificateAuthority) -> None:
    with pytest.raises(ConfigError, match="not valid"):
        CertificateAuthority.from_pem(b"not a key", ca.cert_pem)
    leaf = ca.issue_client("dev-3")
    with pytest.raises(ConfigError, match="not marked as a CA"):
        CertificateAuthority.from_pem(leaf.key_pem, leaf.cert_pem)


def test_crl_lists_revoked_serials_and_is_signed_by_the_ca() -> None:
    ca = CertificateAuthority.create()
    leaf = ca.issue_client("dev-4")
    ca.revoke(leaf.serial)
    crl = x509.load_pem_x509_crl(ca.crl_pem())
    public = ca.certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(public)
    assert crl.get_revoked_certificate_by_serial_number(leaf.serial) is not None
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)


def test_save_and_load_keep_key_private_and_revocations(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    revoked = ca.issue_client("dev-5")
    ca.revoke(revoked.serial)
    save_ca(tmp_path / "ca", ca)
    assert (tmp_path / "ca" / CA_KEY_FILE).stat().st_mode & 0o777 == 0o600
    loaded = load_ca(tmp_path / "ca")
    assert loaded.cert_pem == ca.cert_pem
    assert loaded.revoked_serials == {revoked.serial}


def test_load_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=CA_KEY_FILE):
        load_ca(tmp_path / "nowhere")
    save_ca(tmp_path, CertificateAuthority.create())
    (tmp_path / CA_CERT_FILE).unlink()
    with pytest.raises(ConfigError, match=CA_CERT_FILE):
        load_ca(tmp_path)


def test_load_refuses_a_crl_from_another_ca(tmp_path: Path) -> None:
    save_ca(tmp_path, CertificateAuthority.create())
    (tmp_path / CA_CRL_FILE).write_bytes(CertificateAuthority.create().crl_pem())
    with pytest.raises(ConfigError, match="not signed by this CA"):
        load_ca(tmp_path)


def test_write_issued_keeps_the_key_private(tmp_path: Path, ca: CertificateAuthority) -> None:
    issued = ca.issue_client("dev-6")
    files = write_issued(tmp_path / "certs", "dev-6", issued)
    assert files.key.stat().st_mode & 0o777 == 0o600
    assert files.cert.read_bytes() == issued.cert_pem
    assert files.key.read_bytes() == issued.key_pem


# -- the certificates in a real (in-memory) TLS handshake ----------------------


def _contexts(
    tmp_path: Path, ca: CertificateAuthority, server: IssuedCert, client: IssuedCert
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    s_files = write_issued(tmp_path, "server", server)
    c_files = write_issued(tmp_path, "client", client)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(s_files.cert, s_files.key)
    server_ctx.load_verify_locations(tmp_path / "ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=tmp_path / "ca.pem")
    client_ctx.load_cert_chain(c_files.cert, c_files.key)
    return server_ctx, client_ctx


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str) -> str | None:
    """Run both ends over memory BIOs; return the CN the server saw for the client."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, conn in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    conn.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # In TLS 1.3 the server verifies the client's certificate after the
            # client finishes; a read on the client surfaces the server's verdict.
            with contextlib.suppress(ssl.SSLWantReadError):
                client.read()
            peer = server.getpeercert() or {}
            subject = cast("tuple[tuple[tuple[str, str], ...], ...]", peer.get("subject", ()))
            names = [value for rdn in subject for key, value in rdn if key == "commonName"]
            return str(names[0]) if names else None
    raise AssertionError("handshake did not finish")


def test_mutual_tls_with_issued_certificates(tmp_path: Path, ca: CertificateAuthority) -> None:
    server = ca.issue_server("broker", hostnames=["localhost"], ips=["127.0.0.1"])
    server_ctx, client_ctx = _contexts(tmp_path, ca, server, ca.issue_client("dev-7"))
    assert _handshake(server_ctx, client_ctx, "127.0.0.1") == "dev-7"


def test_a_client_certificate_cannot_serve_as_the_broker(tmp_path: Path, ca: CertificateAuthority) -> None:
    # The EKU keeps a device from impersonating the broker to another device.
    impostor = ca.issue_client("dev-8")
    server_ctx, client_ctx = _contexts(tmp_path, ca, impostor, ca.issue_client("dev-9"))
    client_ctx.check_hostname = False  # so that only the purpose can fail
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate purpose"):
        _handshake(server_ctx, client_ctx, "localhost")
