"""The hub's home directory: PKI, envelope keys, databases, bundles.

::

    <home>/pki/            CA key and certificate, CRL, the hub's and the broker's certificates
    <home>/hub_keys.json   the hub's envelope keys (X25519 + Ed25519), mode 0600
    <home>/registry.db     devices, keys, API clients, models, rollouts, audit log (SQLite default)
    <home>/telemetry.db    the embedded time-series store
    <home>/deadletters.db  rejected messages, for inspection
    <home>/broker/         a Mosquitto the hub runs itself (demo, single box)
    <home>/bundles/        enrollment bundles made here
    <home>/release/repository/   the TUF model repository the hub serves (metadata/, targets/)
    <home>/release/online-keys/  the online targets/snapshot/timestamp keys (root keys stay offline)
    <home>/datasets/<name>/      hard examples and imports, versioned (see shared.dataset)
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

from cloud.broker import AclDevice, render_acl
from cloud.pki import CertificateAuthority, IssuedCert, load_ca, save_ca, write_issued, write_private
from cloud.registry import Registry
from shared.bundle import BrokerAddress, EnrollmentBundle, ModelRepoAnchor, write_bundle
from shared.errors import ConfigError
from shared.keys import KeyPair

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
    def broker_pid_file(self) -> Path:
        """Written by ``roadside broker run`` so the hub can make it reload its ACL."""
        return self.broker_dir / "broker.pid"

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
    registry = Registry(home.registry_url)
    registry.create_schema()
    registry.close()
    log.info("hub home initialised at %s", root)
    return home


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
    """Issue a device's certificate and keys, register it, refresh the broker ACL, write its bundle.

    ``repo_url`` is where devices reach the model repository this hub serves;
    with it, and a repository in the home, the bundle carries the repository's
    anchor (URL and current root metadata) and the device takes model updates.
    """
    home.require()
    keys = KeyPair.generate()
    registry.enroll(device_id, site, keys.public(), actor=actor)
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
    path = out or home.bundles / f"{device_id}.json"
    write_bundle(bundle, path)
    write_acl(home, registry)
    return bundle, path


def model_repo_anchor(home: HubHome, repo_url: str | None) -> ModelRepoAnchor | None:
    """The anchor a new device trusts: the URL it reaches the repository at and its newest root."""
    if repo_url is None or not home.has_repository():
        return None
    root = home.repository_dir / "metadata" / "root.json"
    return ModelRepoAnchor(url=repo_url, root_json=root.read_text())


def acl_devices(registry: Registry) -> list[AclDevice]:
    return [AclDevice(d.device_id, d.site) for d in registry.list_devices() if d.status == "active"]


def write_acl(home: HubHome, registry: Registry) -> Path:
    """The broker ACL generated from the registry: each device confined to its own topics."""
    home.broker_dir.mkdir(parents=True, exist_ok=True)
    # Atomic: the broker may re-read the file at any moment.
    write_private(home.acl_file, render_acl(acl_devices(registry)).encode())
    return home.acl_file


def reload_broker(home: HubHome) -> bool:
    """SIGHUP the broker ``roadside broker run`` started from this home, so it re-reads the ACL.

    Returns False when no such broker runs here (an external broker reloads by its own means).
    """
    try:
        pid = int(home.broker_pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        return False
    log.info("asked the broker (pid %s) to reload its ACL", pid)
    return True
