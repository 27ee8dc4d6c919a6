"""The sealed envelope: end-to-end encryption and authentication of every message.

Wire layout (all integers big-endian)::

    b"RS" | version (1 byte) | header length (2 bytes) | header JSON | nonce (12) | AEAD ciphertext+tag

The header (device id, kind, sequence number, timestamp, sender and recipient
key ids) travels in clear so the receiver can pick the key, and is bound to the
ciphertext as AES-256-GCM associated data: change a byte anywhere and the tag
fails. The AEAD key comes from X25519 between the device's and the hub's
long-term keys, through HKDF with the direction and key ids as context.

Everything here is pure: bytes in, bytes or exceptions out. The clock is passed in.
"""

from __future__ import annotations

import functools
import json
import os
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from roadside.shared.errors import (
    OversizeError,
    ReplayError,
    StaleMessageError,
    TamperedError,
    UnknownKeyError,
)
from roadside.shared.keys import KeyPair, PublicKeys, derive_key
from roadside.shared.limits import MAX_WIRE_INT

MAGIC: Final = b"RS"
VERSION: Final = 1
NONCE_BYTES: Final = 12
MAX_WIRE_BYTES: Final = 256 * 1024
MAX_HEADER_BYTES: Final = 1024
_PREFIX = struct.Struct(">2sBH")
# Names in the header reach the registry before any tag is checked, so they are held to
# what enrollment allows (device ids, kinds) or what the key id function makes (hex).
_HEADER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class Header:
    device_id: str
    kind: str
    seq: int
    ts_ms: int
    kid: str  # sender's key id
    rkid: str  # recipient's key id
    v: int = VERSION

    def encode(self) -> bytes:
        fields = {
            "v": self.v,
            "dev": self.device_id,
            "kind": self.kind,
            "seq": self.seq,
            "ts": self.ts_ms,
            "kid": self.kid,
            "rkid": self.rkid,
        }
        return json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Header:
        try:
            d = json.loads(raw)
            header = cls(
                device_id=d["dev"],
                kind=d["kind"],
                seq=d["seq"],
                ts_ms=d["ts"],
                kid=d["kid"],
                rkid=d["rkid"],
                v=d["v"],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise TamperedError("envelope header is not valid") from exc
        if not _header_is_well_formed(header):
            raise TamperedError("envelope header has wrong field types, values or version")
        return header


def _header_is_well_formed(header: Header) -> bool:
    """Types, names and integer ranges: what every store and the registry can hold."""
    names = (header.device_id, header.kind, header.kid, header.rkid)
    return (
        all(type(name) is str for name in names)
        and _names_ok(*names)
        and type(header.seq) is int
        and type(header.ts_ms) is int
        and 0 <= header.seq <= MAX_WIRE_INT
        and 0 <= header.ts_ms <= MAX_WIRE_INT
        and header.v == VERSION
    )


# A device sends under the same four names for a key's life: each set is checked once (bounded).
@functools.lru_cache(maxsize=16384)
def _names_ok(*names: str) -> bool:
    return all(_HEADER_NAME.fullmatch(name) is not None for name in names)


def direction_info(direction: str, device_id: str, device_kid: str, hub_kid: str) -> bytes:
    """HKDF context: a key is bound to one direction, one device and one key pair."""
    return f"{direction}|{device_id}|{device_kid}|{hub_kid}".encode()


def seal(header: Header, plaintext: bytes, key: bytes, nonce: bytes | None = None) -> bytes:
    """Encrypt ``plaintext`` under ``key`` with ``header`` as associated data."""
    raw_header = header.encode()
    aad = _PREFIX.pack(MAGIC, VERSION, len(raw_header)) + raw_header
    nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
    return aad + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


@dataclass(frozen=True, slots=True)
class ParsedEnvelope:
    header: Header
    aad: bytes
    nonce: bytes
    ciphertext: bytes


def parse(wire: bytes, max_bytes: int = MAX_WIRE_BYTES) -> ParsedEnvelope:
    """Split the wire form without decrypting; reject oversize and malformed framing."""
    if len(wire) > max_bytes:
        raise OversizeError(f"message of {len(wire)} bytes exceeds the {max_bytes}-byte limit")
    if len(wire) < _PREFIX.size:
        raise TamperedError("message too short to be an envelope")
    magic, version, header_len = _PREFIX.unpack_from(wire)
    if magic != MAGIC or version != VERSION:
        raise TamperedError("not a Roadside envelope or unsupported version")
    body_start = _PREFIX.size + header_len
    if header_len > MAX_HEADER_BYTES or len(wire) < body_start + NONCE_BYTES + 16:
        raise TamperedError("envelope framing is inconsistent")
    header = Header.decode(wire[_PREFIX.size : body_start])
    nonce_end = body_start + NONCE_BYTES
    return ParsedEnvelope(header, wire[:body_start], wire[body_start:nonce_end], wire[nonce_end:])


def decrypt(parsed: ParsedEnvelope, key: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(parsed.nonce, parsed.ciphertext, parsed.aad)
    except InvalidTag as exc:
        raise TamperedError("authentication tag does not verify") from exc


REPLAY_WINDOW_SIZE: Final = 65536
"""How many sequence numbers behind the highest one a device's replay window remembers."""
MAX_RING_BITS: Final = 1 << 24
"""The widest window kept as a ring of bits (2 MiB); a wider one keeps the numbers."""


@dataclass
class ReplayWindow:
    """Per-sender sliding window of accepted sequence numbers.

    ``check`` rejects a number seen before or older than the window; ``commit``
    records it. They are separate so a receiver commits only once the message is
    durably stored: a message that was checked but not stored (the store was
    down) is still accepted when the broker delivers it again.

    The window is a ring of ``size`` bits (number ``n`` at bit ``n % size``), so
    a sender costs ``size / 8`` bytes (8 KiB) however long it sends. It was a set
    of the numbers, pruned only past twice the window: up to 9 MB per device,
    which a hub's memory grew by with every message of every device for weeks
    (``bench.soak``, issue 14).
    """

    size: int = REPLAY_WINDOW_SIZE
    highest: int = -1
    _ring: bytearray = field(init=False, repr=False)
    # A window too wide for a ring (a redrive remembers every stored number) keeps the
    # numbers themselves; nothing ever falls behind such a window, so it needs no pruning.
    _numbers: set[int] | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"a replay window needs a positive size, got {self.size}")
        if self.size > MAX_RING_BITS:
            self._numbers = set()
            self._ring = bytearray()
        else:
            self._ring = bytearray((self.size + 7) // 8)

    @property
    def nbytes(self) -> int:
        """The memory the window's bits take (a ring's; a window of numbers reports 0)."""
        return len(self._ring)

    def __len__(self) -> int:
        """How many numbers inside the window were accepted."""
        if self._numbers is not None:
            return sum(1 for n in self._numbers if self.highest - n < self.size)
        return int.from_bytes(self._ring).bit_count()

    def _has(self, seq: int) -> bool:
        if self._numbers is not None:
            return seq in self._numbers
        slot = seq % self.size
        return bool(self._ring[slot >> 3] & (1 << (slot & 7)))

    def check(self, seq: int) -> None:
        behind = self.highest - seq
        if 0 <= behind < self.size and self._has(seq):
            raise ReplayError(f"sequence number {seq} was already accepted")
        if self.highest >= 0 and behind >= self.size:
            raise ReplayError(f"sequence number {seq} is older than the replay window")

    def commit(self, seq: int) -> None:
        if self._numbers is not None:
            self._numbers.add(seq)
            self.highest = max(self.highest, seq)
            return
        if seq > self.highest:
            if self.highest < 0 or seq - self.highest >= self.size:
                self._ring[:] = bytes(len(self._ring))  # nothing behind is inside the new window
            else:  # the slots passed over held numbers that are now behind the window
                self._clear(self.highest + 1, seq - self.highest - 1)
            self.highest = seq
        elif self.highest - seq >= self.size:
            return
        slot = seq % self.size
        self._ring[slot >> 3] |= 1 << (slot & 7)

    def _clear(self, first: int, count: int) -> None:
        """Clear the slots of ``count`` numbers from ``first`` (fewer than ``size``)."""
        slot = first % self.size
        while count:
            run = min(count, self.size - slot)  # up to the ring's end, then from its start
            end = slot + run
            while slot < end and slot & 7:
                self._ring[slot >> 3] &= ~(1 << (slot & 7)) & 0xFF
                slot += 1
            whole = (end - slot) >> 3
            self._ring[slot >> 3 : (slot >> 3) + whole] = bytes(whole)
            slot += whole << 3
            while slot < end:
                self._ring[slot >> 3] &= ~(1 << (slot & 7)) & 0xFF
                slot += 1
            count -= run
            slot = 0


class DeviceSealer:
    """The device side: seals uplink messages for the hub."""

    def __init__(self, device_id: str, own: KeyPair, hub: PublicKeys) -> None:
        self.device_id = device_id
        self._kid = own.kid
        self._hub_kid = hub.kid
        info = direction_info("d2h", device_id, self._kid, self._hub_kid)
        self._key = derive_key(own.x25519_private, hub.x25519, info)

    def seal(self, kind: str, seq: int, plaintext: bytes, now_ms: int) -> bytes:
        header = Header(self.device_id, kind, seq, now_ms, self._kid, self._hub_kid)
        return seal(header, plaintext, self._key)


@dataclass(frozen=True, slots=True)
class OpenedEnvelope:
    header: Header
    plaintext: bytes


KeyLookup = Callable[[str, str], PublicKeys | None]
"""``(device_id, kid) -> the device's public keys``, or ``None`` when unknown or revoked."""


class HubOpener:
    """The hub side: verifies and decrypts uplink envelopes.

    Checks run cheapest first: size and framing, then the sender's key, then
    the tag, then the timestamp, then the replay window. The caller commits the
    sequence number to :attr:`windows` after storing the message.
    """

    def __init__(
        self,
        hub_keys: list[KeyPair],
        lookup: KeyLookup,
        max_age_s: float = 900.0,
        max_future_s: float = 120.0,
        max_bytes: int = MAX_WIRE_BYTES,
    ) -> None:
        self._hub = {k.kid: k for k in hub_keys}
        self._lookup = lookup
        self._max_age_ms = int(max_age_s * 1000)
        self._max_future_ms = int(max_future_s * 1000)
        self._max_bytes = max_bytes
        self._keys: dict[tuple[str, str, str], bytes] = {}
        self.windows: dict[str, ReplayWindow] = {}

    def restore(self, device_id: str, stored: Iterable[int]) -> None:
        """Rebuild a device's replay window from the sequence numbers already stored (hub start)."""
        window = ReplayWindow()
        for seq in stored:
            window.commit(seq)
        self.windows[device_id] = window

    def forget(self, device_id: str) -> None:
        """Drop cached keys of a device (revoked or rotated)."""
        self._keys = {k: v for k, v in self._keys.items() if k[0] != device_id}

    def _key_for(self, header: Header) -> bytes:
        cache_key = (header.device_id, header.kid, header.rkid)
        key = self._keys.get(cache_key)
        if key is None:
            hub = self._hub.get(header.rkid)
            device = self._lookup(header.device_id, header.kid)
            if hub is None or device is None:
                raise UnknownKeyError(
                    f"no key {header.kid!r} for device {header.device_id!r} or hub key {header.rkid!r}"
                )
            info = direction_info("d2h", header.device_id, header.kid, header.rkid)
            key = derive_key(hub.x25519_private, device.x25519, info)
            self._keys[cache_key] = key
        return key

    def open(self, wire: bytes, now_ms: int) -> OpenedEnvelope:
        parsed = parse(wire, self._max_bytes)
        header = parsed.header
        plaintext = decrypt(parsed, self._key_for(header))
        age = now_ms - header.ts_ms
        if age > self._max_age_ms or -age > self._max_future_ms:
            raise StaleMessageError(f"timestamp is {age / 1000:.1f} s away from the hub clock")
        self.windows.setdefault(header.device_id, ReplayWindow()).check(header.seq)
        return OpenedEnvelope(header, plaintext)

    def commit(self, header: Header) -> None:
        self.windows.setdefault(header.device_id, ReplayWindow()).commit(header.seq)


_SIG_BYTES: Final = 64


class HubCommandSealer:
    """The hub side of the downlink: commands are signed with Ed25519, then sealed."""

    def __init__(self, hub: KeyPair) -> None:
        self._hub = hub
        self._keys: dict[tuple[str, str], bytes] = {}

    def seal(self, device_id: str, device: PublicKeys, seq: int, plaintext: bytes, now_ms: int) -> bytes:
        cache_key = (device_id, device.kid)
        key = self._keys.get(cache_key)
        if key is None:
            info = direction_info("h2d", device_id, device.kid, self._hub.kid)
            key = derive_key(self._hub.x25519_private, device.x25519, info)
            self._keys[cache_key] = key
        header = Header(device_id, "cmd", seq, now_ms, self._hub.kid, device.kid)
        signature = self._hub.sign(header.encode() + plaintext)
        return seal(header, signature + plaintext, key)


class DeviceCommandOpener:
    """The device side of the downlink: decrypt, verify the hub's signature, reject replays."""

    def __init__(self, device_id: str, own: KeyPair, hub: PublicKeys, max_age_s: float = 900.0) -> None:
        self.device_id = device_id
        self._hub = hub
        self._own_kid = own.kid
        info = direction_info("h2d", device_id, own.kid, hub.kid)
        self._key = derive_key(own.x25519_private, hub.x25519, info)
        self._max_age_ms = int(max_age_s * 1000)
        self.window = ReplayWindow()

    def open(self, wire: bytes, now_ms: int) -> OpenedEnvelope:
        parsed = parse(wire)
        header = parsed.header
        if header.device_id != self.device_id or header.kid != self._hub.kid or header.rkid != self._own_kid:
            raise UnknownKeyError("command is not addressed to this device's keys")
        body = decrypt(parsed, self._key)
        signature, plaintext = body[:_SIG_BYTES], body[_SIG_BYTES:]
        self._hub.verify(signature, header.encode() + plaintext)
        if abs(now_ms - header.ts_ms) > self._max_age_ms:
            raise StaleMessageError("command timestamp is outside the allowed window")
        self.window.check(header.seq)
        self.window.commit(header.seq)
        return OpenedEnvelope(header, plaintext)
