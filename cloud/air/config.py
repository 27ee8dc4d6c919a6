"""The hub's air-quality settings: locations with their sensors, calibrations, rules, limits.

Part of ``HubSettings`` as ``air``; validated once at start. Calibrations are
versioned (``roadside.shared.air.calibration``): to change one, add a version
with a higher number and a later ``valid_from``; a changed version under an
old number is refused when the hub starts.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Annotated, Final, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from roadside.cloud.air.factors import DEFAULT_EMISSION_FACTORS
from roadside.cloud.air.stages import ChannelPair, CleaningRules
from roadside.shared.air.calibration import (
    CalibrationBook,
    CalibrationError,
    CalibrationVersion,
    EpaPm25,
    Linear,
)

Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]

# OpenAQ's parameter names and the units Roadside's drivers report.
PARAMETERS: Final[dict[str, tuple[str, str]]] = {
    "pm1": ("PM1", "ug/m3"),
    "pm25": ("PM2.5", "ug/m3"),
    "pm4": ("PM4", "ug/m3"),
    "pm10": ("PM10", "ug/m3"),
    "no2": ("NO₂", "ppb"),
    "o3": ("O₃", "ppb"),
    "so2": ("SO₂", "ppb"),
    "co": ("CO", "ppm"),
    "temperature": ("Temperature", "degC"),
    "rh": ("Relative humidity", "%"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AirSensor(_Section):
    """One device's sensor at a location (``device`` as enrolled, ``sensor`` as its readings name it)."""

    device: Name
    sensor: Name
    period_s: float = Field(default=60.0, gt=0, le=3600)  # how often it reports: the coverage's expectation
    parameters: list[Name] = Field(default_factory=lambda: ["pm25", "pm10", "no2", "o3", "rh", "temperature"])

    @property
    def key(self) -> str:
        """How the hub names this physical sensor: ``<device>.<sensor>`` (calibrations and pairs use it)."""
        return f"{self.device}.{self.sensor}"


class AirPair(_Section):
    """Two sensors (``<device>.<sensor>``) of one parameter that should agree (Barkjohn 2021's A/B rule)."""

    a: Name
    b: Name
    parameter: Name = "pm25"


class AirLocation(_Section):
    id: Ident
    name: str = Field(min_length=1, max_length=128)
    site: Name  # the Roadside site of its devices
    timezone: str = "UTC"
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    station: Literal["traffic", "background"] = "traffic"
    sensors: list[AirSensor] = Field(min_length=1, max_length=64)
    pairs: list[AirPair] = Field(default_factory=list)
    road_length_km: float = Field(default=0.1, gt=0, le=100)  # the segment its traffic counts stand for

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Berlin)") from exc
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class AirCalibration(_Section):
    """One version of a sensor's calibration (copy from the co-location report)."""

    sensor: Name  # <device>.<sensor>
    quantity: Name  # what the sensor reports: pm25_cf1 for the EPA correction
    output: Name | None = None  # the parameter it yields (pm25 from pm25_cf1); None: the quantity
    version: int = Field(ge=1)
    valid_from: AwareDatetime | None = None  # None: from the beginning
    method: Literal["linear", "us-epa-pm25"]
    slope: float = 1.0
    intercept: float = 0.0
    rh_coefficient: float = 0.0
    variant: Literal["us-epa-2021", "us-epa-2022"] = "us-epa-2022"

    def to_version(self) -> CalibrationVersion:
        method = (
            Linear(self.slope, self.intercept, self.rh_coefficient)
            if self.method == "linear"
            else EpaPm25(self.variant)
        )
        start = self.valid_from.timestamp() if isinstance(self.valid_from, datetime) else 0.0
        return CalibrationVersion(self.sensor, self.quantity, self.version, method, start, self.output)


class AirConfig(_Section):
    enabled: bool = True
    standard: Literal["us-epa", "eu-eaqi", "eu-caqi"] = "us-epa"
    locations: list[AirLocation] = Field(default_factory=list, max_length=10_000)
    calibrations: list[AirCalibration] = Field(default_factory=list)
    rh_max: float = Field(default=95.0, gt=0, le=100)
    abs_tolerance: float = Field(default=5.0, ge=0)
    rel_tolerance: float = Field(default=0.7, ge=0)
    match_s: float = Field(default=90.0, gt=0, le=3600)
    # Hourly means above these (in the parameter's unit) raise air_exceedance events.
    limits: dict[Name, float] = Field(default_factory=dict)
    # g per vehicle-km by pollutant and counted class ({"nox": {"car": ..., "truck": ...}}), for the
    # city's fleet (EMEP/EEA Guidebook 1.A.3.b, or HBEFA/COPERT); the default is SUMO's HBEFA 4 model
    # over our intersection's fleet (cloud/air/factors.py, docs/air-quality.md); {} turns estimates off.
    emission_factors: dict[Name, dict[Name, float]] = Field(
        default_factory=lambda: copy.deepcopy(DEFAULT_EMISSION_FACTORS)
    )
    every_s: float = Field(default=60.0, gt=0, le=3600)  # how often the hub processes new readings
    late_s: float = Field(default=300.0, ge=0, le=86_400)  # each pass re-reads this much before the last
    rescan_s: float = Field(default=3 * 3600.0, ge=60, le=7 * 86_400)  # late readings up to this old...
    deep_every_s: float = Field(default=3600.0, ge=60, le=86_400)  # ...are looked for this often

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        ids = [loc.id for loc in self.locations]
        if len(ids) != len(set(ids)):
            raise ValueError("air location ids must be unique")
        seen: dict[str, str] = {}
        for loc in self.locations:
            for s in loc.sensors:
                if s.key in seen:
                    raise ValueError(f"sensor {s.key} is at two locations")
                seen[s.key] = loc.id
            for pair in loc.pairs:
                if {pair.a, pair.b} - {s.key for s in loc.sensors}:
                    raise ValueError(
                        f"pair {pair.a}/{pair.b} names a sensor not at {loc.id} (<device>.<sensor>)"
                    )
        for c in self.calibrations:
            if c.sensor not in seen:
                raise ValueError(
                    f"calibration of {c.sensor}: no such sensor at any location (<device>.<sensor>)"
                )
        try:
            self.book()
        except CalibrationError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def book(self) -> CalibrationBook:
        return CalibrationBook.of(c.to_version() for c in self.calibrations)

    def rules(self, location: AirLocation) -> CleaningRules:
        return CleaningRules(
            rh_max=self.rh_max,
            match_s=self.match_s,
            pairs=tuple(ChannelPair(p.a, p.b, p.parameter) for p in location.pairs),
            abs_tolerance=self.abs_tolerance,
            rel_tolerance=self.rel_tolerance,
        )

    def served(self, sensor: AirSensor) -> frozenset[str]:
        """What the API lists as the sensor's own sensors: its parameters and its calibrations' inputs."""
        return frozenset(
            {*sensor.parameters, *(c.quantity for c in self.calibrations if c.sensor == sensor.key)}
        )

    def inputs(self, sensor: AirSensor) -> frozenset[str]:
        """The quantities the hub keeps of a sensor: what it serves, and RH (the EPA correction needs it)."""
        return self.served(sensor) | {"rh"}

    def location_of(self) -> dict[tuple[str, str], tuple[AirLocation, AirSensor]]:
        return {(s.device, s.sensor): (loc, s) for loc in self.locations for s in loc.sensors}
