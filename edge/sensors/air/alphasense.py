"""Alphasense four-electrode gas sensors (NO2-B43F, OX-B431, ...) on an ISB, read through an ADS1115.

Conversion (Alphasense Application Note AAN 803-05, *Correcting for
background currents in four electrode toxic gas sensors*): the working
electrode (WE) answers the gas and the background; the auxiliary electrode
(AE) answers only the background, whose temperature dependence the note
captures in a factor per sensor type. With the raw voltages ``WEu``, ``AEu``
(mV) and, from the sensor's calibration sheet, the ISB's electronic zeros
``WEe``, ``AEe``, the sensor zeros ``WEo``, ``AEo`` (mV, in zero air) and the
sensitivity (mV/ppb):

====  =============================================================
1     ``WEc = (WEu − WEe) − n_T × (AEu − AEe)``
2     ``WEc = (WEu − WEe) − k_T × (WEo / AEo) × (AEu − AEe)``
3     ``WEc = (WEu − WEe) − (WEo − AEo) − k'_T × (AEu − AEe)``
4     ``WEc = (WEu − WEe) − WEo − k''_T``
====  =============================================================

``ppb = WEc / sensitivity``. The OX sensor answers ozone *and* NO2, so
``O3 = (WEc_OX − NO2 × s_NO2,OX) / s_O3`` with the NO2 of the NO2 sensor
beside it and the OX sensor's NO2 sensitivity from its sheet.

The temperature factors differ per sensor type and algorithm; AAN 803 lists
them every 10 °C from −30 to 50 °C. They are configuration here (no default
table ships: take it from the note for your sensor type), interpolated
linearly and held constant beyond the table's ends.

ADS1115 (Texas Instruments datasheet SBAS444, "Config register"): a
single-shot conversion is started by writing the 16-bit config register
(OS = 1, MUX = 1xx for single-ended AINx, PGA, MODE = 1, data rate,
comparator off) and the signed 16-bit result is read from the conversion
register; full scale is ±FSR over ±32768.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Final, Literal

Algorithm = Literal[1, 2, 3, 4]

# PGA setting (bits 11:9) by full-scale range in volts.
PGA_BITS: Final[dict[float, int]] = {
    6.144: 0b000,
    4.096: 0b001,
    2.048: 0b010,
    1.024: 0b011,
    0.512: 0b100,
    0.256: 0b101,
}
DATA_RATE_BITS: Final[dict[int, int]] = {8: 0, 16: 1, 32: 2, 64: 3, 128: 4, 250: 5, 475: 6, 860: 7}
REG_CONVERSION: Final = 0x00
REG_CONFIG: Final = 0x01


def ads1115_config(channel: int, fsr_v: float = 4.096, sps: int = 128) -> int:
    """The config word that starts one single-ended conversion of ``channel`` (0-3)."""
    if channel not in range(4):
        raise ValueError(f"the ADS1115 has single-ended channels 0-3, not {channel}")
    if fsr_v not in PGA_BITS or sps not in DATA_RATE_BITS:
        raise ValueError(f"unsupported range {fsr_v} V or rate {sps} SPS")
    os_start, mode_single, comparator_off = 1 << 15, 1 << 8, 0b11
    return (
        os_start | (0b100 + channel) << 12 | PGA_BITS[fsr_v] << 9 | mode_single
        | DATA_RATE_BITS[sps] << 5 | comparator_off
    )  # fmt: skip


def ads1115_millivolts(raw: bytes, fsr_v: float = 4.096) -> float:
    """The conversion register's two bytes (big-endian, signed) in millivolts."""
    if len(raw) != 2:
        raise ValueError(f"the conversion register is 2 bytes, got {len(raw)}")
    value = int.from_bytes(raw, "big", signed=True)
    return value * fsr_v * 1000.0 / 32768.0


@dataclass(frozen=True, slots=True)
class TemperatureFactors:
    """A sensor type's background factor every few °C (AAN 803), interpolated between points."""

    celsius: tuple[float, ...]
    factors: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.celsius) != len(self.factors) or not self.celsius:
            raise ValueError("temperature factors need one factor per temperature")
        if any(b <= a for a, b in zip(self.celsius, self.celsius[1:], strict=False)):
            raise ValueError("temperatures of the factor table must rise")

    def at(self, celsius: float) -> float:
        if not math.isfinite(celsius):
            raise ValueError(f"temperature {celsius!r}")
        t, f = self.celsius, self.factors
        if celsius <= t[0]:
            return f[0]
        if celsius >= t[-1]:
            return f[-1]
        i = bisect.bisect_right(t, celsius)
        return f[i - 1] + (f[i] - f[i - 1]) * (celsius - t[i - 1]) / (t[i] - t[i - 1])


@dataclass(frozen=True, slots=True)
class ElectrodeCalibration:
    """One sensor's numbers from its calibration sheet (mV, mV/ppb)."""

    we_electronic_zero: float  # WEe
    ae_electronic_zero: float  # AEe
    we_sensor_zero: float  # WEo
    ae_sensor_zero: float  # AEo
    sensitivity: float  # mV/ppb of the target gas (O3 for an OX sensor)
    algorithm: Algorithm
    factors: TemperatureFactors
    no2_sensitivity: float = 0.0  # OX sensors: mV/ppb of NO2

    def __post_init__(self) -> None:
        if self.sensitivity == 0:
            raise ValueError("sensitivity cannot be 0")
        if self.algorithm == 2 and self.ae_sensor_zero == 0:
            raise ValueError("algorithm 2 divides by the AE sensor zero, which is 0")


def corrected_we(cal: ElectrodeCalibration, we_mv: float, ae_mv: float, celsius: float) -> float:
    """``WEc`` in mV by the sheet's algorithm."""
    factor = cal.factors.at(celsius)
    we, ae = we_mv - cal.we_electronic_zero, ae_mv - cal.ae_electronic_zero
    if cal.algorithm == 1:
        return we - factor * ae
    if cal.algorithm == 2:
        return we - factor * (cal.we_sensor_zero / cal.ae_sensor_zero) * ae
    if cal.algorithm == 3:
        return we - (cal.we_sensor_zero - cal.ae_sensor_zero) - factor * ae
    return we - cal.we_sensor_zero - factor


def gas_ppb(
    cal: ElectrodeCalibration, we_mv: float, ae_mv: float, celsius: float, no2_ppb: float | None = None
) -> float:
    """The target gas in ppb; an OX sensor (``no2_sensitivity`` set) needs the NO2 beside it."""
    wec = corrected_we(cal, we_mv, ae_mv, celsius)
    if cal.no2_sensitivity:
        if no2_ppb is None:
            raise ValueError("an OX sensor reads ozone only with the NO2 sensor's value beside it")
        wec -= no2_ppb * cal.no2_sensitivity
    return wec / cal.sensitivity
