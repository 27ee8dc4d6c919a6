"""The enrollment bundle: everything a device needs to join, in one JSON file.

Made by ``roadside device enroll`` on the hub side, carried to the pole by the
installer, read by ``roadside agent install --bundle FILE``. It holds private
keys: written with mode 0600 and never logged.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from roadside.shared.errors import ConfigError
from roadside.shared.keys import KeyPair, PublicKeys
from roadside.shared.topics import check_name


class BrokerAddress(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    port: int = Field(ge=1, le=65535)
    tls_server_name: str | None = None


class ModelRepoAnchor(BaseModel):
    """Where the device fetches model updates, and the TUF root metadata it trusts first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1)
    root_json: str = Field(min_length=2)  # the repository's root.json, as published


class EnrollmentBundle(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = 1
    device_id: str
    site: str
    broker: BrokerAddress
    ca_cert_pem: str
    client_cert_pem: str
    client_key_pem: str
    device_keys: dict[str, str]  # KeyPair.to_json(): private keys, base64
    hub_keys: dict[str, str]  # PublicKeys.to_json()
    model_repo: ModelRepoAnchor | None = None  # None: no model updates (bundles made before OTA)

    def keypair(self) -> KeyPair:
        return KeyPair.from_json(self.device_keys)

    def hub_public(self) -> PublicKeys:
        return PublicKeys.from_json(self.hub_keys)

    def check(self) -> EnrollmentBundle:
        check_name(self.device_id, "device id")
        check_name(self.site, "site")
        self.keypair()
        self.hub_public()
        return self


def write_bundle(bundle: EnrollmentBundle, path: Path) -> None:
    """Write the bundle readable by its owner only (mode 0600), atomically.

    A new file replaces any old one, so an old file's looser mode never carries over,
    and a reader never sees half a bundle.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(bundle.model_dump_json(indent=2))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_bundle(path: Path) -> EnrollmentBundle:
    try:
        raw = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read enrollment bundle {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:  # found by fuzz/ (issue 14): it escaped as itself
        raise ConfigError(f"{path} is not an enrollment bundle (not UTF-8 text, byte {exc.start})") from exc
    try:
        return EnrollmentBundle.model_validate(json.loads(raw)).check()
    except (ValueError, ValidationError) as exc:
        raise ConfigError(
            f"{path} is not a valid enrollment bundle ({exc}); re-run `roadside device enroll`"
        ) from exc
