"""The sealed envelope: round-trips, and every way a message is refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roadside.shared.envelope import (
    MAX_WIRE_BYTES,
    DeviceCommandOpener,
    DeviceSealer,
    Header,
    HubCommandSealer,
    HubOpener,
    ReplayWindow,
    parse,
)
from roadside.shared.errors import (
    BadSignatureError,
    OversizeError,
    ReplayError,
    StaleMessageError,
    TamperedError,
    UnknownKeyError,
)
from roadside.shared.keys import KeyPair, PublicKeys

HUB = KeyPair.generate()
DEVICE = KeyPair.generate()
OTHER = KeyPair.generate()
NOW = 1_800_000_000_000


def registry(device_id: str, kid: str) -> PublicKeys | None:
    return DEVICE.public() if (device_id, kid) == ("dev-1", DEVICE.kid) else None


def opener() -> HubOpener:
    return HubOpener([HUB], registry)


def sealer() -> DeviceSealer:
    return DeviceSealer("dev-1", DEVICE, HUB.public())


@settings(max_examples=60, deadline=None)
@given(
    payload=st.binary(max_size=4096),
    seq=st.integers(min_value=0, max_value=2**53),
    kind=st.sampled_from(["counts", "events", "sensors", "health", "ack"]),
)
def test_round_trip(payload: bytes, seq: int, kind: str) -> None:
    wire = sealer().seal(kind, seq, payload, NOW)
    opened = opener().open(wire, NOW)
    assert opened.plaintext == payload
    assert (opened.header.device_id, opened.header.kind, opened.header.seq) == ("dev-1", kind, seq)


def test_ciphertext_hides_the_payload() -> None:
    secret = b'{"records": "plate ABC123"}'
    wire = sealer().seal("events", 1, secret, NOW)
    assert b"ABC123" not in wire
    assert b"dev-1" in wire  # the header travels in clear, bound as associated data


@settings(max_examples=100, deadline=None)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_is_refused(position: int, flip: int) -> None:
    wire = bytearray(sealer().seal("counts", 7, b"payload bytes", NOW))
    wire[position % len(wire)] ^= flip
    with pytest.raises((TamperedError, UnknownKeyError, StaleMessageError, ReplayError)):
        opener().open(bytes(wire), NOW)


def test_header_edit_fails_the_tag() -> None:
    wire = sealer().seal("counts", 7, b"x", NOW)
    forged = wire.replace(b'"seq":7', b'"seq":8')
    assert forged != wire
    with pytest.raises(TamperedError):
        opener().open(forged, NOW)


def test_unknown_device_key_is_refused() -> None:
    wire = DeviceSealer("dev-1", OTHER, HUB.public()).seal("counts", 1, b"x", NOW)
    with pytest.raises(UnknownKeyError):
        opener().open(wire, NOW)


def test_unknown_device_is_refused() -> None:
    wire = DeviceSealer("dev-9", DEVICE, HUB.public()).seal("counts", 1, b"x", NOW)
    with pytest.raises(UnknownKeyError):
        opener().open(wire, NOW)


def test_sealed_for_another_hub_is_refused() -> None:
    wire = DeviceSealer("dev-1", DEVICE, OTHER.public()).seal("counts", 1, b"x", NOW)
    with pytest.raises(UnknownKeyError):
        opener().open(wire, NOW)


def test_forged_with_the_right_key_ids_but_wrong_key_fails_the_tag() -> None:
    # An attacker who knows the key ids (they are public) but not the device's private key.
    forger = DeviceSealer("dev-1", OTHER, HUB.public())
    forger._kid = DEVICE.kid
    with pytest.raises(TamperedError):
        opener().open(forger.seal("counts", 1, b"x", NOW), NOW)


@pytest.mark.parametrize("offset_ms", [-901_000, 121_000])
def test_stale_or_future_timestamps_are_refused(offset_ms: int) -> None:
    wire = sealer().seal("counts", 1, b"x", NOW + offset_ms)
    with pytest.raises(StaleMessageError):
        opener().open(wire, NOW)


def test_replay_is_refused_after_commit_only() -> None:
    hub = opener()
    wire = sealer().seal("counts", 5, b"x", NOW)
    first = hub.open(wire, NOW)
    hub.open(wire, NOW)  # not stored yet: a redelivery must still be accepted
    hub.commit(first.header)
    with pytest.raises(ReplayError):
        hub.open(wire, NOW)


def test_restored_window_refuses_what_the_store_already_holds() -> None:
    hub = opener()
    hub.restore("dev-1", [3, 5])
    with pytest.raises(ReplayError):
        hub.open(sealer().seal("counts", 5, b"x", NOW), NOW)
    assert hub.open(sealer().seal("counts", 4, b"x", NOW), NOW).header.seq == 4


def test_replay_window_refuses_numbers_below_it() -> None:
    window = ReplayWindow(size=10)
    window.commit(100)
    window.check(95)
    with pytest.raises(ReplayError):
        window.check(90)


def test_oversize_is_refused_before_parsing() -> None:
    with pytest.raises(OversizeError):
        parse(b"\x00" * (MAX_WIRE_BYTES + 1))


@pytest.mark.parametrize(
    "wire",
    [b"", b"RS", b"XX\x01\x00\x02{}", b"RS\x09\x00\x02{}" + b"\x00" * 40, b"RS\x01\xff\xff" + b"\x00" * 40],
)
def test_malformed_framing_is_refused(wire: bytes) -> None:
    with pytest.raises(TamperedError):
        opener().open(wire, NOW)


def test_header_with_wrong_types_is_refused() -> None:
    bad = json.dumps(
        {"v": 1, "dev": "dev-1", "kind": "counts", "seq": "1", "ts": NOW, "kid": "a", "rkid": "b"}
    )
    with pytest.raises(TamperedError):
        Header.decode(bad.encode())


def test_command_round_trip_and_signature() -> None:
    hub_side = HubCommandSealer(HUB)
    device_side = DeviceCommandOpener("dev-1", DEVICE, HUB.public())
    wire = hub_side.seal("dev-1", DEVICE.public(), 1, b'{"type":"ping"}', NOW)
    assert device_side.open(wire, NOW).plaintext == b'{"type":"ping"}'
    with pytest.raises(ReplayError):
        device_side.open(wire, NOW)


def test_command_from_an_impostor_hub_is_refused() -> None:
    # Same X25519 key (so the tag verifies) but a different signing key.
    impostor = KeyPair(HUB.x25519_private, OTHER.ed25519_private)
    wire = HubCommandSealer(impostor).seal("dev-1", DEVICE.public(), 1, b"{}", NOW)
    with pytest.raises(BadSignatureError):
        DeviceCommandOpener("dev-1", DEVICE, HUB.public()).open(wire, NOW)


def test_command_for_another_device_is_refused() -> None:
    wire = HubCommandSealer(HUB).seal("dev-2", OTHER.public(), 1, b"{}", NOW)
    with pytest.raises(UnknownKeyError):
        DeviceCommandOpener("dev-1", DEVICE, HUB.public()).open(wire, NOW)
