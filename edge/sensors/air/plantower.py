"""Plantower PMS5003 / PMS7003: 32-byte frames of particle mass and counts.

Layout (Plantower PMS5003 data manual V2.3, "Appendix I"; the PMS7003 manual
V2.5 has the same frame), all words big-endian::

    0x42 0x4D | length = 28 (2 bytes) | 13 data words | checksum (2 bytes)

Data words: PM1.0, PM2.5, PM10 at "CF=1" (factory calibration, meant for
indoor aerosol); PM1.0, PM2.5, PM10 "under atmospheric environment" (µg/m³);
particles above 0.3, 0.5, 1.0, 2.5, 5.0 and 10 µm in 0.1 L of air; one
reserved word (the PMS7003 puts a version and an error code there). The
checksum is the 16-bit sum of every byte before it, the start bytes included.

Commands are 7 bytes, ``0x42 0x4D CMD DATA_H DATA_L LRC_H LRC_L`` with the
same kind of sum: ``0xE1`` sets the mode (data 0 passive, 1 active), ``0xE2``
asks for one frame in passive mode, ``0xE4`` sleeps (0) or wakes (1). The
sensor answers a mode or sleep command with an 8-byte frame of length 4,
counted as an acknowledgement.

Roadside reports the "atmospheric environment" values as ``pm1``, ``pm25`` and
``pm10``; the CF=1 values and counts go along as ``pm25_cf1`` and ``n03`` …
``n100`` (counts per 0.1 L) for calibration and diagnosis.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from roadside.edge.sensors.air.framing import FrameError, FrameStats, Reading

START: Final = b"\x42\x4d"
DATA_LENGTH: Final = 28  # 13 words + checksum
ACK_LENGTH: Final = 4
FRAME_SIZE: Final = 4 + DATA_LENGTH
CMD_MODE: Final = 0xE1
CMD_READ: Final = 0xE2
CMD_SLEEP: Final = 0xE4

_WORDS: Final = (
    ("pm1_cf1", "ug/m3"), ("pm25_cf1", "ug/m3"), ("pm10_cf1", "ug/m3"),
    ("pm1", "ug/m3"), ("pm25", "ug/m3"), ("pm10", "ug/m3"),
    ("n03", "1/0.1L"), ("n05", "1/0.1L"), ("n10", "1/0.1L"),
    ("n25", "1/0.1L"), ("n50", "1/0.1L"), ("n100", "1/0.1L"),
)  # fmt: skip


def _sum16(data: bytes) -> int:
    return sum(data) & 0xFFFF


def encode_frame(values: dict[str, int], reserved: int = 0) -> bytes:
    """A data frame as the sensor sends it (for tests, simulators and the benchmark)."""
    words = [values.get(name, 0) for name, _ in _WORDS] + [reserved]
    body = START + struct.pack(">H13H", DATA_LENGTH, *words)
    return body + struct.pack(">H", _sum16(body))


def command(cmd: int, data: int = 0) -> bytes:
    """A 7-byte host command."""
    body = START + struct.pack(">BH", cmd, data)
    return body + struct.pack(">H", _sum16(body))


def set_passive() -> bytes:
    return command(CMD_MODE, 0)


def set_active() -> bytes:
    return command(CMD_MODE, 1)


def read_passive() -> bytes:
    return command(CMD_READ, 0)


def decode_frame(frame: bytes) -> list[Reading] | None:
    """The readings of one whole frame; ``None`` for an acknowledgement; :class:`FrameError` if corrupt."""
    if len(frame) < 4 or frame[:2] != START:
        raise FrameError("truncated", f"{len(frame)} bytes, no start")
    (length,) = struct.unpack_from(">H", frame, 2)
    if length not in (DATA_LENGTH, ACK_LENGTH):
        raise FrameError("bad_length", f"length field {length}")
    if len(frame) != 4 + length:
        raise FrameError("truncated", f"{len(frame)} of {4 + length} bytes")
    (given,) = struct.unpack_from(">H", frame, len(frame) - 2)
    if _sum16(frame[:-2]) != given:
        inner = frame.find(START, 2, len(frame) - 1)
        if inner >= 0:
            raise FrameError("truncated", f"a new frame starts at byte {inner}")
        raise FrameError("bad_checksum", f"{given:#06x} does not match")
    if length == ACK_LENGTH:
        return None
    words = struct.unpack_from(">13H", frame, 4)
    return [Reading(name, float(w), unit) for (name, unit), w in zip(_WORDS, words, strict=False)]


@dataclass
class PlantowerDecoder:
    """Bytes in, readings out: finds frames in a byte stream, refuses and counts the corrupt ones."""

    stats: FrameStats = field(default_factory=FrameStats)
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> list[list[Reading]]:
        """The readings of every whole frame ``chunk`` completes, one list per frame."""
        self._buffer += chunk
        out: list[list[Reading]] = []
        while True:
            start = self._buffer.find(START)
            if start < 0:
                keep = 1 if self._buffer.endswith(START[:1]) else 0  # half a start marker
                self.stats.skipped_bytes += len(self._buffer) - keep
                del self._buffer[: len(self._buffer) - keep]
                return out
            self.stats.skipped_bytes += start
            del self._buffer[:start]
            if len(self._buffer) < 4:
                return out
            (length,) = struct.unpack_from(">H", self._buffer, 2)
            size = 4 + length if length in (DATA_LENGTH, ACK_LENGTH) else 4
            if len(self._buffer) < size:
                return out
            try:
                readings = decode_frame(bytes(self._buffer[:size]))
            except FrameError as exc:
                self.stats.reject(exc)
                del self._buffer[:1]  # a real start may sit inside what looked like a frame
                continue
            del self._buffer[:size]
            if readings is None:
                self.stats.acks += 1
            else:
                self.stats.accepted += 1
                out.append(readings)

    def reset(self) -> None:
        """The port went away: a partial frame is counted as truncated."""
        if self._buffer:
            self.stats.rejected["truncated"] += 1
        self._buffer.clear()
