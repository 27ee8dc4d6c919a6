"""The fleet's X.509 identity: one private CA, server and client certificates.

Every roadside device, every hub process and the broker hold a certificate
from the Roadside CA. The broker requires a client certificate and takes its
common name as the MQTT username (``use_identity_as_username``), so a
client's CN is its device id, or ``hub`` for the hub, and the broker's ACL
file (``roadside.cloud.broker.mosquitto.render_acl``) decides what that name may touch.

The core (``CertificateAuthority``) works on PEM bytes and does no I/O;
``save_ca``, ``load_ca`` and ``write_issued`` are the thin file layer, which
writes private keys with mode 0600, atomically.

Keys are ECDSA P-256 and signatures SHA-256: fast to make in tests and on a
Jetson, and accepted by every TLS stack a roadside box or a broker uses.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from roadside.shared.errors import ConfigError
from roadside.shared.topics import check_name

log = logging.getLogger(__name__)

CA_KEY_FILE: Final = "ca.key.pem"
CA_CERT_FILE: Final = "ca.cert.pem"
CA_CRL_FILE: Final = "ca.crl.pem"

# Certificates start a little in the past so that a device whose clock lags
# the CA's by a few minutes does not reject a certificate it was just given.
_BACKDATE: Final = dt.timedelta(minutes=5)
_HASH: Final = hashes.SHA256()


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A private key and the certificate the CA issued for it, both PEM."""

    key_pem: bytes
    cert_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def serial(self) -> int:
        """Serial number, the handle ``CertificateAuthority.revoke`` takes."""
        return self.certificate.serial_number

    @property
    def common_name(self) -> str:
        return _common_name(self.certificate)


@dataclass(frozen=True, slots=True)
class CertFiles:
    """Where ``write_issued`` put a certificate and its key."""

    cert: Path
    key: Path


class CertificateAuthority:
    """A private CA that issues the broker's, the hub's and the devices' certificates."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        cert: x509.Certificate,
        revoked: dict[int, dt.datetime] | None = None,
    ) -> None:
        self._key = key
        self._cert = cert
        # serial -> revocation time; kept so a CRL can be re-issued at any time.
        self._revoked: dict[int, dt.datetime] = dict(revoked or {})

    @classmethod
    def create(cls, common_name: str = "Roadside CA", valid_days: int = 3650) -> CertificateAuthority:
        """Make a new self-signed CA with a fresh P-256 key."""
        _check_days(valid_days)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=valid_days))
            # path_length=0: this CA signs leaf certificates only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, _HASH)
        )
        log.info("created CA %r serial %x valid %d days", common_name, cert.serial_number, valid_days)
        return cls(key, cert)

    @classmethod
    def from_pem(cls, key_pem: bytes, cert_pem: bytes, crl_pem: bytes | None = None) -> CertificateAuthority:
        """Rebuild a CA from its PEM key, certificate and (optionally) its last CRL.

        Raises ConfigError if they are not PEM, do not belong together, or the
        certificate is not a CA.
        """
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            cert = x509.load_pem_x509_certificate(cert_pem)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"CA key or certificate is not valid unencrypted PEM: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("CA key must be an EC private key (P-256)")
        if key.public_key().public_numbers() != _ec_public(cert).public_numbers():
            raise ConfigError("CA key does not belong to the CA certificate")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise ConfigError("CA certificate is not marked as a CA (basicConstraints CA:TRUE)")
        revoked = _revoked_from_crl(crl_pem, key.public_key()) if crl_pem is not None else None
        return cls(key, cert, revoked)

    def to_pem(self) -> tuple[bytes, bytes]:
        """The CA's (private key, certificate) as PEM. The key is unencrypted: protect it."""
        key_pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key_pem, self.cert_pem

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    def issue_server(
        self,
        common_name: str,
        hostnames: list[str],
        ips: list[str],
        valid_days: int = 825,
    ) -> IssuedCert:
        """A broker (TLS server) certificate for the given DNS names and IP addresses."""
        if not hostnames and not ips:
            # Clients check the SAN, not the CN; without one nothing could verify the broker.
            raise ConfigError("a server certificate needs at least one hostname or IP address")
        sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
        for ip in ips:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
            except ValueError as exc:
                raise ConfigError(f"{ip!r} is not an IP address") from exc
        extensions: list[x509.ExtensionType] = [
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            x509.SubjectAlternativeName(sans),
        ]
        return self._issue(common_name, valid_days, extensions)

    def issue_client(self, common_name: str, valid_days: int = 825) -> IssuedCert:
        """A client certificate whose CN is the MQTT username: a device id, or ``hub``."""
        # The CN lands verbatim in the broker's ACL file; keep it to the safe charset.
        check_name(common_name, "certificate common name")
        extensions: list[x509.ExtensionType] = [
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
        ]
        return self._issue(common_name, valid_days, extensions)

    def revoke(self, serial: int) -> None:
        """Add a certificate to the revocation list; publish it with ``crl_pem``."""
        self._revoked.setdefault(serial, _now())
        log.info("revoked certificate serial %x", serial)

    @property
    def revoked_serials(self) -> frozenset[int]:
        return frozenset(self._revoked)

    def crl_pem(self, next_update_days: int = 365, now: dt.datetime | None = None) -> bytes:
        """A signed CRL of every revoked serial (possibly none), PEM.

        OpenSSL refuses every client once a CRL passes its next update, so a
        broker using ``crlfile`` needs a fresh CRL before ``next_update_days``.
        ``now`` (timezone-aware) is the issue time; the clock by default.
        """
        _check_days(next_update_days)
        now = now or _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._cert.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + dt.timedelta(days=next_update_days))
        )
        for serial, when in sorted(self._revoked.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return builder.sign(self._key, _HASH).public_bytes(serialization.Encoding.PEM)

    def _issue(self, common_name: str, valid_days: int, extensions: list[x509.ExtensionType]) -> IssuedCert:
        _check_days(valid_days)
        if not common_name:
            raise ConfigError("a certificate needs a non-empty common name")
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        # A leaf must not outlive its CA: verifiers would reject it from that day on anyway.
        not_after = min(now + dt.timedelta(days=valid_days), self._cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        for extension in extensions:
            # EKU and SAN are informative to most verifiers; not critical, as RFC 5280 allows.
            builder = builder.add_extension(extension, critical=False)
        cert = builder.sign(self._key, _HASH)
        log.info("issued certificate CN=%s serial %x", common_name, cert.serial_number)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return IssuedCert(key_pem=key_pem, cert_pem=cert.public_bytes(serialization.Encoding.PEM))


# -- file layer -------------------------------------------------------------


def save_ca(directory: Path, ca: CertificateAuthority) -> None:
    """Write the CA key (mode 0600), certificate and current CRL into ``directory``."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_pem, cert_pem = ca.to_pem()
    write_private(directory / CA_KEY_FILE, key_pem)
    write_public(directory / CA_CERT_FILE, cert_pem)
    write_public(directory / CA_CRL_FILE, ca.crl_pem())


def load_ca(directory: Path) -> CertificateAuthority:
    """Read a CA written by ``save_ca``; ConfigError naming the file that is missing or bad."""
    key_path, cert_path = directory / CA_KEY_FILE, directory / CA_CERT_FILE
    for path in (key_path, cert_path):
        if not path.is_file():
            raise ConfigError(
                f"CA file {path} is missing: point to the directory a CA was saved in, "
                "or create one (CertificateAuthority.create() then save_ca())"
            )
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("CA key %s is readable by others (mode %o); chmod 600 it", key_path, mode)
    crl_path = directory / CA_CRL_FILE
    crl_pem = crl_path.read_bytes() if crl_path.is_file() else None
    return CertificateAuthority.from_pem(key_path.read_bytes(), cert_path.read_bytes(), crl_pem)


def write_issued(directory: Path, stem: str, issued: IssuedCert) -> CertFiles:
    """Write ``<stem>.cert.pem`` and ``<stem>.key.pem`` (mode 0600) into ``directory``."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = CertFiles(cert=directory / f"{stem}.cert.pem", key=directory / f"{stem}.key.pem")
    write_private(files.key, issued.key_pem)
    write_public(files.cert, issued.cert_pem)
    return files


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, readable by the owner only."""
    _write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, world-readable (certificates, CRLs)."""
    _write_atomic(path, data, 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    # mkstemp creates the file 0600 before any byte is written, so a key is never
    # briefly world-readable; the rename means a reader never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- helpers ----------------------------------------------------------------


def _revoked_from_crl(crl_pem: bytes, ca_public: ec.EllipticCurvePublicKey) -> dict[int, dt.datetime]:
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError as exc:
        raise ConfigError(f"CA revocation list {CA_CRL_FILE} is not valid PEM") from exc
    if not crl.is_signature_valid(ca_public):
        raise ConfigError(f"CA revocation list {CA_CRL_FILE} is not signed by this CA")
    return {entry.serial_number: entry.revocation_date_utc for entry in crl}


def _ec_public(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ConfigError("certificate does not hold an EC public key")
    return public


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise ConfigError("certificate has no common name")
    value = names[0].value
    return value if isinstance(value, str) else value.decode()


def _check_days(days: int) -> None:
    if days <= 0:
        raise ConfigError(f"validity must be at least one day, got {days}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
