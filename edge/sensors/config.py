"""Sensor settings: one discriminated config per source, each with its quality and event rules.

A source (``type: synthetic | serial | mqtt``) is one physical device on the
pole, an air-quality box or a loop-detector controller, reporting one or
more quantities every ``period_s``. Quality checks and event rules live on
the source because their right values depend on the hardware.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

Quantity = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
SensorName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
SimulatedQuantity = Literal["pm25", "no2", "occupancy", "noise"]
_SIMULATED: Final[tuple[SimulatedQuantity, ...]] = ("pm25", "no2", "occupancy", "noise")

# Units are ASCII on purpose: serial devices send ASCII, and one spelling per
# quantity keeps the series of a serial and an MQTT sensor comparable.
DEFAULT_UNITS: Final[dict[str, str]] = {"pm25": "ug/m3", "no2": "ug/m3", "occupancy": "%", "noise": "dB(A)"}

# What the hardware can physically report; outside it the value is a fault
# (a sentinel such as -9999 or 65535, a saturated ADC), not pollution.
DEFAULT_RANGES: Final[dict[str, tuple[float, float]]] = {
    "pm25": (0.0, 1000.0),  # optical particle counters saturate near 1000 ug/m3
    "no2": (0.0, 1000.0),  # electrochemical cells: 0-500 ppb, about 0-950 ug/m3
    "occupancy": (0.0, 100.0),
    "noise": (20.0, 140.0),  # class 1 sound level meters
    # The air-quality drivers' quantities (edge.sensors.air): a PMS5003 reports 0-1000 ug/m3
    # (0-500 effective), an SPS30 0-1000; RH and temperature as the SHT3x can report them.
    "pm1": (0.0, 1000.0),
    "pm25_cf1": (0.0, 1000.0),
    "pm4": (0.0, 1000.0),
    "pm10": (0.0, 1000.0),
    "rh": (0.0, 100.0),
    "temperature": (-40.0, 125.0),
    "o3": (0.0, 1000.0),  # ppb: an OX-B431's range is 0-20 ppm, but street ozone stays below 200 ppb
}

# The smallest deviation scale the spike check trusts, near the sensor's
# resolution: quantised or flat series (empty road at night) have a MAD of 0.
DEFAULT_MIN_SCALE: Final[dict[str, float]] = {"pm25": 0.5, "no2": 1.0, "occupancy": 1.0, "noise": 0.5}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QualityConfig(_Section):
    """Thresholds of the data-quality checks; every flagged reading is still sent, with its flag."""

    ranges: dict[str, tuple[float, float]] = Field(default_factory=lambda: dict(DEFAULT_RANGES))
    stuck_count: int = Field(default=4, ge=2, le=1000)  # this many identical values in a row: stuck
    # Values that may legitimately repeat: an empty road reads 0 % occupancy all night.
    stuck_exempt: dict[str, list[float]] = Field(default_factory=lambda: {"occupancy": [0.0]})
    dropout_factor: float = Field(default=2.5, gt=1.0, le=1000)  # gap > factor × period: dropout
    spike_window: int = Field(default=60, ge=5, le=1000)  # recent values the median and MAD come from
    spike_warmup: int = Field(default=10, ge=3, le=1000)  # values needed before spikes are judged
    spike_z: float = Field(default=7.0, gt=0)  # robust z-score above which a value is a spike
    spike_max_run: int = Field(default=3, ge=1, le=100)  # longer deviations are a level shift, not spikes
    min_scale: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MIN_SCALE))
    default_min_scale: float = Field(default=0.5, gt=0)

    @model_validator(mode="after")
    def _ordered_ranges(self) -> Self:
        for quantity, (low, high) in self.ranges.items():
            if not low < high:
                raise ValueError(f"range of {quantity!r} must be low < high, got ({low}, {high})")
        if self.spike_warmup > self.spike_window:
            raise ValueError("spike_warmup cannot exceed spike_window")
        return self


class ThresholdRule(_Section):
    """Raise ``sensor_threshold`` when ``quantity`` crosses ``level``; re-arm only past ``clear``.

    The gap between ``level`` and ``clear`` is the hysteresis that keeps a
    value hovering at the limit from flapping; ``cooldown_s`` bounds how often
    one rule can fire at all.
    """

    quantity: Quantity
    direction: Literal["above", "below"] = "above"
    level: float
    clear: float
    for_readings: int = Field(default=1, ge=1, le=1000)  # consecutive readings past level before raising
    cooldown_s: float = Field(default=300.0, ge=0)

    @model_validator(mode="after")
    def _hysteresis(self) -> Self:
        if self.direction == "above" and not self.clear < self.level:
            raise ValueError(f"rule on {self.quantity}: clear must be below level for direction 'above'")
        if self.direction == "below" and not self.clear > self.level:
            raise ValueError(f"rule on {self.quantity}: clear must be above level for direction 'below'")
        return self


class AnomalyConfig(_Section):
    """``sensor_anomaly`` events from a score over each series' recent ok readings."""

    enabled: bool = True
    window: int = Field(default=60, ge=8, le=4096)
    # In the scorer's units; the built-in robust z scorer's are robust standard deviations.
    threshold: float = Field(default=10.0, gt=0)
    clear: float = Field(default=4.0, ge=0)
    cooldown_s: float = Field(default=900.0, ge=0)

    @model_validator(mode="after")
    def _hysteresis(self) -> Self:
        if not self.clear < self.threshold:
            raise ValueError("anomaly clear must be below threshold")
        return self


class _SourceBase(_Section):
    name: SensorName
    period_s: float = Field(default=10.0, gt=0, le=86400)  # how often the device reports
    quality: QualityConfig = Field(default_factory=QualityConfig)
    thresholds: list[ThresholdRule] = Field(default_factory=list)
    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig)


class FaultConfig(_Section):
    """Faults the synthetic generator injects, each per sample and per quantity."""

    spike_prob: float = Field(default=0.0, ge=0, le=1)
    spike_magnitude: tuple[float, float] = (8.0, 20.0)  # in noise standard deviations
    stuck_prob: float = Field(default=0.0, ge=0, le=1)
    stuck_len: tuple[int, int] = (6, 30)  # repeated samples
    dropout_prob: float = Field(default=0.0, ge=0, le=1)
    dropout_len: tuple[int, int] = (3, 30)  # missing samples
    out_of_range_prob: float = Field(default=0.0, ge=0, le=1)
    sentinel: float = -9999.0  # what a failing sensor sends instead of a value

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        for name in ("spike_magnitude", "stuck_len", "dropout_len"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be 0 < low <= high, got ({low}, {high})")
        return self


class SyntheticSensorConfig(_SourceBase):
    """Generated readings with daily seasonality and injected faults (demo, tests)."""

    type: Literal["synthetic"] = "synthetic"
    quantities: list[SimulatedQuantity] = Field(default_factory=lambda: list(_SIMULATED), min_length=1)
    seed: int = 0
    utc_offset_h: float = Field(default=0.0, ge=-14, le=14)  # the city's offset: rush hours are local
    weekly: bool = True  # quieter weekends
    realtime: bool = True  # wall clock, paced at period_s; False: a simulated clock as fast as possible
    start: AwareDatetime | None = None  # the simulated clock's start; None: now
    max_ticks: int | None = Field(default=None, ge=1)  # None: endless
    faults: FaultConfig = Field(default_factory=FaultConfig)

    def start_ts(self, now: float) -> float:
        return self.start.timestamp() if self.start is not None else now


class SerialSensorConfig(_SourceBase):
    """A device on a serial line (RS-232/RS-485 adapter, USB CDC) sending text lines."""

    type: Literal["serial"] = "serial"
    port: str = Field(min_length=1)  # prefer a stable udev path, /dev/serial/by-id/...
    baudrate: int = Field(default=9600, gt=0)
    protocol: Literal["nmea", "kv"] = "nmea"
    units: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_UNITS))  # for ``kv`` lines
    reconnect_base_s: float = Field(default=0.5, gt=0)
    reconnect_cap_s: float = Field(default=30.0, gt=0)


class MqttSensorConfig(_SourceBase):
    """JSON readings on a topic of a broker on the device itself (a plain loopback listener)."""

    type: Literal["mqtt"] = "mqtt"
    host: str = "127.0.0.1"
    port: int = Field(default=1883, gt=0, lt=65536)
    topic: str = Field(default="sensors/#", min_length=1)
    client_id: str | None = None  # None: roadside-sensors-<name>
    keepalive_s: int = Field(default=30, ge=5)
    units: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_UNITS))  # when a reading has none
    reconnect_base_s: float = Field(default=0.5, gt=0)
    reconnect_cap_s: float = Field(default=30.0, gt=0)


class AirSerialSensorConfig(_SourceBase):
    """A particle sensor on a UART sending binary frames: Plantower PMS5003/PMS7003, Nova SDS011, Sensirion SPS30.

    ``period_s`` is how often the sensor reports (PMS active mode and SPS30:
    about 1 s; SDS011: 1 s, or the working period); ``dropout_after_s`` of
    silence (no valid frame) raises one ``sensor_dropout`` event until it
    answers again.
    """

    type: Literal["pms5003", "pms7003", "sds011", "sps30"]
    port: str = Field(min_length=1)  # prefer a stable udev path, /dev/serial/by-id/...
    baudrate: int | None = Field(default=None, gt=0)  # None: the device's (9600; SPS30 115200)
    mode: Literal["active", "passive"] = "active"  # Plantower: passive asks for a frame every period_s
    working_period_min: int | None = Field(default=None, ge=0, le=30)  # SDS011 duty cycle; None: leave it
    dropout_after_s: float | None = Field(default=None, gt=0)  # None: 3 × period_s, at least 5 s
    reconnect_base_s: float = Field(default=0.5, gt=0)
    reconnect_cap_s: float = Field(default=30.0, gt=0)

    @property
    def silence_limit_s(self) -> float:
        return self.dropout_after_s if self.dropout_after_s is not None else max(5.0, 3 * self.period_s)


class ElectrodeSheet(_Section):
    """One Alphasense four-electrode sensor on the ADC, with the numbers of its calibration sheet."""

    we_channel: int = Field(ge=0, le=3)
    ae_channel: int = Field(ge=0, le=3)
    we_electronic_zero_mv: float
    ae_electronic_zero_mv: float
    we_sensor_zero_mv: float = 0.0
    ae_sensor_zero_mv: float = 0.0
    sensitivity_mv_ppb: float  # of the target gas (O3 for an OX sensor); negative for NO2-B43F
    no2_sensitivity_mv_ppb: float = 0.0  # OX sensors: their answer to NO2
    algorithm: Literal[1, 2, 3, 4] = 1  # AAN 803-05; the note says which suits which sensor type
    # The temperature factor of AAN 803 for this sensor type and algorithm, every 10 °C or so.
    factor_celsius: list[float] = Field(min_length=1)
    factors: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _usable(self) -> Self:
        if self.sensitivity_mv_ppb == 0:
            raise ValueError("sensitivity_mv_ppb cannot be 0: copy it from the calibration sheet")
        if len(self.factor_celsius) != len(self.factors):
            raise ValueError("give one temperature factor per temperature")
        if self.we_channel == self.ae_channel:
            raise ValueError("the working and auxiliary electrodes need their own ADC channels")
        return self


class AlphasenseSensorConfig(_SourceBase):
    """Alphasense NO2 and OX sensors on an ISB through an ADS1115, temperature and RH from an SHT3x, over I2C."""

    type: Literal["alphasense"] = "alphasense"
    i2c_bus: int = Field(default=1, ge=0)  # /dev/i2c-<n>
    adc_address: int = Field(default=0x48, ge=0x08, le=0x77)
    adc_range_v: float = 4.096  # the ADS1115's full scale: 6.144, 4.096, 2.048, 1.024, 0.512 or 0.256 V
    climate_address: int | None = Field(default=0x44, ge=0x08, le=0x77)  # SHT3x; None: fixed_celsius
    fixed_celsius: float | None = None
    no2: ElectrodeSheet | None = None
    ox: ElectrodeSheet | None = None
    dropout_after_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _something_to_read(self) -> Self:
        if self.no2 is None and self.ox is None:
            raise ValueError("an alphasense source needs a no2 or an ox sensor")
        if self.ox is not None and self.ox.no2_sensitivity_mv_ppb and self.no2 is None:
            raise ValueError("the OX sensor answers NO2 too: it needs the no2 sensor beside it")
        if self.adc_range_v not in (6.144, 4.096, 2.048, 1.024, 0.512, 0.256):
            raise ValueError(f"adc_range_v {self.adc_range_v} is not an ADS1115 range")
        if self.climate_address is None and self.fixed_celsius is None:
            raise ValueError("give climate_address (an SHT3x) or fixed_celsius for temperature compensation")
        return self

    @property
    def silence_limit_s(self) -> float:
        return self.dropout_after_s if self.dropout_after_s is not None else max(5.0, 3 * self.period_s)


class Sht3xSensorConfig(_SourceBase):
    """Temperature and RH from a Sensirion SHT3x on I2C, beside particle sensors that have no RH."""

    type: Literal["sht3x"] = "sht3x"
    i2c_bus: int = Field(default=1, ge=0)  # /dev/i2c-<n>
    address: int = Field(default=0x44, ge=0x08, le=0x77)  # 0x45 with ADDR high
    dropout_after_s: float | None = Field(default=None, gt=0)

    @property
    def silence_limit_s(self) -> float:
        return self.dropout_after_s if self.dropout_after_s is not None else max(5.0, 3 * self.period_s)


SensorConfig = Annotated[
    SyntheticSensorConfig
    | SerialSensorConfig
    | MqttSensorConfig
    | AirSerialSensorConfig
    | AlphasenseSensorConfig
    | Sht3xSensorConfig,
    Field(discriminator="type"),
]
