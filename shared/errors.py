"""The one exception tree of Roadside.

::

    RoadsideError
    ├── ConfigError              bad or missing settings; fail at start, say what to change
    ├── TransportError           broker, hub or store unreachable; retried with jittered backoff
    ├── IntegrityError           never retried; counted by ``reason`` and alerted
    │   ├── UnknownKeyError      sender or key id not in the registry (or revoked)
    │   ├── TamperedError        AEAD tag or framing does not verify
    │   ├── BadSignatureError    Ed25519 signature does not verify
    │   ├── StaleMessageError    timestamp outside the allowed clock skew
    │   └── ReplayError          sequence number already seen or below the window
    └── SchemaError              a payload that decrypts but does not validate

Adapters translate vendor exceptions into these at the boundary, always with
``raise ... from exc`` so the cause survives.
"""

from __future__ import annotations


class RoadsideError(Exception):
    """Base of every error Roadside raises on purpose."""


class ConfigError(RoadsideError):
    """Settings are wrong or missing; the message says what to change."""


class TransportError(RoadsideError):
    """A peer (broker, hub, store) is unreachable or refused us; retry later."""


class IntegrityError(RoadsideError):
    """A message or artefact failed a security check. Never retried."""

    reason = "integrity"


class UnknownKeyError(IntegrityError):
    reason = "unknown_key"


class TamperedError(IntegrityError):
    reason = "bad_tag"


class BadSignatureError(IntegrityError):
    reason = "bad_signature"


class StaleMessageError(IntegrityError):
    reason = "stale"


class ReplayError(IntegrityError):
    reason = "replay"


class SchemaError(RoadsideError):
    """A payload that is authentic but does not follow the schema."""

    reason = "schema"


class OversizeError(IntegrityError):
    """A message larger than the receiver accepts; rejected before any parsing."""

    reason = "oversize"
