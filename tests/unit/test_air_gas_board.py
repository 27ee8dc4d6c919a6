"""The Alphasense board reader over a fake I2C bus that answers as an ADS1115 and an SHT3x would."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from roadside.edge.sensors.air import alphasense, climate
from roadside.edge.sensors.air.reader import AlphasenseSource, Sht3xSource
from roadside.edge.sensors.base import SensorSample, SourceEvent
from roadside.edge.sensors.config import AlphasenseSensorConfig, Sht3xSensorConfig


class FakeBus:
    """ADS1115 at 0x48 (config and conversion registers) and SHT3x at 0x44; can be unplugged."""

    def __init__(self, millivolts: dict[int, float], celsius: float = 20.0, rh: float = 55.0) -> None:
        self.millivolts = millivolts
        self.celsius, self.rh = celsius, rh
        self.pointer = 0
        self.channel = 0
        self.plugged = True
        self.corrupt_climate = False

    def write(self, address: int, data: bytes) -> None:
        if not self.plugged:
            raise OSError(121, "Remote I/O error")
        if address == 0x48:
            self.pointer = data[0]
            if self.pointer == alphasense.REG_CONFIG:
                word = int.from_bytes(data[1:3], "big")
                assert word & 0x8000, "a single-shot conversion starts with OS = 1"
                self.channel = ((word >> 12) & 0b111) - 0b100
        elif address == 0x44:
            assert data == climate.MEASURE_HIGH

    def read(self, address: int, size: int) -> bytes:
        if not self.plugged:
            raise OSError(121, "Remote I/O error")
        if address == 0x44:
            raw = climate.encode_measurement(self.celsius, self.rh)
            return raw[:2] + bytes([raw[2] ^ 1]) + raw[3:] if self.corrupt_climate else raw
        assert self.pointer == alphasense.REG_CONVERSION
        assert size == 2
        counts = round(self.millivolts[self.channel] * 32768 / 4096)
        return counts.to_bytes(2, "big", signed=True)

    def close(self) -> None:
        pass


SHEET = {"we_electronic_zero_mv": 230.0, "ae_electronic_zero_mv": 220.0, "sensitivity_mv_ppb": 0.31,
         "factor_celsius": [10.0, 20.0, 30.0], "factors": [1.0, 0.6, 0.4]}  # fmt: skip


def _config(**extra: object) -> AlphasenseSensorConfig:
    return AlphasenseSensorConfig.model_validate(
        {"name": "gas0", "period_s": 0.01, "dropout_after_s": 0.05,
         "no2": {**SHEET, "we_channel": 0, "ae_channel": 1},
         "ox": {**SHEET, "we_channel": 2, "ae_channel": 3, "sensitivity_mv_ppb": 0.369,
                "no2_sensitivity_mv_ppb": 0.3}} | extra
    )  # fmt: skip


def _no_sleep(_s: float) -> None:
    pass


def test_one_reading_converts_both_gases_with_temperature_compensation() -> None:
    bus = FakeBus({0: 300.0, 1: 280.0, 2: 260.0, 3: 230.0}, celsius=15.0)
    source = AlphasenseSource(_config(), bus, sleep=_no_sleep)
    values = {r.quantity: r.value for r in source.read_once()}
    assert values["temperature"] == pytest.approx(15.0, abs=0.01)
    factor = 0.8  # halfway between 1.0 at 10 °C and 0.6 at 20 °C
    no2 = (70 - factor * 60) / 0.31
    ox_wec = 30 - factor * 10
    # The ADC quantises to 0.125 mV at ±4.096 V; the sensor's temperature to 175/65535 °C.
    assert values["no2"] == pytest.approx(no2, abs=0.1)
    assert values["o3"] == pytest.approx((ox_wec - no2 * 0.3) / 0.369, abs=0.2)
    assert values["no2_we_mv"] == pytest.approx(300.0, abs=0.125)
    assert values["ox_ae_mv"] == pytest.approx(230.0, abs=0.125)
    assert values["rh"] == pytest.approx(55.0, abs=0.01)


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def test_a_bad_crc_is_counted_and_a_silent_board_is_one_dropout() -> None:
    bus = FakeBus({0: 300.0, 1: 280.0, 2: 260.0, 3: 230.0})
    now = [0.0]
    source = AlphasenseSource(_config(), bus, monotonic=lambda: now[0], sleep=_no_sleep)
    items: list[SensorSample | SourceEvent] = []
    reader = threading.Thread(target=lambda: items.extend(source.samples()), name="test-gas0", daemon=True)
    reader.start()
    try:
        assert _wait_for(lambda: source.stats.accepted >= 2)
        bus.corrupt_climate = True  # every reading now fails its CRC: no good reading, time passes
        assert _wait_for(lambda: source.stats.rejected["bad_checksum"] >= 2)
        now[0] = 1.0
        assert _wait_for(lambda: source.silence.dropouts == 1)
        bus.plugged = False  # and then the board goes away altogether
        assert _wait_for(lambda: source.stats.rejected["bus_error"] >= 2)
        now[0] = 2.0
        bus.plugged, bus.corrupt_climate = True, False
        accepted = source.stats.accepted
        assert _wait_for(lambda: source.stats.accepted > accepted)
    finally:
        source.close()
        reader.join(5.0)
    assert not reader.is_alive()
    events = [i for i in items if isinstance(i, SourceEvent)]
    assert [(e.kind, e.driver) for e in events] == [("dropout", "alphasense")]  # one per silence
    assert source.silence.dropouts == 1
    assert {i.quantity for i in items if isinstance(i, SensorSample)} >= {"no2", "o3", "temperature", "rh"}


def test_the_config_refuses_an_ox_sensor_without_its_no2_partner() -> None:
    with pytest.raises(ValueError, match="NO2 too"):
        AlphasenseSensorConfig.model_validate(
            {"name": "gas0", "fixed_celsius": 20.0,
             "ox": {**SHEET, "we_channel": 2, "ae_channel": 3, "no2_sensitivity_mv_ppb": 0.3}}
        )  # fmt: skip
    with pytest.raises(ValueError, match="not an ADS1115 range"):
        _config(adc_range_v=3.3)
    with pytest.raises(ValueError, match="own ADC channels"):
        _config(no2={**SHEET, "we_channel": 1, "ae_channel": 1})


def test_a_standalone_sht3x_gives_temperature_and_rh() -> None:
    config = Sht3xSensorConfig(name="climate-1", period_s=0.01, dropout_after_s=0.05)
    bus = FakeBus({}, celsius=31.5, rh=88.0)
    source = Sht3xSource(config, bus, sleep=_no_sleep)
    values = {r.quantity: r.value for r in source.read_once()}
    assert values == {"temperature": pytest.approx(31.5, abs=0.01), "rh": pytest.approx(88.0, abs=0.01)}
    stream = source.samples()
    first = next(stream)
    assert isinstance(first, SensorSample)
    assert (first.sensor, first.unit) == ("climate-1", "degC")
    source.close()
