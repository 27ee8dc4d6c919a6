"""Envelope keys: X25519 for sealing, Ed25519 for signatures, and their key ids.

Keys travel as base64 of their 32 raw bytes so they fit in JSON bundles and
registry rows. A key id is the first 8 bytes (hex) of SHA-256 over the raw
public key, so both sides derive it without a lookup table.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from roadside.shared.errors import BadSignatureError, ConfigError

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NO_ENC = serialization.NoEncryption()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, what: str = "key") -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ConfigError(f"{what} is not valid base64") from exc


def key_id(public_raw: bytes) -> str:
    """Short stable identifier of a public key."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class KeyPair:
    """One party's long-term envelope keys (X25519 for sealing, Ed25519 for signing)."""

    x25519_private: bytes
    ed25519_private: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(
            X25519PrivateKey.generate().private_bytes(_RAW, _RAW_PRIV, _NO_ENC),
            Ed25519PrivateKey.generate().private_bytes(_RAW, _RAW_PRIV, _NO_ENC),
        )

    @property
    def x25519_public(self) -> bytes:
        key = X25519PrivateKey.from_private_bytes(self.x25519_private)
        return key.public_key().public_bytes(_RAW, _RAW_PUB)

    @property
    def ed25519_public(self) -> bytes:
        key = Ed25519PrivateKey.from_private_bytes(self.ed25519_private)
        return key.public_key().public_bytes(_RAW, _RAW_PUB)

    @property
    def kid(self) -> str:
        return key_id(self.x25519_public)

    def public(self) -> PublicKeys:
        return PublicKeys(self.x25519_public, self.ed25519_public)

    def to_json(self) -> dict[str, str]:
        return {"x25519": b64(self.x25519_private), "ed25519": b64(self.ed25519_private)}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> KeyPair:
        try:
            return cls(unb64(data["x25519"]), unb64(data["ed25519"]))
        except KeyError as exc:
            raise ConfigError(f"key pair is missing its {exc.args[0]} key") from exc

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.ed25519_private).sign(message)


@dataclass(frozen=True, slots=True)
class PublicKeys:
    """The public half of a :class:`KeyPair`, as stored in the registry or a bundle."""

    x25519: bytes
    ed25519: bytes

    @property
    def kid(self) -> str:
        return key_id(self.x25519)

    def to_json(self) -> dict[str, str]:
        return {"x25519": b64(self.x25519), "ed25519": b64(self.ed25519)}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> PublicKeys:
        try:
            return cls(unb64(data["x25519"]), unb64(data["ed25519"]))
        except KeyError as exc:
            raise ConfigError(f"public keys are missing the {exc.args[0]} key") from exc

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raise :class:`BadSignatureError` unless ``signature`` is ours over ``message``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.ed25519).verify(signature, message)
        except (InvalidSignature, ValueError) as exc:
            raise BadSignatureError("signature does not verify") from exc


KEY_REGISTRATION_CONTEXT: Final = b"roadside/v1 key registration\0"


def key_registration_message(device_id: str, keys: PublicKeys) -> bytes:
    """What a device signs with its new Ed25519 key to register ``keys`` for ``device_id``.

    The signature proves the registrant holds the new key and binds the keys to one
    device, so keys copied from another device or made up are refused.
    """
    return KEY_REGISTRATION_CONTEXT + device_id.encode() + b"\0" + keys.x25519 + keys.ed25519


def derive_key(own_private: bytes, peer_public: bytes, info: bytes) -> bytes:
    """AEAD key for one direction between two parties: X25519, then HKDF-SHA256."""
    shared = X25519PrivateKey.from_private_bytes(own_private).exchange(
        X25519PublicKey.from_public_bytes(peer_public)
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"roadside/v1", info=info).derive(shared)
