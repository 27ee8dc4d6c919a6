"""Signing keys for the model repository: offline root keys, online role keys.

TUF splits trust by role. The root role says which keys may sign every
role; its keys stay **offline** (removable media in a safe, brought out for
a ceremony) and sign with a threshold (say 2 of 3), so one lost or stolen
key can neither sign a new root nor lock the city out. The targets,
snapshot and timestamp keys stay **online** on the hub, which signs with them
unattended: publishing a model, and refreshing the timestamp every hour.

On disk, one Ed25519 key per file, named by its TUF key id::

    <offline>/root/<keyid>.pem          PKCS#8 private key, mode 0600
    <offline>/root/<keyid>.pub.json     its TUF public key (safe to copy)
    <online>/targets/<keyid>.pem        ... and the same for snapshot, timestamp

Private keys are never logged; only key ids are.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from roadside.cloud.broker.pki import write_private, write_public
from roadside.shared.errors import ConfigError

log = logging.getLogger(__name__)

ROOT: Final = "root"
TARGETS: Final = "targets"
SNAPSHOT: Final = "snapshot"
TIMESTAMP: Final = "timestamp"
ONLINE_ROLES: Final = (TARGETS, SNAPSHOT, TIMESTAMP)
ALL_ROLES: Final = (ROOT, *ONLINE_ROLES)

_PRIVATE_SUFFIX: Final = ".pem"
_PUBLIC_SUFFIX: Final = ".pub.json"


def _role_dir(directory: Path, role: str) -> Path:
    if role not in ALL_ROLES:
        raise ConfigError(f"unknown TUF role {role!r}; choose from {list(ALL_ROLES)}")
    return directory / role


def generate_key(directory: Path, role: str) -> CryptoSigner:
    """Make a fresh Ed25519 key for ``role``, store it under ``directory/role`` and return its signer."""
    signer = CryptoSigner.generate_ed25519()
    store_key(directory, role, signer)
    log.info("generated %s key %s", role, signer.public_key.keyid)
    return signer


def store_key(directory: Path, role: str, signer: CryptoSigner) -> Path:
    """Write ``signer``'s private key (0600) and public key under ``directory/role``."""
    folder = _role_dir(directory, role)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    keyid = signer.public_key.keyid
    write_private(folder / f"{keyid}{_PRIVATE_SUFFIX}", signer.private_bytes)
    write_public(folder / f"{keyid}{_PUBLIC_SUFFIX}", public_key_json(signer.public_key))
    return folder / f"{keyid}{_PRIVATE_SUFFIX}"


def generate_root_keys(offline_dir: Path, count: int = 3) -> list[CryptoSigner]:
    """The root keys for a new repository, written to the offline directory."""
    if count < 1:
        raise ConfigError(
            "a repository needs at least one root key (three, with a threshold of two, is usual)"
        )
    return [generate_key(offline_dir, ROOT) for _ in range(count)]


def generate_online_keys(online_dir: Path) -> dict[str, CryptoSigner]:
    """One new key each for targets, snapshot and timestamp, written to the hub's key directory."""
    return {role: generate_key(online_dir, role) for role in ONLINE_ROLES}


def load_signers(directory: Path, role: str, keyids: Iterable[str] | None = None) -> list[CryptoSigner]:
    """The signers stored for ``role`` (only those in ``keyids`` when given), in key id order."""
    folder = _role_dir(directory, role)
    wanted = None if keyids is None else set(keyids)
    signers = []
    for path in sorted(folder.glob(f"*{_PRIVATE_SUFFIX}")) if folder.is_dir() else []:
        keyid = path.name.removesuffix(_PRIVATE_SUFFIX)
        if wanted is None or keyid in wanted:
            signers.append(_load_signer(path))
    return signers


def _load_signer(path: Path) -> CryptoSigner:
    try:
        private = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read signing key {path}: {exc}") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"signing key {path} is not an Ed25519 key")
    signer = CryptoSigner(private)
    if signer.public_key.keyid != path.name.removesuffix(_PRIVATE_SUFFIX):
        raise ConfigError(f"signing key {path} is not the key its file name says; restore it from backup")
    return signer


def public_keys(signers: Sequence[CryptoSigner]) -> list[Key]:
    return [signer.public_key for signer in signers]


def public_key_json(key: Key) -> bytes:
    """A public key as JSON (``{"keyid": ..., "key": {...}}``), for the ceremony and for audit."""
    return json.dumps({"keyid": key.keyid, "key": key.to_dict()}, indent=2, sort_keys=True).encode()


def load_public_key(path: Path) -> Key:
    """Read a ``.pub.json`` written by :func:`public_key_json` (a key holder's new root key)."""
    try:
        body = json.loads(path.read_bytes())
        return SSlibKey.from_dict(body["keyid"], dict(body["key"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a Roadside public key file: {exc}") from exc


def retire_key(directory: Path, role: str, keyid: str) -> None:
    """Move a replaced key out of use (into ``<role>/retired/``); destroy that copy when rotation is done."""
    folder = _role_dir(directory, role)
    retired = folder / "retired"
    retired.mkdir(exist_ok=True, mode=0o700)
    for suffix in (_PRIVATE_SUFFIX, _PUBLIC_SUFFIX):
        source = folder / f"{keyid}{suffix}"
        if source.exists():
            os.replace(source, retired / source.name)
    log.info("retired %s key %s", role, keyid)
