"""``/v1/fleet``: the fleet at a glance, for an operations dashboard."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import APIRouter

from roadside.cloud.api import problems
from roadside.cloud.api.deps import DevicesDep, HooksDep, SettingsDep, TelemetryReader
from roadside.cloud.api.routes.devices import device_view
from roadside.cloud.api.schemas import Device, FleetCounts, FleetSummary, SiteFleet

router = APIRouter(prefix="/v1/fleet", tags=["devices"], responses={**problems.AUTH_RESPONSES})

_EXAMPLE: Final[dict[str, Any]] = {
    "devices": {"total": 42, "active": 40, "revoked": 2, "online": 38, "offline": 2},
    "sites": [{"site": "main-st-5th-ave", "total": 4, "active": 4, "revoked": 0, "online": 3, "offline": 1}],
    "last_ingest_at": "2025-05-01T10:14:58Z",
    "generated_at": "2025-05-01T10:15:00Z",
}


def tally(devices: list[Device]) -> FleetCounts:
    active = [d for d in devices if d.status == "active"]
    online = sum(d.online for d in active)
    return FleetCounts(
        total=len(devices),
        active=len(active),
        revoked=len(devices) - len(active),
        online=online,
        offline=len(active) - online,
    )


@router.get(
    "",
    summary="Fleet summary",
    description="How many devices are enrolled, revoked, online and offline, in all and per site, and "
    "when the hub last accepted a message. Online and offline count active devices only; `online` is "
    "decided as in `/v1/devices`.",
    response_model=FleetSummary,
    responses={200: {"content": {"application/json": {"example": _EXAMPLE}}}},
)
def get_fleet(
    _client: TelemetryReader, registered: DevicesDep, settings: SettingsDep, hooks: HooksDep
) -> FleetSummary:
    now = datetime.now(UTC)
    records = registered.list()
    devices = [device_view(r, hooks, settings, now) for r in records]
    by_site: dict[str, list[Device]] = defaultdict(list)
    for device in devices:
        by_site[device.site].append(device)
    seen = [r.last_seen_at for r in records if r.last_seen_at is not None]
    return FleetSummary(
        devices=tally(devices),
        sites=[SiteFleet(site=site, **tally(by_site[site]).model_dump()) for site in sorted(by_site)],
        last_ingest_at=max(seen, default=None),
        generated_at=now,
    )
