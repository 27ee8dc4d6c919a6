"""The lean MQTT 5 session's packet encoding and parsing (pure, no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadside.mqttlink.lean import (
    ProtocolError,
    connect_packet,
    decode_varint,
    encode_varint,
    parse_properties,
    parse_publish,
    pubacks,
    publish_packet,
)


@given(st.integers(min_value=0, max_value=268_435_455))
def test_a_variable_byte_integer_round_trips(value: int) -> None:
    raw = encode_varint(value)
    assert len(raw) <= 4
    assert decode_varint(b"x" + raw + b"rest", 1) == (value, 1 + len(raw))


def test_a_variable_byte_integer_cut_short_is_incomplete_and_a_fifth_byte_is_malformed() -> None:
    assert decode_varint(encode_varint(300)[:1], 0) is None
    with pytest.raises(ProtocolError):
        decode_varint(b"\xff\xff\xff\xff\x01", 0)


@given(
    topic=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80),
    payload=st.binary(max_size=2000),
    qos=st.sampled_from([0, 1]),
    mid=st.integers(min_value=1, max_value=65535),
    retain=st.booleans(),
    dup=st.booleans(),
)
def test_a_publish_round_trips(
    topic: str, payload: bytes, qos: int, mid: int, retain: bool, dup: bool
) -> None:
    packet = publish_packet(topic, payload, qos, mid, retain, dup=dup)
    length, start = decode_varint(packet, 1) or (0, 0)
    assert start + length == len(packet)
    message = parse_publish(packet[0], memoryview(packet)[start:])
    assert (message.topic, message.payload, message.qos, message.retain) == (topic, payload, qos, retain)
    assert message.dup is dup  # a redelivery: the hub counts a replayed copy instead of dead-lettering it
    assert message.mid == (mid if qos else 0)


def test_a_publish_with_properties_skips_them() -> None:
    # Topic "a/b", packet id 7, properties: payload format indicator (0x01 1) and a user property.
    props = b"\x01\x01" + b"\x26\x00\x01k\x00\x01v"
    body = b"\x00\x03a/b\x00\x07" + encode_varint(len(props)) + props + b"payload"
    message = parse_publish(0x32, body)
    assert (message.topic, message.mid, message.payload) == ("a/b", 7, b"payload")


def test_qos_2_and_properties_past_the_packet_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="QoS 2"):
        parse_publish(0x34, b"\x00\x01a\x00\x01\x00")
    with pytest.raises(ProtocolError, match="past the packet"):
        parse_publish(0x32, b"\x00\x01a\x00\x01\x09\x01")


def test_pubacks_are_four_bytes_each_in_one_buffer() -> None:
    assert pubacks([1, 258, 65535]) == b"\x40\x02\x00\x01" + b"\x40\x02\x01\x02" + b"\x40\x02\xff\xff"
    assert pubacks([]) == b""


def test_connack_properties_are_read_by_identifier() -> None:
    # Receive Maximum 20, an assigned client id (skipped), Server Keep Alive 30, Topic Alias Maximum 10.
    props = b"\x21\x00\x14" + b"\x12\x00\x03hub" + b"\x13\x00\x1e" + b"\x22\x00\x0a"
    assert parse_properties(props, 0, len(props)) == {0x21: 20, 0x13: 30, 0x22: 10}
    with pytest.raises(ProtocolError, match="unknown"):
        parse_properties(b"\x7f\x00", 0, 2)


def test_connect_asks_for_a_persistent_session_its_expiry_and_receive_maximum() -> None:
    packet = connect_packet("hub-1", 30, persistent=True, session_expiry_s=3600, receive_maximum=1000)
    assert packet[0] == 0x10
    length, start = decode_varint(packet, 1) or (0, 0)
    body = packet[start:]
    assert len(body) == length
    assert body[:7] == b"\x00\x04MQTT\x05"
    assert body[7] == 0x00  # clean start off
    assert body[8:10] == b"\x00\x1e"
    props_len, props_start = decode_varint(body, 10) or (0, 0)
    assert parse_properties(body, props_start, props_start + props_len) == {0x11: 3600, 0x21: 1000}
    assert body[props_start + props_len :] == b"\x00\x05hub-1"
    assert connect_packet("d", 60, persistent=False, session_expiry_s=None)[9] == 0x02  # clean start
