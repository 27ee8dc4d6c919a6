"""Nova Fitness SDS011: 10-byte frames of PM2.5 and PM10.

Layout (Nova Fitness *Laser Dust Sensor Control Protocol* V1.3 and the SDS011
datasheet V1.3)::

    0xAA | 0xC0 | PM2.5 lo, hi | PM10 lo, hi | ID lo, hi | checksum | 0xAB

PM values are little-endian in tenths of µg/m³; the checksum is the low byte
of the sum of the six data bytes (PM2.5 to ID). Replies to commands use
``0xC5`` in place of ``0xC0`` with the same size and checksum rule.

Commands from the host are 19 bytes: ``0xAA 0xB4 CMD D1..D12 ID_lo ID_hi
checksum 0xAB`` (``0xFFFF`` addresses every sensor on the line; the checksum
is the low byte of the sum of bytes 2 to 16). ``0x08`` sets the working period
(D1 = 1 to set, D2 = minutes, 0 for continuous, up to 30: the sensor works 30
seconds then reports once per period, which saves its laser and fan);
``0x06`` sleeps or wakes; ``0x04`` asks for one reading in query mode.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from roadside.edge.sensors.air.framing import FrameError, FrameStats, Reading

HEAD: Final = 0xAA
TAIL: Final = 0xAB
DATA: Final = 0xC0
REPLY: Final = 0xC5
FRAME_SIZE: Final = 10
CMD_WORKING_PERIOD: Final = 0x08
CMD_SLEEP: Final = 0x06
CMD_QUERY: Final = 0x04
MAX_PERIOD_MIN: Final = 30


def encode_frame(pm25: float, pm10: float, device_id: int = 0xA1B2) -> bytes:
    """A data frame as the sensor sends it (µg/m³, to 0.1)."""
    data = struct.pack("<HHH", round(pm25 * 10), round(pm10 * 10), device_id)
    return bytes([HEAD, DATA]) + data + bytes([sum(data) & 0xFF, TAIL])


def command(cmd: int, data: bytes = b"", device_id: int = 0xFFFF) -> bytes:
    """A 19-byte host command; ``data`` is padded with zeros to 12 bytes."""
    if len(data) > 12:
        raise ValueError("an SDS011 command carries at most 12 data bytes")
    body = bytes([cmd]) + data.ljust(12, b"\0") + struct.pack("<H", device_id)
    return bytes([HEAD, 0xB4]) + body + bytes([sum(body) & 0xFF, TAIL])


def set_working_period(minutes: int, device_id: int = 0xFFFF) -> bytes:
    """Work 30 s then sleep, reporting once every ``minutes`` (0: continuous, once a second)."""
    if not 0 <= minutes <= MAX_PERIOD_MIN:
        raise ValueError(f"the SDS011 working period is 0-{MAX_PERIOD_MIN} minutes, not {minutes}")
    return command(CMD_WORKING_PERIOD, bytes([1, minutes]), device_id)


def decode_frame(frame: bytes) -> list[Reading] | None:
    """The readings of one 10-byte frame; ``None`` for a command reply; :class:`FrameError` if corrupt."""
    if len(frame) != FRAME_SIZE or frame[0] != HEAD:
        raise FrameError("truncated", f"{len(frame)} bytes")
    if frame[1] not in (DATA, REPLY):
        raise FrameError("bad_command", f"command byte {frame[1]:#04x}")
    if frame[9] != TAIL:
        raise FrameError("truncated" if HEAD in frame[2:] else "bad_tail", f"tail {frame[9]:#04x}")
    if sum(frame[2:8]) & 0xFF != frame[8]:
        raise FrameError("bad_checksum", f"{frame[8]:#04x} does not match")
    if frame[1] == REPLY:
        return None
    pm25, pm10 = struct.unpack_from("<HH", frame, 2)
    return [Reading("pm25", pm25 / 10, "ug/m3"), Reading("pm10", pm10 / 10, "ug/m3")]


@dataclass
class Sds011Decoder:
    """Bytes in, readings out, corrupt frames refused and counted."""

    stats: FrameStats = field(default_factory=FrameStats)
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> list[list[Reading]]:
        self._buffer += chunk
        out: list[list[Reading]] = []
        while True:
            start = self._buffer.find(HEAD)
            if start < 0:
                self.stats.skipped_bytes += len(self._buffer)
                self._buffer.clear()
                return out
            self.stats.skipped_bytes += start
            del self._buffer[:start]
            if len(self._buffer) >= 2 and self._buffer[1] not in (DATA, REPLY):
                self.stats.skipped_bytes += 1  # 0xAA inside other bytes, not a frame start
                del self._buffer[:1]
                continue
            if len(self._buffer) < FRAME_SIZE:
                return out
            try:
                readings = decode_frame(bytes(self._buffer[:FRAME_SIZE]))
            except FrameError as exc:
                self.stats.reject(exc)
                del self._buffer[:1]
                continue
            del self._buffer[:FRAME_SIZE]
            if readings is None:
                self.stats.acks += 1
            else:
                self.stats.accepted += 1
                out.append(readings)

    def reset(self) -> None:
        if self._buffer:
            self.stats.rejected["truncated"] += 1
        self._buffer.clear()
