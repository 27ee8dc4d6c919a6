"""MQTT topic names: ``roadside/v1/<site>/<device>/<kind>`` and ``roadside/v1/cmd/<device>``."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final, Literal, get_args

from roadside.shared.errors import ConfigError

ROOT: Final = "roadside/v1"
UplinkKind = Literal[
    "events", "counts", "sensors", "health", "samples", "ack", "ota", "status", "detector", "movements"
]
UPLINK_KINDS: Final = frozenset(get_args(UplinkKind))
_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is safe inside a topic and an ACL file, else raise."""
    if not _SAFE.fullmatch(value):
        raise ConfigError(f"{what} {value!r} is not allowed: use 1-64 characters from A-Z a-z 0-9 _ -")
    return value


def uplink(site: str, device_id: str, kind: UplinkKind) -> str:
    """Topic a device publishes ``kind`` messages on."""
    if kind not in UPLINK_KINDS:
        raise ConfigError(f"unknown uplink kind {kind!r}")
    return f"{ROOT}/{check_name(site, 'site')}/{check_name(device_id, 'device id')}/{kind}"


def command(device_id: str) -> str:
    """Topic the hub sends commands to ``device_id`` on."""
    return f"{ROOT}/cmd/{check_name(device_id, 'device id')}"


SIGNALS_ROOT: Final = "roadside/signals/v1"


def signal_calls(signal_id: str) -> str:
    """The hub's own topic of one signal's detector calls (docs/signals.md).

    Outside ``roadside/v1/``: no device's write rule (``roadside/v1/<site>/<device>/#``)
    can reach it, and the hubs' subscription to device topics never hears their own calls.
    """
    return f"{SIGNALS_ROOT}/{check_name(signal_id, 'signal id')}/calls"


def hub_subscription(group: str | None = "hub") -> str:
    """What a hub subscribes to; with a group, an MQTT 5 shared subscription."""
    pattern = f"{ROOT}/+/+/+"
    return f"$share/{check_name(group, 'group')}/{pattern}" if group else pattern


@dataclass(frozen=True, slots=True)
class UplinkTopic:
    site: str
    device_id: str
    kind: UplinkKind


# A fleet sends on a few topics per device: the hub parses each topic once, not once per message
# (bounded: topics past it are parsed again, never kept).
@functools.lru_cache(maxsize=16384)
def parse_uplink(topic: str) -> UplinkTopic | None:
    """Split an uplink topic into its parts; ``None`` if it is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != ROOT or parts[2] == "cmd":
        return None
    site, device_id, kind = parts[2], parts[3], parts[4]
    if kind not in UPLINK_KINDS or not (_SAFE.fullmatch(site) and _SAFE.fullmatch(device_id)):
        return None
    return UplinkTopic(site, device_id, kind)  # type: ignore[arg-type]
