"""The device's envelope keys after ``rotate_keys``, persisted beside the bundle (0600, atomically)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from roadside.edge.control.files import write_private_atomic
from roadside.edge.settings import AgentSettings
from roadside.shared.errors import ConfigError
from roadside.shared.keys import KeyPair

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyState:
    current: KeyPair
    pending: KeyPair | None = None

    def all(self) -> list[KeyPair]:
        return [self.current] if self.pending is None else [self.current, self.pending]


def default_keys_path(settings: AgentSettings) -> Path:
    """``keys_path``, else ``<bundle>.keys.json`` beside the bundle."""
    return settings.keys_path or settings.bundle.with_name(f"{settings.bundle.stem}.keys.json")


class KeyStore:
    """Envelope keys made on the device by ``rotate_keys``, persisted beside the bundle.

    The file names the enrollment key it descends from; a file left over from
    an earlier enrollment (the device was re-enrolled with a new bundle) is
    ignored rather than overriding the new bundle's keys.
    """

    def __init__(self, path: Path, device_id: str, enrolled: KeyPair) -> None:
        self.path = path
        self.device_id = device_id
        self.enrolled = enrolled

    def load(self) -> KeyState:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return KeyState(self.enrolled)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot read rotated keys {self.path}: {exc}; restore it or re-enroll"
            ) from exc
        if raw.get("device_id") != self.device_id or raw.get("enrolled_kid") != self.enrolled.kid:
            log.warning("%s belongs to an earlier enrollment: using the bundle's keys", self.path)
            return KeyState(self.enrolled)
        pending = raw.get("pending")
        return KeyState(
            KeyPair.from_json(raw["current"]), KeyPair.from_json(pending) if pending is not None else None
        )

    def save(self, state: KeyState) -> None:
        """Replace the file atomically (temp file, fsync, rename), readable by the owner only."""
        document = {
            "format": 1,
            "device_id": self.device_id,
            "enrolled_kid": self.enrolled.kid,
            "current": state.current.to_json(),
            "pending": state.pending.to_json() if state.pending is not None else None,
        }
        try:
            write_private_atomic(self.path, json.dumps(document, indent=2).encode())
        except OSError as exc:
            raise ConfigError(
                f"cannot save keys to {self.path}: {exc.strerror}; make its directory writable by the agent"
            ) from exc
