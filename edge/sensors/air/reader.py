"""The thin readers: a serial port for the particle sensors, an I2C bus for the gas board.

Each owns a device's I/O and nothing else: it writes the codec's commands,
feeds what it reads to the codec, turns readings into samples, reopens the
port with jittered backoff when it goes away, and reports silence. A sensor
that sends no valid frame for ``silence_limit_s`` (unplugged, its fan dead,
frames all corrupt) is a *dropout*: one :class:`SourceEvent` until it answers
again, counted in ``dropouts``.

Only :class:`AirSerialSource` imports ``serial`` and only :class:`LinuxI2CBus`
opens ``/dev/i2c-*``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Protocol

from roadside.edge.sensors.air import alphasense, climate, plantower, sds011, sps30
from roadside.edge.sensors.air.framing import FrameError, FrameStats, Reading
from roadside.edge.sensors.base import SensorSample, SourceEvent
from roadside.edge.sensors.config import (
    AirSerialSensorConfig,
    AlphasenseSensorConfig,
    ElectrodeSheet,
    Sht3xSensorConfig,
)
from roadside.shared.backoff import Backoff

log = logging.getLogger(__name__)


class Decoder(Protocol):
    stats: FrameStats

    def feed(self, chunk: bytes) -> list[list[Reading]]: ...

    def reset(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Device:
    """What differs between the serial sensors: codec, line speed, what to send on open and per period."""

    decoder: Callable[[], Decoder]
    baudrate: int
    on_open: Callable[[AirSerialSensorConfig], bytes]
    poll: Callable[[AirSerialSensorConfig], bytes]  # b"": the sensor reports on its own


def _pms_open(config: AirSerialSensorConfig) -> bytes:
    return plantower.set_passive() if config.mode == "passive" else plantower.set_active()


def _pms_poll(config: AirSerialSensorConfig) -> bytes:
    return plantower.read_passive() if config.mode == "passive" else b""


def _sds_open(config: AirSerialSensorConfig) -> bytes:
    if config.working_period_min is None:
        return b""
    return sds011.set_working_period(config.working_period_min)


DEVICES: Final[dict[str, Device]] = {
    "pms5003": Device(plantower.PlantowerDecoder, 9600, _pms_open, _pms_poll),
    "pms7003": Device(plantower.PlantowerDecoder, 9600, _pms_open, _pms_poll),
    "sds011": Device(sds011.Sds011Decoder, 9600, _sds_open, lambda _c: b""),
    "sps30": Device(sps30.Sps30Decoder, 115200, lambda _c: sps30.start_measurement(),
                    lambda _c: sps30.read_measured_values()),
}  # fmt: skip


class _Port(Protocol):
    """The part of ``serial.Serial`` this adapter uses."""

    in_waiting: int

    def read(self, size: int) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...

    def close(self) -> None: ...


@dataclass
class Silence:
    """Dropout bookkeeping, pure: good frames reset it; past the limit it fires once."""

    limit_s: float
    last_good: float
    silent: bool = False
    dropouts: int = 0

    def good(self, now: float) -> None:
        self.last_good, self.silent = now, False

    def check(self, now: float) -> float | None:
        """Seconds of silence when a dropout starts now, else ``None``."""
        quiet = now - self.last_good
        if self.silent or quiet < self.limit_s:
            return None
        self.silent = True
        self.dropouts += 1
        return quiet


class AirSerialSource:
    """A PMS5003/PMS7003, SDS011 or SPS30 on a serial port."""

    def __init__(
        self,
        config: AirSerialSensorConfig,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = config.name
        self.config = config
        self.device = DEVICES[config.type]
        self.decoder = self.device.decoder()
        self.opens = 0
        self.silence = Silence(config.silence_limit_s, monotonic())
        self._clock = clock
        self._monotonic = monotonic
        self._stop = threading.Event()

    @property
    def stats(self) -> FrameStats:
        return self.decoder.stats

    def samples(self) -> Iterator[SensorSample | SourceEvent]:
        import serial  # pyserial: only this adapter needs it

        backoff = Backoff(self.config.reconnect_base_s, self.config.reconnect_cap_s)
        baudrate = self.config.baudrate or self.device.baudrate
        while not self._stop.is_set():
            try:
                port: _Port = serial.Serial(self.config.port, baudrate, timeout=0.1)
            except (serial.SerialException, OSError) as exc:
                log.warning("sensor %s: cannot open %s: %s", self.name, self.config.port, exc)
                yield from self._dropout()
                self._stop.wait(backoff.next_delay())
                continue
            self.opens += 1
            log.info("sensor %s: reading %s (%s)", self.name, self.config.port, self.config.type)
            try:
                yield from self._read(port, backoff)
            except (serial.SerialException, OSError) as exc:
                log.warning("sensor %s: lost %s: %s", self.name, self.config.port, exc)
            finally:
                port.close()
                self.decoder.reset()
            yield from self._dropout()
            self._stop.wait(backoff.next_delay())

    def _read(self, port: _Port, backoff: Backoff) -> Iterator[SensorSample | SourceEvent]:
        hello = self.device.on_open(self.config)
        if hello:
            port.write(hello)
        next_poll = self._monotonic()
        while not self._stop.is_set():
            now = self._monotonic()
            poll = self.device.poll(self.config)
            if poll and now >= next_poll:
                port.write(poll)
                next_poll = now + self.config.period_s
            chunk = bytes(port.read(max(1, port.in_waiting)))
            frames = self.decoder.feed(chunk) if chunk else []
            if frames:
                backoff.reset()
                self.silence.good(self._monotonic())
            ts = self._clock()
            for readings in frames:
                for r in readings:
                    yield SensorSample(ts, self.name, r.quantity, r.value, r.unit)
            yield from self._dropout()

    def _dropout(self) -> Iterator[SourceEvent]:
        quiet = self.silence.check(self._monotonic())
        if quiet is not None:
            log.warning("sensor %s: no valid frame for %.1f s: dropout", self.name, quiet)
            yield SourceEvent(self._clock(), self.name, "dropout", quiet, self.config.type)

    def close(self) -> None:
        self._stop.set()


class I2CBus(Protocol):
    """Plain I2C transfers to a device address (the Linux i2c-dev interface, or a fake in tests)."""

    def write(self, address: int, data: bytes) -> None: ...

    def read(self, address: int, size: int) -> bytes: ...

    def close(self) -> None: ...


I2C_SLAVE: Final = 0x0703  # linux/i2c-dev.h: the address the next read/write goes to


class LinuxI2CBus:
    """``/dev/i2c-<n>`` through the kernel's i2c-dev driver: an ioctl to pick the device, then read/write."""

    def __init__(self, bus: int) -> None:
        self.path = f"/dev/i2c-{bus}"
        self._fd: int | None = None

    def _select(self, address: int) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR)
        fcntl.ioctl(self._fd, I2C_SLAVE, address)
        return self._fd

    def write(self, address: int, data: bytes) -> None:
        os.write(self._select(address), data)

    def read(self, address: int, size: int) -> bytes:
        return os.read(self._select(address), size)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _sheet(sheet: ElectrodeSheet) -> alphasense.ElectrodeCalibration:
    return alphasense.ElectrodeCalibration(
        we_electronic_zero=sheet.we_electronic_zero_mv,
        ae_electronic_zero=sheet.ae_electronic_zero_mv,
        we_sensor_zero=sheet.we_sensor_zero_mv,
        ae_sensor_zero=sheet.ae_sensor_zero_mv,
        sensitivity=sheet.sensitivity_mv_ppb,
        algorithm=sheet.algorithm,
        factors=alphasense.TemperatureFactors(tuple(sheet.factor_celsius), tuple(sheet.factors)),
        no2_sensitivity=sheet.no2_sensitivity_mv_ppb,
    )


class PolledI2CSource(ABC):
    """Reads one set of values every ``period_s`` over I2C; a failed read is counted, silence is a dropout."""

    driver = "i2c"

    def __init__(
        self,
        name: str,
        period_s: float,
        silence_limit_s: float,
        bus: I2CBus,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.period_s = period_s
        self.bus = bus
        self.stats = FrameStats()
        self.silence = Silence(silence_limit_s, monotonic())
        self._clock, self._monotonic, self._sleep = clock, monotonic, sleep
        self._stop = threading.Event()

    @abstractmethod
    def read_once(self) -> list[Reading]:
        """One set of readings; ``FrameError`` (a CRC) or ``OSError`` (the bus) when it fails."""

    def samples(self) -> Iterator[SensorSample | SourceEvent]:
        while not self._stop.is_set():
            started = self._monotonic()
            try:
                readings = self.read_once()
            except FrameError as exc:
                self.stats.reject(exc)
                readings = []
            except OSError as exc:  # the board is unplugged or the bus is stuck
                log.warning("sensor %s: I2C: %s", self.name, exc)
                self.stats.rejected["bus_error"] += 1
                readings = []
            if readings:
                self.stats.accepted += 1
                self.silence.good(self._monotonic())
                ts = self._clock()
                for r in readings:
                    yield SensorSample(ts, self.name, r.quantity, r.value, r.unit)
            quiet = self.silence.check(self._monotonic())
            if quiet is not None:
                log.warning("sensor %s: no valid reading for %.1f s: dropout", self.name, quiet)
                yield SourceEvent(self._clock(), self.name, "dropout", quiet, self.driver)
            self._stop.wait(max(0.0, self.period_s - (self._monotonic() - started)))

    def close(self) -> None:
        self._stop.set()


def read_sht3x(bus: I2CBus, address: int, sleep: Callable[[float], None]) -> list[Reading]:
    """One high-repeatability single-shot measurement of an SHT3x."""
    bus.write(address, climate.MEASURE_HIGH)
    sleep(climate.MEASURE_WAIT_S)
    return climate.decode_measurement(bus.read(address, 6))


class Sht3xSource(PolledI2CSource):
    """Temperature and RH from a Sensirion SHT3x, beside particle sensors that report no RH."""

    driver = "sht3x"

    def __init__(self, config: Sht3xSensorConfig, bus: I2CBus, **edges: Any) -> None:
        super().__init__(config.name, config.period_s, config.silence_limit_s, bus, **edges)
        self.address = config.address

    def read_once(self) -> list[Reading]:
        return read_sht3x(self.bus, self.address, self._sleep)


class AlphasenseSource(PolledI2CSource):
    """The NO2/OX board: every ``period_s`` reads the SHT3x and the ADC channels, converts to ppb.

    Alongside the gases it reports the electrode voltages (``no2_we_mv``, ...)
    and temperature and RH, so the hub can recalibrate from raw values.
    """

    driver = "alphasense"

    def __init__(self, config: AlphasenseSensorConfig, bus: I2CBus, **edges: Any) -> None:
        super().__init__(config.name, config.period_s, config.silence_limit_s, bus, **edges)
        self.config = config
        self._no2 = _sheet(config.no2) if config.no2 else None
        self._ox = _sheet(config.ox) if config.ox else None

    def millivolts(self, channel: int) -> float:
        """One single-shot conversion of ``channel``."""
        address, fsr = self.config.adc_address, self.config.adc_range_v
        word = alphasense.ads1115_config(channel, fsr)
        self.bus.write(address, bytes([alphasense.REG_CONFIG]) + word.to_bytes(2, "big"))
        self._sleep(0.01)  # 128 SPS: one conversion takes 7.8 ms
        self.bus.write(address, bytes([alphasense.REG_CONVERSION]))
        return alphasense.ads1115_millivolts(self.bus.read(address, 2), fsr)

    def climate(self) -> list[Reading]:
        if self.config.climate_address is None:
            assert self.config.fixed_celsius is not None  # the config's validator
            return [Reading("temperature", self.config.fixed_celsius, "degC")]
        return read_sht3x(self.bus, self.config.climate_address, self._sleep)

    def read_once(self) -> list[Reading]:
        """One set of readings; :class:`FrameError` (SHT3x CRC) or ``OSError`` (bus) if it fails."""
        out = self.climate()
        celsius = out[0].value
        no2_ppb = None
        for gas, cal, sheet in (("no2", self._no2, self.config.no2), ("o3", self._ox, self.config.ox)):
            if cal is None or sheet is None:
                continue
            we, ae = self.millivolts(sheet.we_channel), self.millivolts(sheet.ae_channel)
            ppb = alphasense.gas_ppb(cal, we, ae, celsius, no2_ppb)
            if gas == "no2":
                no2_ppb = ppb
            prefix = "no2" if gas == "no2" else "ox"
            out += [
                Reading(gas, ppb, "ppb"),
                Reading(f"{prefix}_we_mv", we, "mV"),
                Reading(f"{prefix}_ae_mv", ae, "mV"),
            ]
        return out
