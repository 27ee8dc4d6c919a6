"""The hub side of commands: seal, publish, track acks, finish key rotations.

:class:`CommandSender` seals each command for the device's key in use
(signed by the hub, encrypted to the device) and publishes it on
``roadside/v1/cmd/<device>`` with QoS 1. Acks come back through ingest as
sealed uplink; ``on_ack`` matches them to what is pending by command id.

Devices connect with a clean session, so a command published while a device
is offline is not queued by the broker: :meth:`CommandSender.resend_unacked`
sends what is still unanswered again (same command id, sealed anew), and the
device's handling is idempotent by command id.

Sequence numbers are the hub's clock in milliseconds, kept strictly
increasing: they survive a hub restart without any stored state, and the
device's replay window takes them in order. Hubs sharing a fleet should keep
their clocks within a minute of each other (the window is 65 536 numbers).

Key rotation (see :mod:`roadside.edge.control.handler`): the ack of ``rotate_keys`` carries
the device's new public key; the sender registers it (``add_key``) and
sends ``rotate_keys {"confirm": kid}``; the ack of that makes it the key
commands are sealed to.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from roadside.shared import topics
from roadside.shared.envelope import HubCommandSealer
from roadside.shared.errors import ConfigError, TransportError
from roadside.shared.keys import KeyPair, PublicKeys, key_id, unb64
from roadside.shared.schemas import AckMessage, Command, CommandType, encode

log = logging.getLogger(__name__)

MAX_TRACKED: Final = 10_000


class DeviceKeys(Protocol):
    """A device's envelope keys: the registry's ``registry.devices`` (:class:`roadside.cloud.registry.Devices`) fits."""

    def active_keys(self, device_id: str) -> list[PublicKeys]: ...

    def key(self, device_id: str, kid: str) -> tuple[str, PublicKeys] | None: ...

    def add_key(self, device_id: str, keys: PublicKeys, *, actor: str = ...) -> None: ...


class _Sent(Protocol):
    @property
    def rc(self) -> int: ...


class Publisher(Protocol):
    """An MQTT client connected as the hub (paho's ``Client`` fits)."""

    def publish(self, topic: str, payload: bytes, qos: int) -> _Sent: ...


@dataclass
class PendingCommand:
    device_id: str
    command: Command
    sent_at: float  # monotonic
    attempts: int = 1
    ack: AckMessage | None = None
    answered: threading.Event = field(default_factory=threading.Event)

    @property
    def state(self) -> str:
        if self.ack is None:
            return "pending"
        return "ok" if self.ack.ok else "failed"

    def as_dict(self) -> dict[str, Any]:
        """For an API response."""
        return {
            "command_id": str(self.command.command_id),
            "device_id": self.device_id,
            "type": self.command.type,
            "state": self.state,
            "attempts": self.attempts,
            "detail": self.ack.detail if self.ack is not None else None,
        }


class CommandSender:
    """Sends commands to devices and follows them until their ack."""

    def __init__(
        self,
        hub_keys: KeyPair,
        keys: DeviceKeys,
        publisher: Publisher,
        actor: str = "hub",
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self._sealer = HubCommandSealer(hub_keys)
        self._keys = keys
        self._publisher = publisher
        self._actor = actor
        self._clock_ms = clock_ms
        self._max_tracked = max_tracked
        self._lock = threading.Lock()
        self._last_seq = 0
        self._pending: OrderedDict[uuid.UUID, PendingCommand] = OrderedDict()
        self._device_kid: dict[str, str] = {}  # the key each device was last heard using

    # Sending ----------------------------------------------------------------------

    def send(
        self, device_id: str, command_type: CommandType, args: dict[str, Any] | None = None
    ) -> PendingCommand:
        """Seal and publish a new command; ``ConfigError`` if the device has no active key."""
        command = Command(type=command_type, args=args or {})
        pending = PendingCommand(device_id, command, time.monotonic())
        with self._lock:
            self._pending[command.command_id] = pending
            while len(self._pending) > self._max_tracked:
                self._pending.popitem(last=False)
        self._publish(pending)
        return pending

    def resend_unacked(self, older_than_s: float = 30.0, device_id: str | None = None) -> int:
        """Send again what has waited longer than ``older_than_s`` for an ack; how many were sent."""
        now = time.monotonic()
        with self._lock:
            due = [
                p
                for p in self._pending.values()
                if p.ack is None
                and now - p.sent_at >= older_than_s
                and (device_id is None or p.device_id == device_id)
            ]
        for pending in due:
            pending.attempts += 1
            pending.sent_at = now
            self._publish(pending)
        return len(due)

    def _publish(self, pending: PendingCommand) -> None:
        device = self._key_for(pending.device_id)
        wire = self._sealer.seal(
            pending.device_id, device, self._next_seq(), encode(pending.command), self._clock_ms()
        )
        sent = self._publisher.publish(topics.command(pending.device_id), wire, qos=1)
        if sent.rc != 0:
            # Not connected: paho keeps QoS 1 messages for its next connection; resend_unacked covers the rest.
            log.warning(
                "command %s to %s not sent now (rc %s)",
                pending.command.command_id,
                pending.device_id,
                sent.rc,
            )
        log.info(
            "command %s (%s) sent to %s under key %s",
            pending.command.command_id,
            pending.command.type,
            pending.device_id,
            device.kid,
        )

    def _next_seq(self) -> int:
        with self._lock:
            self._last_seq = max(self._last_seq + 1, self._clock_ms())
            return self._last_seq

    def _key_for(self, device_id: str) -> PublicKeys:
        """The key the device was last heard using; else its newest active key in the registry."""
        kid = self._device_kid.get(device_id)
        if kid is not None:
            found = self._keys.key(device_id, kid)
            if found is not None:
                return found[1]
        active = self._keys.active_keys(device_id)
        if not active:
            raise ConfigError(f"device {device_id!r} has no active key: is it enrolled and not revoked?")
        return active[-1]

    # Acks ---------------------------------------------------------------------------

    def key_in_use(self, device_id: str) -> str | None:
        """The key id the device was last heard sealing with, if known."""
        return self._device_kid.get(device_id)

    def note_key(self, device_id: str, kid: str) -> None:
        """Ingest saw ``device_id`` seal with ``kid``: seal its commands to that key."""
        self._device_kid[device_id] = kid

    def on_ack(self, device_id: str, ack: AckMessage, kid: str | None = None) -> PendingCommand | None:
        """An ack arrived through ingest (``kid``: the envelope key it was sealed with)."""
        if kid is not None:
            self.note_key(device_id, kid)
        with self._lock:
            pending = self._pending.get(ack.command_id)
        if pending is None or pending.device_id != device_id:
            log.info("ack %s from %s matches no pending command", ack.command_id, device_id)
            return None
        if pending.ack is not None:
            return pending  # a redelivered ack: already handled
        pending.ack = ack
        log.info("command %s (%s) on %s: %s", ack.command_id, pending.command.type, device_id, pending.state)
        if pending.command.type == "rotate_keys" and ack.ok:
            try:
                self._continue_rotation(pending, ack)
            except Exception:  # this runs on the ingest writer: never fail its batch over a rotation
                log.exception("key rotation of %s stopped", device_id)
        pending.answered.set()
        return pending

    def _continue_rotation(self, pending: PendingCommand, ack: AckMessage) -> None:
        offer = json.loads(ack.detail)
        device_id = pending.device_id
        if offer.get("rotate") == "active":
            self.note_key(device_id, str(offer["kid"]))
            log.info("device %s now uses key %s", device_id, offer["kid"])
            return
        public = PublicKeys(unb64(offer["x25519"]), unb64(offer["ed25519"]))
        if public.kid != offer.get("kid") or key_id(public.x25519) != public.kid:
            raise ConfigError("the device's new key does not match its key id")
        if self._keys.key(device_id, public.kid) is None:
            self._keys.add_key(device_id, public, actor=self._actor)
            log.info("registered key %s of %s", public.kid, device_id)
        self.send(device_id, "rotate_keys", {"confirm": public.kid})

    # Queries ------------------------------------------------------------------------

    def get(self, command_id: uuid.UUID) -> PendingCommand | None:
        with self._lock:
            return self._pending.get(command_id)

    def wait(self, command_id: uuid.UUID, timeout: float) -> AckMessage | None:
        """The command's ack, waiting up to ``timeout`` seconds; ``None`` if none came."""
        pending = self.get(command_id)
        if pending is None:
            raise TransportError(f"command {command_id} is not tracked here")
        pending.answered.wait(timeout)
        return pending.ack

    def unanswered(self, device_id: str | None = None) -> list[PendingCommand]:
        with self._lock:
            return [
                p
                for p in self._pending.values()
                if p.ack is None and (device_id is None or p.device_id == device_id)
            ]
