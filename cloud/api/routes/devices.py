"""``/v1/devices``: the fleet as the registry knows it, with liveness and latest health; enrollment,
key rotation and revocation for installers (``write:devices``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import ConfigDict, Field

from roadside.cloud.api import problems
from roadside.cloud.api.deps import (
    ApiSettings,
    DevicesDep,
    DeviceWriter,
    FleetHooks,
    HooksDep,
    SettingsDep,
    StoreDep,
    TelemetryReader,
    actor,
)
from roadside.cloud.api.schemas import (
    MAX_DEVICES,
    Device,
    DeviceDetail,
    DeviceKeyAdded,
    DeviceKeysRequest,
    DeviceList,
    DeviceName,
    EnrollRequest,
    HealthHistory,
    HealthHistoryParams,
)
from roadside.cloud.registry import DeviceRecord, Devices
from roadside.cloud.storage.base import health_history
from roadside.shared.bundle import EnrollmentBundle
from roadside.shared.errors import BadSignatureError, ConfigError
from roadside.shared.keys import PublicKeys, key_registration_message, unb64

logger = logging.getLogger(__name__)

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
    "connection": "online",
    "online": True,
}
_HEALTH_EXAMPLE: Final[dict[str, Any]] = {
    "ts": "2025-05-01T10:14:30Z",
    "uptime_s": 86400.0,
    "model_version": "det-2025.04.2",
    "provider": "TensorrtExecutionProvider",
    "streams": {
        "north": {"fps": 14.8, "dropped_frames": 3, "state": "up", "last_frame_age_s": 0.07, "reconnects": 1}
    },
    "inference_p50_ms": 9.1,
    "inference_p95_ms": 14.7,
    "outbox_backlog": 0,
    "cpu_percent": 41.0,
    "rss_mb": 612.0,
    "uplink": {
        "state": "publishing",
        "since": "2025-05-01T08:02:11Z",
        "refusals": 0,
        "refused_total": 0,
        "reason": None,
    },
}
_BUNDLE_EXAMPLE: Final[dict[str, Any]] = {
    "format": 1,
    "device_id": "cam-0042",
    "site": "main-st-5th-ave",
    "broker": {"host": "mqtt.city.example", "port": 8883, "tls_server_name": None},
    "ca_cert_pem": "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n",
    "client_cert_pem": "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n",
    "client_key_pem": "-----BEGIN PRIVATE KEY-----\nMIGH...\n-----END PRIVATE KEY-----\n",
    "device_keys": {"x25519": "<private key, base64>", "ed25519": "<private key, base64>"},
    "hub_keys": {"x25519": "<public key, base64>", "ed25519": "<public key, base64>"},
}
_NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {
    404: {"model": problems.Problem, "description": "No device with this id is enrolled."}
}
_NOT_CONFIGURED: Final[dict[int | str, dict[str, Any]]] = {
    501: {"model": problems.Problem, "description": "This hub process does not offer it (not wired)."}
}


class SignedDeviceKeysRequest(DeviceKeysRequest):
    """New envelope public keys with proof that the registrant holds the new Ed25519 key."""

    # A real key pair's public halves and its proof for the device ``pole-0042``.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "x25519": "4gUTBkzpitGW2TM6XE7MbR5LclsGmARjlU3RiifulEc=",
                    "ed25519": "abL8GiHa4ikhn+RcxERcYV+tpHLUjhY9CcehhicNlh0=",
                    "proof": "k8tUAtIseG2CULqRvaHkyEljNWzReClNt4wEKC5SBx0e9DA9hGnkHbcBN1J9SUViKy3SrSCN0exT3ZNGZQEHBA==",
                }
            ]
        },
    )

    proof: str = Field(
        min_length=88,
        max_length=88,
        pattern=r"^[A-Za-z0-9+/]{86}==$",
        description="Ed25519 signature, standard base64, by the new Ed25519 key over "
        "`roadside.shared.keys.key_registration_message(device_id, keys)`: the bytes "
        "`roadside/v1 key registration\\0` + device id + `\\0` + x25519 + ed25519 (raw keys).",
    )


def _bad_proof() -> problems.ProblemError:
    return problems.ProblemError(
        422,
        "bad-key-proof",
        "Key proof does not verify",
        "The proof is not a signature by the new Ed25519 key over the key registration message "
        "for this device.",
    )


def device_view(record: DeviceRecord, hooks: FleetHooks, settings: ApiSettings, now: datetime) -> Device:
    """The device as the API shows it, its connection state from the hub when wired."""
    connection = hooks.device_status(record.device_id) if hooks.device_status is not None else None
    return Device.from_record(record, now=now, online_after_s=settings.online_after_s, connection=connection)


def _enrolled(devices: Devices, device_id: str) -> DeviceRecord:
    record = devices.get(device_id)
    if record is None:
        raise problems.not_found("device", device_id)
    return record


@router.get(
    "",
    summary="List devices",
    description="Enrolled devices, optionally at one site, ordered by id, at most `limit` (page on with "
    "`after`). `online` comes from the device's retained status and last will when the hub has it, "
    "else from whether the hub heard from the device within its online threshold.",
    response_model=DeviceList,
    responses={200: {"content": {"application/json": {"example": {"devices": [_DEVICE_EXAMPLE]}}}}},
)
def list_devices(
    _client: TelemetryReader,
    devices: DevicesDep,
    settings: SettingsDep,
    hooks: HooksDep,
    site: Annotated[DeviceName | None, Query(description="Only devices at this site.")] = None,
    after: Annotated[DeviceName | None, Query(description="Only devices with an id after this one.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_DEVICES, description="At most this many devices.")] = 1000,
) -> DeviceList:
    now = datetime.now(UTC)
    records = [r for r in devices.list(site) if after is None or r.device_id > after]
    return DeviceList(
        devices=[device_view(r, hooks, settings, now) for r in records[:limit]],
        truncated=len(records) > limit,
    )


@router.get(
    "/{device_id}",
    summary="Get one device",
    description="The device's registry record, liveness, and the latest health report it sent.",
    response_model=DeviceDetail,
    responses={
        200: {"content": {"application/json": {"example": {**_DEVICE_EXAMPLE, "health": _HEALTH_EXAMPLE}}}},
        **_NOT_FOUND,
        **problems.STORE_RESPONSES,
    },
)
def get_device(
    _client: TelemetryReader,
    devices: DevicesDep,
    store: StoreDep,
    settings: SettingsDep,
    hooks: HooksDep,
    device_id: Annotated[DeviceName, Path(description="The device id.")],
) -> DeviceDetail:
    device = device_view(_enrolled(devices, device_id), hooks, settings, datetime.now(UTC))
    return DeviceDetail(**device.model_dump(), health=store.latest_health(device_id))


@router.get(
    "/{device_id}/health",
    summary="A device's health history",
    description="The health reports the device sent in `[from, to)` (the last 24 hours by default, at "
    "most 31 days), oldest first: CPU, memory, temperature, per-stream FPS and state, inference latency, "
    "outbox depth. Over a longer window than an hour they are thinned to the latest report per `step` "
    "(about 1,000 steps by default). Reports are kept as long as the store's raw tier (retention, "
    "docs/operations.md); the latest is kept beyond it.",
    response_model=HealthHistory,
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "device": "cam-0042",
                        "from": "2025-05-01T09:15:00Z",
                        "to": "2025-05-01T10:15:00Z",
                        "step_s": 0,
                        "reports": [_HEALTH_EXAMPLE],
                    }
                }
            }
        },
        **_NOT_FOUND,
        **problems.STORE_RESPONSES,
    },
)
def get_device_health(
    _client: TelemetryReader,
    devices: DevicesDep,
    store: StoreDep,
    device_id: Annotated[DeviceName, Path(description="The device id.")],
    params: Annotated[HealthHistoryParams, Query()],
) -> HealthHistory:
    _enrolled(devices, device_id)
    start, end = params.window
    reports = health_history(store, params.to_query(device_id))
    return HealthHistory(device=device_id, start=start, end=end, step_s=params.step_s, reports=reports)


@router.post(
    "",
    status_code=201,
    summary="Enroll a device",
    description="Register a device, issue its client certificate and envelope keys, and add it to the "
    "broker ACL. The answer is the enrollment bundle for `roadside agent install --bundle FILE`: it "
    "holds the device's private keys, is shown **once** and is never cached (`Cache-Control: no-store`). "
    "Carry it to the device over a trusted channel.",
    response_model=EnrollmentBundle,
    responses={
        201: {
            "description": "The enrollment bundle.",
            "content": {"application/json": {"example": _BUNDLE_EXAMPLE}},
            "headers": {
                "Location": {"description": "The new device.", "schema": {"type": "string"}},
                "Cache-Control": {"description": "`no-store`", "schema": {"type": "string"}},
            },
        },
        **problems.BODY_RESPONSES,
        409: {"model": problems.Problem, "description": "A device with this id is already enrolled."},
        **_NOT_CONFIGURED,
    },
)
def enroll_device(
    client: DeviceWriter,
    devices: DevicesDep,
    hooks: HooksDep,
    request: Annotated[EnrollRequest, Body()],
    response: Response,
) -> EnrollmentBundle:
    if hooks.enroll is None:
        raise problems.not_configured("Enrollment through the API is not enabled on this hub.")
    conflict = problems.conflict(
        f"Device {request.device_id!r} is already enrolled; revoke it or pick another id."
    )
    if devices.get(request.device_id) is not None:
        raise conflict
    try:
        bundle = EnrollmentBundle.model_validate(
            hooks.enroll(request.device_id, request.site, actor=actor(client))
        )
    except ConfigError as exc:
        if devices.get(request.device_id) is not None:  # enrolled meanwhile, elsewhere
            raise conflict from exc
        raise
    logger.info(
        "device %s enrolled at site %s by API client %s", request.device_id, request.site, client.name
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Location"] = f"{router.prefix}/{request.device_id}"
    return bundle


@router.post(
    "/{device_id}/revoke",
    summary="Revoke a device",
    description="Refuse the device from now on: its keys are deactivated, the hub drops its messages at "
    "once and the broker ACL is regenerated without it. Revoking a revoked device changes nothing. "
    "There is no un-revoke: enroll the box again under a new id.",
    response_model=Device,
    responses={
        200: {"content": {"application/json": {"example": {**_DEVICE_EXAMPLE, "status": "revoked"}}}},
        **_NOT_FOUND,
        **_NOT_CONFIGURED,
    },
)
def revoke_device(
    client: DeviceWriter,
    devices: DevicesDep,
    settings: SettingsDep,
    hooks: HooksDep,
    device_id: Annotated[DeviceName, Path(description="The device id.")],
) -> Device:
    if hooks.revoke is None:
        raise problems.not_configured("Revocation through the API is not enabled on this hub.")
    record = _enrolled(devices, device_id)
    if record.status == "active":
        hooks.revoke(device_id, actor=actor(client))
        logger.info("device %s revoked by API client %s", device_id, client.name)
    return device_view(_enrolled(devices, device_id), hooks, settings, datetime.now(UTC))


@router.post(
    "/{device_id}/keys",
    status_code=201,
    summary="Add envelope keys (rotation)",
    description="Register new envelope public keys that the device made, beside its current ones. The "
    "hub accepts messages sealed with either from now on, so the device switches to the new key "
    "without downtime. `proof` shows that whoever registers the keys holds the new Ed25519 private "
    "key and means them for this device; keys without a valid proof are a 422.",
    response_model=DeviceKeyAdded,
    responses={
        201: {
            "content": {
                "application/json": {
                    "example": {"device_id": "cam-0042", "kid": "5f0c2a9e1b7d4c3a", "active_keys": 2}
                }
            }
        },
        **_NOT_FOUND,
        **problems.BODY_RESPONSES,
        409: {"model": problems.Problem, "description": "The device is revoked, or already has this key."},
        422: {"model": problems.Problem, "description": "Malformed keys, or a proof that does not verify."},
    },
)
def add_device_keys(
    client: DeviceWriter,
    devices: DevicesDep,
    device_id: Annotated[DeviceName, Path(description="The device id.")],
    request: Annotated[SignedDeviceKeysRequest, Body()],
) -> DeviceKeyAdded:
    if _enrolled(devices, device_id).status != "active":
        raise problems.conflict(f"Device {device_id!r} is revoked; enroll it again under a new id.")
    keys = PublicKeys(unb64(request.x25519), unb64(request.ed25519))
    try:
        keys.verify(unb64(request.proof, "proof"), key_registration_message(device_id, keys))
    except (BadSignatureError, ConfigError) as exc:
        raise _bad_proof() from exc
    current = devices.active_keys(device_id)
    if any(k.kid == keys.kid for k in current):
        raise problems.conflict(f"Device {device_id!r} already has key {keys.kid}.")
    devices.add_key(device_id, keys, actor=actor(client))
    logger.info("device %s: key %s added by API client %s", device_id, keys.kid, client.name)
    return DeviceKeyAdded(device_id=device_id, kid=keys.kid, active_keys=len(current) + 1)
