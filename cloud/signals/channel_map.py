"""A signal's channel map: detector channel ↔ camera zone ↔ phase ↔ approach/lane (pure).

Validated whole, so a map the hub stores is always usable: channels and
zones are unique within a signal, channels 1–128 (NTCIP 1202 vehicle
detectors; pedestrian detectors 1–32 in their own numbering), phases 1–16.
A malformed map raises :class:`~roadside.shared.errors.ConfigError` with the
reason, never a half-applied change.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from roadside.shared.errors import ConfigError
from roadside.shared.schemas import Name
from roadside.shared.signals import MAX_CHANNEL, MAX_PHASE
from roadside.shared.topics import check_name

__all__ = ["Channel", "ChannelMap", "ZoneKey", "parse_channel_map"]

MAX_PED_CHANNEL = 32
ChannelKind = Literal["vehicle", "pedestrian"]


class Channel(BaseModel):
    """One detector channel of a signal and the camera zone that drives it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: Annotated[int, Field(ge=1, le=MAX_CHANNEL)]
    kind: ChannelKind = "vehicle"
    device: Name
    stream: Name
    zone: Name
    phase: Annotated[int, Field(ge=1, le=MAX_PHASE)] | None = None
    approach: Name | None = None
    lane: Annotated[int, Field(ge=0, le=64)] | None = None

    @model_validator(mode="after")
    def _ped_range(self) -> Channel:
        if self.kind == "pedestrian" and self.channel > MAX_PED_CHANNEL:
            raise ValueError(f"pedestrian detector channel {self.channel} is above {MAX_PED_CHANNEL}")
        return self


@dataclass(frozen=True, slots=True)
class ZoneKey:
    device: str
    stream: str
    zone: str


class ChannelMap(BaseModel):
    """Every channel of one signal; see the module docstring for the rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: list[Channel] = Field(default_factory=list, max_length=MAX_CHANNEL + MAX_PED_CHANNEL)

    @model_validator(mode="after")
    def _unique(self) -> ChannelMap:
        seen: dict[tuple[str, int], Channel] = {}
        zones: dict[ZoneKey, int] = {}
        for c in self.channels:
            key = (c.kind, c.channel)
            if key in seen:
                raise ValueError(f"{c.kind} channel {c.channel} is listed twice")
            seen[key] = c
            zone = ZoneKey(c.device, c.stream, c.zone)
            if zone in zones:
                raise ValueError(
                    f"zone {c.device}/{c.stream}/{c.zone} drives channels {zones[zone]} and {c.channel}: "
                    "one zone, one channel"
                )
            zones[zone] = c.channel
        return self

    def by_zone(self) -> dict[ZoneKey, Channel]:
        return {ZoneKey(c.device, c.stream, c.zone): c for c in self.channels}

    def devices(self) -> set[str]:
        return {c.device for c in self.channels}

    def channel(self, number: int, kind: ChannelKind = "vehicle") -> Channel:
        """The channel of this number; ``ConfigError`` if the map has none."""
        for c in self.channels:
            if c.channel == number and c.kind == kind:
                return c
        known = sorted(c.channel for c in self.channels if c.kind == kind)
        raise ConfigError(f"unknown {kind} detector channel {number}; this signal has {known or 'none'}")

    def without(self, number: int, kind: ChannelKind = "vehicle") -> ChannelMap:
        """The map less one channel; ``ConfigError`` if it has no such channel."""
        self.channel(number, kind)
        return ChannelMap(channels=[c for c in self.channels if (c.channel, c.kind) != (number, kind)])

    def with_channel(self, channel: Channel) -> ChannelMap:
        """The map with ``channel`` added or replaced (by number and kind); validated whole."""
        kept = [c for c in self.channels if (c.channel, c.kind) != (channel.channel, channel.kind)]
        return parse_channel_map({"channels": [*(c.model_dump() for c in kept), channel.model_dump()]})


def parse_channel_map(data: Mapping[str, Any] | Iterable[Any] | str | bytes) -> ChannelMap:
    """A validated map from JSON text or data (an object with ``channels``, or the bare list)."""
    try:
        value = json.loads(data) if isinstance(data, str | bytes) else data
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the channel map is not JSON: {exc}") from exc
    if isinstance(value, list):
        value = {"channels": value}
    try:
        return ChannelMap.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'map'}: {e['msg']}" for e in exc.errors()[:3]
        )
        raise ConfigError(f"malformed channel map: {problems}") from exc


def check_signal_id(signal: str) -> str:
    """A signal id safe in topics, URLs and ACLs."""
    return check_name(signal, "signal id")
