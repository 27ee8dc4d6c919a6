"""Sensirion SPS30 over UART: SHDLC frames with byte stuffing and an inverted-sum checksum.

Layout (Sensirion *Datasheet SPS30*, v1.0 and later, section 5 "UART
interface")::

    host → sensor (MOSI):  0x7E | ADR | CMD | L | DATA[L] | CHK | 0x7E
    sensor → host (MISO):  0x7E | ADR | CMD | STATE | L | DATA[L] | CHK | 0x7E

``CHK`` is the bitwise inverse of the low byte of the sum of every byte from
ADR to the end of DATA, computed before stuffing. Between the two 0x7E
delimiters four bytes are stuffed: 0x7E → 0x7D 0x5E, 0x7D → 0x7D 0x5D,
0x11 → 0x7D 0x31, 0x13 → 0x7D 0x33. ``STATE`` 0 is success; anything else is
an error the sensor reports (bit 7: a device error flag is set).

Commands used: ``0x00`` start measurement (data ``0x01 0x03``: big-endian
IEEE 754 floats), ``0x01`` stop, ``0x03`` read measured values: 40 bytes,
ten floats — mass concentration PM1.0, PM2.5, PM4.0, PM10 (µg/m³), number
concentration PM0.5, PM1.0, PM2.5, PM4.0, PM10 (#/cm³), typical particle size
(µm) — or no data when no new measurement is ready (one per second).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from roadside.edge.sensors.air.framing import FrameError, FrameStats, Reading

FLAG: Final = 0x7E
ESCAPE: Final = 0x7D
_STUFF: Final = {0x7E: 0x5E, 0x7D: 0x5D, 0x11: 0x31, 0x13: 0x33}
_UNSTUFF: Final = {v: k for k, v in _STUFF.items()}
CMD_START: Final = 0x00
CMD_STOP: Final = 0x01
CMD_READ: Final = 0x03
MAX_DATA: Final = 255
# The longest stuffed frame: every byte of ADR, CMD, STATE, L, 255 data bytes and CHK escaped.
MAX_STUFFED: Final = 2 * (5 + MAX_DATA)

_VALUES: Final = (
    ("pm1", "ug/m3"), ("pm25", "ug/m3"), ("pm4", "ug/m3"), ("pm10", "ug/m3"),
    ("nc05", "1/cm3"), ("nc1", "1/cm3"), ("nc25", "1/cm3"), ("nc4", "1/cm3"), ("nc10", "1/cm3"),
    ("typical_size", "um"),
)  # fmt: skip


def checksum(body: bytes) -> int:
    return ~sum(body) & 0xFF


def stuff(raw: bytes) -> bytes:
    out = bytearray()
    for b in raw:
        out += bytes([ESCAPE, _STUFF[b]]) if b in _STUFF else bytes([b])
    return bytes(out)


def unstuff(stuffed: bytes) -> bytes:
    """The raw bytes of a frame's inside; :class:`FrameError` ``bad_stuffing`` if an escape is wrong."""
    out = bytearray()
    escaped = False
    for b in stuffed:
        if escaped:
            if b not in _UNSTUFF:
                raise FrameError("bad_stuffing", f"0x7D followed by {b:#04x}")
            out.append(_UNSTUFF[b])
            escaped = False
        elif b == ESCAPE:
            escaped = True
        elif b in _STUFF:  # 0x11 or 0x13 sent bare: the line (XON/XOFF) or the framer is broken
            raise FrameError("bad_stuffing", f"unescaped {b:#04x}")
        else:
            out.append(b)
    if escaped:
        raise FrameError("bad_stuffing", "frame ends on an escape byte")
    return bytes(out)


def mosi(cmd: int, data: bytes = b"", address: int = 0) -> bytes:
    """A host command frame, stuffed and delimited."""
    if len(data) > MAX_DATA:
        raise ValueError("an SHDLC frame carries at most 255 data bytes")
    body = bytes([address, cmd, len(data)]) + data
    return bytes([FLAG]) + stuff(body + bytes([checksum(body)])) + bytes([FLAG])


def miso(cmd: int, data: bytes = b"", state: int = 0, address: int = 0) -> bytes:
    """A sensor reply frame (for tests, simulators and the benchmark)."""
    body = bytes([address, cmd, state, len(data)]) + data
    return bytes([FLAG]) + stuff(body + bytes([checksum(body)])) + bytes([FLAG])


def start_measurement() -> bytes:
    return mosi(CMD_START, b"\x01\x03")


def read_measured_values() -> bytes:
    return mosi(CMD_READ)


def encode_values(values: dict[str, float]) -> bytes:
    """The 40 data bytes of a read-measured-values reply."""
    return struct.pack(">10f", *(values.get(name, 0.0) for name, _ in _VALUES))


@dataclass(frozen=True, slots=True)
class MisoFrame:
    address: int
    command: int
    state: int
    data: bytes


def decode_inside(inside: bytes) -> MisoFrame:
    """A reply from the stuffed bytes between its two delimiters."""
    raw = unstuff(inside)
    if len(raw) < 5:
        raise FrameError("truncated", f"{len(raw)} bytes")
    address, cmd, state, length = raw[:4]
    if len(raw) != 5 + length:
        raise FrameError("bad_length", f"length field {length}, {len(raw) - 5} data bytes")
    if checksum(raw[:-1]) != raw[-1]:
        raise FrameError("bad_checksum", f"{raw[-1]:#04x} does not match")
    return MisoFrame(address, cmd, state, raw[4:-1])


def readings(frame: MisoFrame) -> list[Reading] | None:
    """The measurement a reply carries; ``None`` when it carries none (an acknowledgement, no new data)."""
    if frame.state != 0:
        raise FrameError("device_error", f"state {frame.state:#04x} to command {frame.command:#04x}")
    if frame.command != CMD_READ or not frame.data:
        return None
    if len(frame.data) != 4 * len(_VALUES):
        raise FrameError("bad_length", f"{len(frame.data)} data bytes in a float measurement")
    floats = struct.unpack(">10f", frame.data)
    return [Reading(name, float(v), unit) for (name, unit), v in zip(_VALUES, floats, strict=True)]


@dataclass
class Sps30Decoder:
    """Bytes in, readings out: frames between 0x7E delimiters, corrupt ones refused and counted."""

    stats: FrameStats = field(default_factory=FrameStats)
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> list[list[Reading]]:
        self._buffer += chunk
        out: list[list[Reading]] = []
        while True:
            start = self._buffer.find(FLAG)
            if start < 0:
                self.stats.skipped_bytes += len(self._buffer)
                self._buffer.clear()
                return out
            self.stats.skipped_bytes += start
            del self._buffer[:start]
            end = self._buffer.find(FLAG, 1)
            if end < 0:
                if len(self._buffer) > MAX_STUFFED + 2:
                    self.stats.rejected["too_long"] += 1
                    self._buffer.clear()
                return out
            if end == 1:  # 0x7E 0x7E: the end of one frame and the start of the next
                del self._buffer[:1]
                continue
            inside = bytes(self._buffer[1:end])
            # A frame that does not decode leaves its closing 0x7E: it may be the start of
            # the next frame, after a frame cut short by a replug.
            del self._buffer[: end + 1 if self._decode(inside, out) else end]

    def _decode(self, inside: bytes, out: list[list[Reading]]) -> bool:
        try:
            values = readings(decode_inside(inside))
        except FrameError as exc:
            self.stats.reject(exc)
            return False
        if values is None:
            self.stats.acks += 1
        else:
            self.stats.accepted += 1
            out.append(values)
        return True

    def reset(self) -> None:
        if len(self._buffer) > 1:
            self.stats.rejected["truncated"] += 1
        self._buffer.clear()
