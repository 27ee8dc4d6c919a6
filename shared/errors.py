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
    │   ├── ReplayError          sequence number already seen or below the window
    │   ├── OversizeError        larger than the receiver accepts (a message, a model download)
    │   ├── TamperedTargetError  a downloaded model does not match its signed hash or length
    │   ├── ExpiredMetadataError signed release metadata past its expiry (a freeze attack)
    │   ├── InconsistentMetadataError  release metadata that contradicts the role listing it
    │   │                        (mix-and-match), or an older version than one already trusted
    │   ├── RollbackError        a model version not newer than the one running
    │   ├── UnsafePathError      a signed target path that would leave its folder
    │   ├── IncompatibleModelError  a model this agent cannot run (agent too old, labels, input)
    │   └── BadMetadataError     signed release metadata that is not what Roadside publishes
    ├── SchemaError              a payload that decrypts but does not validate
    ├── AirIndexError            an air-quality index asked of values it is not defined for
    └── SignalSafetyError        a signal controller's output broke a safety invariant; heads to red

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


class TamperedTargetError(IntegrityError):
    """A downloaded (or stored) model whose bytes do not match the signed hash or length."""

    reason = "tampered_target"


class ExpiredMetadataError(IntegrityError):
    """Signed release metadata past its expiry: a frozen mirror, or a hub that stopped signing."""

    reason = "expired_metadata"


class InconsistentMetadataError(IntegrityError):
    """Release metadata that does not match what its parent role says about it, or is older than trusted."""

    reason = "inconsistent_metadata"


class RollbackError(IntegrityError):
    """A model version that is not newer than the one the device runs."""

    reason = "rollback"


class UnsafePathError(IntegrityError):
    """A signed target path that is absolute, climbs with ``..`` or otherwise leaves its folder."""

    reason = "unsafe_path"


class IncompatibleModelError(IntegrityError):
    """A model this agent must not run: it needs a newer agent, other labels or another input."""

    reason = "incompatible_model"


class BadMetadataError(IntegrityError):
    """Signed release metadata whose Roadside fields are missing or malformed."""

    reason = "bad_metadata"


class AirIndexError(RoadsideError, ValueError):
    """An air-quality index or NowCast asked of values its rules define nothing for (``roadside.shared.air``)."""

    reason = "air_index"


class SignalSafetyError(RoadsideError):
    """A signal controller's output broke a safety invariant (conflicting greens, a clearance cut short).

    Never retried: the controller's runner puts every head to red and stops, as a
    cabinet's conflict monitor puts the intersection into flash.
    """
