"""The hub's home directory: PKI, envelope keys, databases, bundles.

::

    <home>/pki/            CA key and certificate, CRL, the hub's and the broker's certificates
    <home>/hub_keys.json   the hub's envelope keys (X25519 + Ed25519), mode 0600
    <home>/registry.db     devices, keys, API clients, models, rollouts, audit log (SQLite default)
    <home>/telemetry.db    the embedded time-series store
    <home>/deadletters.db  rejected messages, for inspection
    <home>/pki/devices/    each device's certificate (public), so revocation can list its serial
    <home>/pki/hubs/       certificates of hub processes with their own identity (hub-<name>)
    <home>/broker/         the broker's ACL, CRL and hub identities; a Mosquitto the hub runs itself
    <home>/bundles/        enrollment bundles made by the CLI (the API's are never written)
    <home>/release/repository/   the TUF model repository the hub serves (metadata/, targets/)
    <home>/release/online-keys/  the online targets/snapshot/timestamp keys (root keys stay offline)
    <home>/datasets/<name>/      hard examples and imports, versioned (see shared.dataset)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509

from roadside.cloud.broker.mosquitto import (
    HUB_IDENTITY,
    AclDevice,
    acl_lock,
    add_hub_identity,
    check_device_name,
    check_hub_identity,
    read_signal_controllers,
    reload_running,
    running_broker,
    take_over_session,
    write_acl_file,
)
from roadside.cloud.broker.pki import (
    CA_CRL_FILE,
    CertFiles,
    CertificateAuthority,
    IssuedCert,
    load_ca,
    save_ca,
    write_issued,
    write_private,
    write_public,
)
from roadside.cloud.registry import Registry
from roadside.shared.bundle import BrokerAddress, EnrollmentBundle, ModelRepoAnchor, write_bundle
from roadside.shared.errors import ConfigError, TransportError
from roadside.shared.keys import KeyPair
from roadside.shared.topics import check_name

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HubHome:
    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def hub_keys_file(self) -> Path:
        return self.root / "hub_keys.json"

    @property
    def group_file(self) -> Path:
        return self.root / "hub_group"

    def hub_group(self) -> str:
        """The hubs' shared-subscription group: secret, because Mosquitto 2.0 does not
        check SUBSCRIBE against the ACL, and a device that joined the group would
        take (and lose) a share of the hub's messages."""
        self.require()
        if not self.group_file.is_file():
            write_private(self.group_file, f"hub-{secrets.token_hex(16)}".encode())
        return self.group_file.read_text().strip()

    @property
    def registry_url(self) -> str:
        return f"sqlite:///{self.root / 'registry.db'}"

    @property
    def telemetry_db(self) -> Path:
        return self.root / "telemetry.db"

    @property
    def dead_letters_db(self) -> Path:
        return self.root / "deadletters.db"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def acl_file(self) -> Path:
        return self.broker_dir / "mosquitto.acl"

    @property
    def broker_crl_file(self) -> Path:
        """The broker's copy of the CA's revocation list (compose mounts this directory, not ``pki``)."""
        return self.broker_dir / CA_CRL_FILE

    @property
    def device_certs(self) -> Path:
        return self.pki / "devices"

    @property
    def hub_certs(self) -> Path:
        return self.pki / "hubs"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def repository_dir(self) -> Path:
        """The TUF model repository (made by ``roadside model repo init``)."""
        return self.root / "release" / "repository"

    @property
    def online_keys_dir(self) -> Path:
        return self.root / "release" / "online-keys"

    def has_repository(self) -> bool:
        return (self.repository_dir / "metadata" / "root.json").is_file()

    def datasets_dir(self, name: str = "detector") -> Path:
        return self.root / "datasets" / name

    def cert(self, stem: str) -> tuple[Path, Path]:
        """(certificate, key) files of ``hub`` or ``broker``."""
        return self.pki / f"{stem}.cert.pem", self.pki / f"{stem}.key.pem"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.cert.pem"

    def initialised(self) -> bool:
        return self.hub_keys_file.is_file() and self.ca_file.is_file()

    def require(self) -> None:
        if not self.initialised():
            raise ConfigError(
                f"{self.root} is not an initialised hub home; run `roadside pki init --home {self.root}`"
            )

    def ca(self) -> CertificateAuthority:
        return load_ca(self.pki)

    def hub_keys(self) -> KeyPair:
        self.require()
        return KeyPair.from_json(json.loads(self.hub_keys_file.read_text()))

    def broker_server_cert(self) -> IssuedCert:
        cert, key = self.cert("broker")
        return IssuedCert(key_pem=key.read_bytes(), cert_pem=cert.read_bytes())


def init_home(root: Path, broker_hostnames: list[str], broker_ips: list[str], force: bool = False) -> HubHome:
    """Create the CA, the hub's client certificate, the broker's server certificate and the hub keys."""
    home = HubHome(root)
    if home.initialised() and not force:
        raise ConfigError(f"{root} already holds a hub (CA and keys); pass --force to replace them")
    root.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create()
    save_ca(home.pki, ca)
    write_issued(home.pki, "hub", ca.issue_client("hub"))
    write_issued(
        home.pki, "broker", ca.issue_server("roadside-broker", hostnames=broker_hostnames, ips=broker_ips)
    )
    write_private(home.hub_keys_file, json.dumps(KeyPair.generate().to_json()).encode())
    write_private(home.group_file, f"hub-{secrets.token_hex(16)}".encode())
    publish_crl(home, ca)
    registry = Registry(home.registry_url)
    registry.create_schema()
    write_acl(home, registry)
    registry.close()
    log.info("hub home initialised at %s", root)
    return home


def issue_enrollment(
    home: HubHome,
    registry: Registry,
    device_id: str,
    site: str,
    broker: BrokerAddress,
    actor: str = "system",
    repo_url: str | None = None,
    out: Path | None = None,
) -> EnrollmentBundle:
    """Issue a device's certificate and keys and register it, all or nothing.

    Names are checked before anything is made: a hub's or a signal controller's name, or an
    id already enrolled (revoked ones included) is refused. The registry row commits only
    once the device's certificate record and the bundle file (with ``out``) are written; if
    either fails, nothing is left behind. The broker ACL does not change: its patterns give
    every certificate name its own device topics, so the broker is not reloaded (a reload
    would drop the offline sessions of certificate-named clients, the hub's among them, with
    what the broker queued for them: ADR 0022). Without ``out`` the bundle (it holds the
    device's private keys) is only returned, never written.

    ``repo_url`` is where devices reach the model repository this hub serves;
    with it, and a repository in the home, the bundle carries the repository's
    anchor (URL and current root metadata) and the device takes model updates.
    """
    home.require()
    check_device_name(device_id)
    check_name(site, "site")
    if registry.devices.get(device_id) is not None:
        raise ConfigError(f"device {device_id!r} is already enrolled; revoke it or pick another id")
    keys = KeyPair.generate()
    issued = home.ca().issue_client(device_id)
    bundle = EnrollmentBundle(
        device_id=device_id,
        site=site,
        broker=broker,
        ca_cert_pem=home.ca_file.read_text(),
        client_cert_pem=issued.cert_pem.decode(),
        client_key_pem=issued.key_pem.decode(),
        device_keys=keys.to_json(),
        hub_keys=home.hub_keys().public().to_json(),
        model_repo=model_repo_anchor(home, repo_url),
    )
    cert_record = home.device_certs / f"{device_id}.cert.pem"
    written: list[Path] = []

    def write_files() -> None:
        # Runs inside the registry transaction: an exception here rolls the row back.
        home.device_certs.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_public(cert_record, issued.cert_pem)
        written.append(cert_record)
        if out is not None:
            if out.exists():
                raise ConfigError(f"{out} exists; move it away or pick another --out")
            write_bundle(bundle, out)
            written.append(out)

    with acl_lock(home.broker_dir):  # a controller added meanwhile could take the name
        if device_id in read_signal_controllers(home.broker_dir):
            raise ConfigError(f"{device_id!r} is a signal controller's name; pick another device id")
        try:
            registry.devices.enroll(device_id, site, keys.public(), actor=actor, before_commit=write_files)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
    return bundle


def enroll_device(
    home: HubHome,
    registry: Registry,
    device_id: str,
    site: str,
    broker: BrokerAddress,
    out: Path | None = None,
    actor: str = "system",
    repo_url: str | None = None,
) -> tuple[EnrollmentBundle, Path]:
    """``issue_enrollment`` that also writes the bundle, mode 0600, to ``out`` (default ``<home>/bundles``)."""
    path = out or home.bundles / f"{device_id}.json"
    bundle = issue_enrollment(home, registry, device_id, site, broker, actor, repo_url, out=path)
    return bundle, path


def model_repo_anchor(home: HubHome, repo_url: str | None) -> ModelRepoAnchor | None:
    """The anchor a new device trusts: the URL it reaches the repository at and its newest root."""
    if repo_url is None or not home.has_repository():
        return None
    root = home.repository_dir / "metadata" / "root.json"
    return ModelRepoAnchor(url=repo_url, root_json=root.read_text())


def acl_devices(registry: Registry) -> list[AclDevice]:
    return [AclDevice(d.device_id, d.site) for d in registry.devices.list() if d.status == "active"]


def revoked_devices(registry: Registry) -> list[str]:
    """The devices the broker ACL denies everything (its patterns would let their names in)."""
    return [d.device_id for d in registry.devices.list() if d.status == "revoked"]


def write_acl(home: HubHome, registry: Registry) -> Path:
    """The broker ACL generated from the registry: devices by pattern, revoked ones denied."""
    with acl_lock(home.broker_dir):
        return _write_acl_locked(home, registry)


def _write_acl_locked(home: HubHome, registry: Registry) -> Path:
    return write_acl_file(home.broker_dir, acl_devices(registry), revoked=revoked_devices(registry))


def reload_broker(home: HubHome, timeout_s: float = 10.0) -> bool:
    """Make the broker ``roadside broker run`` (or the demo) runs from this home reload its ACL and CRL.

    Returns once it has reloaded; False when no broker runs from this home (an external
    broker, such as compose's, must pick the files up by its own means: its watcher).
    TransportError when the broker does not confirm the reload.
    """
    return reload_running(home.broker_dir, timeout_s)


@contextmanager
def _private_files(issued: IssuedCert) -> Iterator[CertFiles]:
    """``issued`` as files for a TLS library, in a private directory removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="roadside-cert-"))
    try:
        yield write_issued(directory, "client", issued)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def hub_identity(home: HubHome, registry: Registry, client_id: str) -> CertFiles:
    """The certificate a hub process connects with; its CN is its MQTT client id.

    The broker takes each client id from the certificate CN, so hub processes that
    run at once need a certificate each: ``hub`` uses the home's, ``hub-<name>`` gets
    one from the CA here on first use and is added to the ACL (a broker run from this
    home reloads before this returns).
    """
    check_hub_identity(client_id)
    if client_id == HUB_IDENTITY:
        cert, key = home.cert(HUB_IDENTITY)
        return CertFiles(cert=cert, key=key)
    files = CertFiles(
        cert=home.hub_certs / f"{client_id}.cert.pem", key=home.hub_certs / f"{client_id}.key.pem"
    )
    with acl_lock(home.broker_dir):
        if not (files.cert.is_file() and files.key.is_file()):
            write_issued(home.hub_certs, client_id, home.ca().issue_client(client_id))
        added = add_hub_identity(home.broker_dir, client_id)
        if added:
            _write_acl_locked(home, registry)
    if added:
        log.info("hub identity %s added to the broker ACL", client_id)
        reload_broker(home)
    return files


def revoke_device(
    home: HubHome,
    registry: Registry,
    device_id: str,
    *,
    actor: str = "system",
    broker: tuple[str, int] | None = None,
) -> bool:
    """Revoke a device everywhere: registry, CA (CRL), broker ACL, and its live connection.

    The CRL and ACL are rewritten and a broker run from this home reloads them; then the
    device's session at the broker (``broker``, else the one run from this home) is
    ended with a throw-away certificate for its CN, itself revoked at once, so the
    device's reconnection meets the CRL and is refused at TLS. Returns whether a
    session could be ended (False: no broker known, or it refused).
    """
    registry.devices.revoke(device_id, actor=actor)
    record = home.device_certs / f"{device_id}.cert.pem"
    if record.is_file():
        _revoke_serial(home, x509.load_pem_x509_certificate(record.read_bytes()).serial_number)
    else:
        log.warning("no certificate record for %s (enrolled before records were kept): ACL only", device_id)
    write_acl(home, registry)
    reload_broker(home)
    if broker is None:
        running = running_broker(home.broker_dir)
        broker = (running.host, running.port) if running is not None else None
    if broker is None:
        return False
    return _end_session(home, device_id, broker)


def _revoke_serial(home: HubHome, serial: int) -> None:
    # Under the lock: two processes revoking at once must not each drop the other's serial.
    with acl_lock(home.broker_dir):
        ca = home.ca()
        ca.revoke(serial)
        publish_crl(home, ca)


def _end_session(home: HubHome, device_id: str, broker: tuple[str, int]) -> bool:
    # One day is the shortest validity the CA issues; the certificate is revoked within a second.
    stand_in = home.ca().issue_client(device_id, valid_days=1)
    try:
        with _private_files(stand_in) as files:
            take_over_session(
                broker[0], broker[1], ca_file=home.ca_file, cert_file=files.cert, key_file=files.key
            )
    except TransportError as exc:
        log.warning("could not end %s's session at %s:%d: %s", device_id, broker[0], broker[1], exc)
        return False
    finally:
        _revoke_serial(home, stand_in.serial)
        reload_broker(home)
    log.info("ended %s's session at the broker", device_id)
    return True


def publish_crl(home: HubHome, ca: CertificateAuthority) -> None:
    """Write a fresh CRL of ``ca`` into ``pki`` and the broker's directory.

    A CRL is valid for a year; OpenSSL refuses every client once it lapses, so the hub
    re-issues it at each start (``refresh_crl``) and at each revocation.
    """
    crl = ca.crl_pem()
    write_public(home.pki / CA_CRL_FILE, crl)
    home.broker_dir.mkdir(parents=True, exist_ok=True)
    write_public(home.broker_crl_file, crl)


CRL_REFRESH_BEFORE: Final = dt.timedelta(days=90)


def refresh_crl(home: HubHome, now: dt.datetime | None = None) -> bool:
    """Re-issue the CRL (same serials, new validity) when it lapses within 90 days; reload the broker.

    Only then: Mosquitto 2.0 drops the offline persistent sessions of certificate-named
    clients on every reload, so a hub (re)starting must not reload for nothing while an
    ingest worker's session holds queued messages. Returns whether it re-issued.
    """
    now = now or dt.datetime.now(dt.UTC)
    current = home.broker_crl_file
    if current.is_file():
        try:
            next_update = x509.load_pem_x509_crl(current.read_bytes()).next_update_utc
        except ValueError:
            next_update = None
        if next_update is not None and next_update - now > CRL_REFRESH_BEFORE:
            return False
    with acl_lock(home.broker_dir):
        publish_crl(home, home.ca())
    reload_broker(home)
    return True
