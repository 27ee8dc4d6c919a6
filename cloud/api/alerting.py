"""The hub's open alerts: the state :func:`roadside.cloud.fleet.alerts.open_alerts` judges, gathered
from the registry, the store, the ingest counters and the air-quality store, with acknowledgements.

Shared by ``/v1/alerts`` and the console's overview, so both show the same list.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from roadside.cloud.air.indexing import CATEGORY_ORDER
from roadside.cloud.air.queries import AirQueries
from roadside.cloud.api.deps import ApiResources
from roadside.cloud.api.schemas import Device
from roadside.cloud.fleet.alerts import (
    AirState,
    Alert,
    AlertPolicy,
    DeviceState,
    HubState,
    exceeding_since,
    mark_acknowledged,
    open_alerts,
)
from roadside.cloud.registry import DeviceRecord
from roadside.cloud.storage.base import latest_health_many

AIR_LOOKBACK: Final = timedelta(hours=24)


def _device_view(resources: ApiResources, record: DeviceRecord, now: datetime) -> Device:
    """As ``routes.devices.device_view`` shows it (not imported: the routes import this module)."""
    status = resources.hooks.device_status
    connection = status(record.device_id) if status is not None else None
    return Device.from_record(
        record, now=now, online_after_s=resources.settings.online_after_s, connection=connection
    )


def _device_state(device: Device) -> DeviceState:
    return DeviceState(device.device_id, device.site, device.status == "active", device.online,
                       device.last_seen_at, device.enrolled_at)  # fmt: skip


def air_states(air: AirQueries, now: datetime, min_level: int) -> list[AirState]:
    """Each location's latest index and since when it has been at ``min_level`` or worse."""
    scale = CATEGORY_ORDER.get(air.standard)  # type: ignore[call-overload]
    states = []
    for location in air.locations():
        history = air.index_history(location, now - AIR_LOOKBACK, now + timedelta(hours=1))
        levels = [
            (datetime.fromtimestamp(i.hour, UTC), _level(scale, i.report.get("category"))) for i in history
        ]
        if not history:
            continue
        category = str(history[-1].report.get("category", ""))
        states.append(
            AirState(location.id, location.name, category, levels[-1][1], exceeding_since(levels, min_level))
        )
    return states


def _level(scale: Sequence[str] | None, category: object) -> int:
    return scale.index(category) if scale and category in scale else -1


def hub_alerts(
    resources: ApiResources,
    *,
    devices: Sequence[Device] | None = None,
    policy: AlertPolicy | None = None,
    now: datetime | None = None,
) -> list[Alert]:
    """Every open alert with its acknowledgement. ``devices``: the fleet as the caller already built it."""
    policy = policy or resources.alert_policy
    now = now or datetime.now(UTC)
    if devices is None:
        devices = [_device_view(resources, r, now) for r in resources.registry.devices.list()]
    watched = [d.device_id for d in devices if d.status == "active" and d.online]
    state = HubState(
        now=now,
        devices=[_device_state(d) for d in devices],
        health=latest_health_many(resources.store, watched),
        rollouts=resources.registry.rollouts.list(),
        rejections=resources.rejections.recent() if resources.rejections is not None else None,
        air=air_states(resources.air, now, policy.air_min_level) if resources.air is not None else (),
    )
    alerts = open_alerts(state, policy)
    acks = resources.registry.alert_acks.of([a.id for a in alerts])
    return mark_acknowledged(alerts, {k: (a.acknowledged_by, a.acknowledged_at) for k, a in acks.items()})
