"""Temperature and relative humidity beside the particle and gas sensors: Sensirion SHT3x over I2C.

A particle counter's reading means little without RH (hygroscopic growth
inflates it above about 70 %, and the US EPA correction for low-cost PM2.5
needs it), and the electrochemical cells need temperature.

Protocol (Sensirion *Datasheet SHT3x-DIS*, v6 and later): write the
single-shot command ``0x24 0x00`` (high repeatability, no clock stretching),
wait at least 15.5 ms, read six bytes: temperature MSB, LSB, CRC, humidity
MSB, LSB, CRC. The CRC is CRC-8 with polynomial 0x31, initial value 0xFF, no
reflection, no final XOR (the datasheet's check value: 0xBEEF → 0x92).
``T = −45 + 175 × S_T / 65535`` °C, ``RH = 100 × S_RH / 65535`` %.
"""

from __future__ import annotations

from typing import Final

from roadside.edge.sensors.air.framing import FrameError, Reading

MEASURE_HIGH: Final = b"\x24\x00"
MEASURE_WAIT_S: Final = 0.016
DEFAULT_ADDRESS: Final = 0x44


def crc8(data: bytes) -> int:
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def encode_measurement(celsius: float, rh: float) -> bytes:
    """The six bytes the sensor sends for these values (tests, simulators)."""
    t_raw = round((celsius + 45) * 65535 / 175)
    h_raw = round(rh * 65535 / 100)
    if not (0 <= t_raw <= 0xFFFF and 0 <= h_raw <= 0xFFFF):
        raise ValueError("outside what an SHT3x can report")
    t, h = t_raw.to_bytes(2, "big"), h_raw.to_bytes(2, "big")
    return t + bytes([crc8(t)]) + h + bytes([crc8(h)])


def decode_measurement(raw: bytes) -> list[Reading]:
    """Temperature (°C) and RH (%) from the six bytes read; :class:`FrameError` if corrupt."""
    if len(raw) != 6:
        raise FrameError("truncated", f"{len(raw)} of 6 bytes")
    if crc8(raw[0:2]) != raw[2] or crc8(raw[3:5]) != raw[5]:
        raise FrameError("bad_checksum", "CRC-8 does not match")
    t_raw, h_raw = int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[3:5], "big")
    return [
        Reading("temperature", -45 + 175 * t_raw / 65535, "degC"),
        Reading("rh", 100 * h_raw / 65535, "%"),
    ]
