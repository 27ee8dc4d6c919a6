"""``/v1/devices``: the fleet as the registry knows it, with liveness and latest health."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query

from cloud.api import problems
from cloud.api.deps import RegistryDep, SettingsDep, StoreDep, TelemetryReader
from cloud.api.models import Device, DeviceDetail, DeviceList, DeviceName

router = APIRouter(
    prefix="/v1/devices",
    tags=["devices"],
    responses={**problems.AUTH_RESPONSES, **problems.VALIDATION_RESPONSES},
)

_DEVICE_EXAMPLE: Final[dict[str, Any]] = {
    "device_id": "cam-0042",
    "site": "main-st-5th-ave",
    "status": "active",
    "enrolled_at": "2025-03-01T09:12:00Z",
    "last_seen_at": "2025-05-01T10:14:58Z",
    "online": True,
}
_HEALTH_EXAMPLE: Final[dict[str, Any]] = {
    "ts": "2025-05-01T10:14:30Z",
    "uptime_s": 86400.0,
    "model_version": "det-2025.04.2",
    "provider": "TensorrtExecutionProvider",
    "streams": {"north": {"fps": 14.8, "dropped_frames": 3}},
    "inference_p50_ms": 9.1,
    "inference_p95_ms": 14.7,
    "outbox_backlog": 0,
    "cpu_percent": 41.0,
    "rss_mb": 612.0,
}


@router.get(
    "",
    summary="List devices",
    description="Every enrolled device, optionally at one site, ordered by id. `online` means the hub "
    "heard from the device within its online threshold.",
    response_model=DeviceList,
    responses={200: {"content": {"application/json": {"example": {"devices": [_DEVICE_EXAMPLE]}}}}},
)
def list_devices(
    _client: TelemetryReader,
    registry: RegistryDep,
    settings: SettingsDep,
    site: Annotated[DeviceName | None, Query(description="Only devices at this site.")] = None,
) -> DeviceList:
    now = datetime.now(UTC)
    records = registry.list_devices(site)
    return DeviceList(
        devices=[Device.from_record(r, now=now, online_after_s=settings.online_after_s) for r in records]
    )


@router.get(
    "/{device_id}",
    summary="Get one device",
    description="The device's registry record, liveness, and the latest health report it sent.",
    response_model=DeviceDetail,
    responses={
        200: {"content": {"application/json": {"example": {**_DEVICE_EXAMPLE, "health": _HEALTH_EXAMPLE}}}},
        404: {"model": problems.Problem, "description": "No device with this id is enrolled."},
        **problems.STORE_RESPONSES,
    },
)
def get_device(
    _client: TelemetryReader,
    registry: RegistryDep,
    store: StoreDep,
    settings: SettingsDep,
    device_id: Annotated[DeviceName, Path(description="The device id.")],
) -> DeviceDetail:
    record = registry.get_device(device_id)
    if record is None:
        raise problems.not_found("device", device_id)
    device = Device.from_record(record, now=datetime.now(UTC), online_after_s=settings.online_after_s)
    return DeviceDetail(**device.model_dump(), health=store.latest_health(device_id))
