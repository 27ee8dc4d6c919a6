"""Opening commands from the hub: the hub's signature, freshness, replay, then the schema."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable

from roadside.shared.envelope import DeviceCommandOpener, ReplayWindow, parse
from roadside.shared.errors import SchemaError, UnknownKeyError
from roadside.shared.keys import KeyPair, PublicKeys
from roadside.shared.schemas import Command, decode_command


class InvalidCommandError(SchemaError):
    """Authentic (the hub signed it) but not a valid command; nack it when it has an id."""

    def __init__(self, message: str, command_id: uuid.UUID | None, command_type: str | None) -> None:
        super().__init__(message)
        self.command_id = command_id
        self.command_type = command_type


class CommandVerifier:
    """Opens commands sealed to any of the device's current keys; one replay window for all."""

    def __init__(
        self, device_id: str, hub: PublicKeys, keys: Iterable[KeyPair], max_age_s: float = 900.0
    ) -> None:
        self.device_id = device_id
        self._hub = hub
        self._max_age_s = max_age_s
        self._window = ReplayWindow()
        self._openers: dict[str, DeviceCommandOpener] = {}
        self.set_keys(keys)

    def set_keys(self, keys: Iterable[KeyPair]) -> None:
        openers = {}
        for pair in keys:
            opener = DeviceCommandOpener(self.device_id, pair, self._hub, self._max_age_s)
            opener.window = self._window  # a sequence number is used once, whichever key it was sealed to
            openers[pair.kid] = opener
        self._openers = openers  # swapped whole: the network thread may be reading the old dict

    def open(self, wire: bytes, now_ms: int) -> Command:
        """The verified command; ``IntegrityError`` if not authentic, ``InvalidCommandError`` if malformed."""
        opener = self._openers.get(parse(wire).header.rkid)
        if opener is None:
            raise UnknownKeyError("command is sealed to a key this device does not hold")
        plaintext = opener.open(wire, now_ms).plaintext
        try:
            return decode_command(plaintext)
        except SchemaError as exc:
            command_id, command_type = _identify(plaintext)
            raise InvalidCommandError(str(exc), command_id, command_type) from exc


def _identify(plaintext: bytes) -> tuple[uuid.UUID | None, str | None]:
    """The id and type of a command that failed validation, if they can be read."""
    try:
        raw = json.loads(plaintext)
        kind = raw.get("type")
        return uuid.UUID(str(raw["command_id"])), kind if isinstance(kind, str) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, None
