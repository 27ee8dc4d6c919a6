"""Dependencies routes declare with ``Annotated``: the store, the registry, settings, the caller.

The hub process opens the store, the registry, the live feed and the webhook
store and closes them; the app only borrows them, from ``app.state.resources``
(see :func:`roadside.cloud.api.app.create_app`), with the hooks the hub wires in for
what only it can do (enroll and revoke devices, tell a device's connection state).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Protocol

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from prometheus_client import CollectorRegistry

from roadside.cloud.air.queries import AirQueries
from roadside.cloud.api import problems
from roadside.cloud.api.ratelimit import TokenBuckets, retry_after_header
from roadside.cloud.api.rejections import RejectionWindow
from roadside.cloud.api.webhooks import WebhookStore
from roadside.cloud.fleet.alerts import AlertPolicy
from roadside.cloud.fleet.audit import AuditLog
from roadside.cloud.fleet.live import LiveFeed
from roadside.cloud.registry import ApiClient, Devices, Registry
from roadside.cloud.signals.calls import CallDispatcher
from roadside.cloud.storage.base import TimeSeriesStore

logger = logging.getLogger(__name__)

READ_TELEMETRY: Final = "read:telemetry"
WRITE_DEVICES: Final = "write:devices"
WRITE_ROLLOUTS: Final = "write:rollouts"
ADMIN: Final = "admin"


class EnrollDevice(Protocol):
    """Enroll a device (registry, certificate, broker ACL) and return its bundle as JSON data."""

    def __call__(self, device_id: str, site: str, *, actor: str) -> Mapping[str, Any]: ...


class RevokeDevice(Protocol):
    """Revoke a device: registry, broker ACL regenerated, the hub refusing its messages at once."""

    def __call__(self, device_id: str, *, actor: str) -> None: ...


DeviceStatus = Callable[[str], str | None]
"""``"online"`` / ``"offline"`` from the device's retained status and last will, ``None`` if unknown."""


@dataclass(frozen=True, slots=True)
class ApiSettings:
    version: str
    online_after_s: float
    sse_heartbeat_s: float = 15.0
    sse_max_duration_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class FleetHooks:
    """What only the hub process can do; ``None`` where it was not wired (the route answers 501)."""

    enroll: EnrollDevice | None = None
    revoke: RevokeDevice | None = None
    device_status: DeviceStatus | None = None


@dataclass(frozen=True, slots=True)
class ApiResources:
    """What the routes reach through dependencies; owned by the hub process, not the app."""

    store: TimeSeriesStore
    registry: Registry
    metrics_registry: CollectorRegistry
    settings: ApiSettings
    live: LiveFeed
    webhooks: WebhookStore | None = None
    hooks: FleetHooks = field(default_factory=FleetHooks)
    rate_limiter: TokenBuckets | None = None
    signal_calls: CallDispatcher | None = None  # the detector-call stream (roadside.cloud.signals.calls)
    air: AirQueries | None = None  # air quality (roadside.cloud.air), when the hub's settings have it
    alert_policy: AlertPolicy = field(default_factory=AlertPolicy)  # when state becomes an alert
    rejections: RejectionWindow | None = None  # ingest rejections of the last minutes, for the alerts


def get_resources(request: Request) -> ApiResources:
    resources = request.app.state.resources
    assert isinstance(resources, ApiResources)
    return resources


def get_store(resources: Annotated[ApiResources, Depends(get_resources)]) -> TimeSeriesStore:
    return resources.store


def get_registry(resources: Annotated[ApiResources, Depends(get_resources)]) -> Registry:
    return resources.registry


def get_devices(resources: Annotated[ApiResources, Depends(get_resources)]) -> Devices:
    return resources.registry.devices


def get_audit(resources: Annotated[ApiResources, Depends(get_resources)]) -> AuditLog:
    return resources.registry.audit


def get_settings(resources: Annotated[ApiResources, Depends(get_resources)]) -> ApiSettings:
    return resources.settings


def get_metrics_registry(resources: Annotated[ApiResources, Depends(get_resources)]) -> CollectorRegistry:
    return resources.metrics_registry


def get_live(resources: Annotated[ApiResources, Depends(get_resources)]) -> LiveFeed:
    return resources.live


def get_hooks(resources: Annotated[ApiResources, Depends(get_resources)]) -> FleetHooks:
    return resources.hooks


def get_webhooks(resources: Annotated[ApiResources, Depends(get_resources)]) -> WebhookStore:
    if resources.webhooks is None:
        raise problems.not_configured("Webhooks are not configured on this hub.")
    return resources.webhooks


def get_air(resources: Annotated[ApiResources, Depends(get_resources)]) -> AirQueries:
    if resources.air is None:
        raise problems.not_configured("Air quality is not configured on this hub (the `air` settings).")
    return resources.air


StoreDep = Annotated[TimeSeriesStore, Depends(get_store)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
DevicesDep = Annotated[Devices, Depends(get_devices)]
AuditDep = Annotated[AuditLog, Depends(get_audit)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
MetricsRegistryDep = Annotated[CollectorRegistry, Depends(get_metrics_registry)]
LiveDep = Annotated[LiveFeed, Depends(get_live)]
HooksDep = Annotated[FleetHooks, Depends(get_hooks)]
WebhooksDep = Annotated[WebhookStore, Depends(get_webhooks)]
AirDep = Annotated[AirQueries, Depends(get_air)]

bearer_scheme = HTTPBearer(
    scheme_name="apiKey",
    bearerFormat="rs_…",
    description=(
        "An API key issued by the hub operator (`roadside` CLI), sent as `Authorization: Bearer rs_…`. "
        "Each key carries scopes: `read:telemetry`, `write:devices`, `write:rollouts`, or `admin` (all)."
    ),
    auto_error=False,
)


def authorize(
    security_scopes: SecurityScopes,
    request: Request,
    resources: Annotated[ApiResources, Depends(get_resources)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> ApiClient:
    """The API client behind the bearer token, if it holds every scope the route asks for
    and has not run out of requests (a token bucket per client)."""
    registry = resources.registry
    if credentials is None:
        logger.info("no bearer token on %s %s", request.method, request.url.path)
        raise problems.unauthorized("Send an API key as 'Authorization: Bearer <key>'.", invalid_token=False)
    client = registry.api_clients.authenticate(credentials.credentials)
    if client is None:
        logger.info("unknown or revoked API key on %s %s", request.method, request.url.path)
        raise problems.unauthorized("The API key is unknown or revoked.", invalid_token=True)
    for scope in security_scopes.scopes:
        if not client.allows(scope):
            logger.info("API client %s lacks scope %s for %s", client.name, scope, request.url.path)
            raise problems.insufficient_scope(scope)
    if resources.rate_limiter is not None:
        wait_s = resources.rate_limiter.take(client.name)
        if wait_s > 0:
            logger.info("API client %s is over its rate limit on %s", client.name, request.url.path)
            raise problems.rate_limited(retry_after_header(wait_s))
    return client


def actor(client: ApiClient) -> str:
    """How the audit log names a change made through the API."""
    return f"api:{client.name}"


TelemetryReader = Annotated[ApiClient, Security(authorize, scopes=[READ_TELEMETRY])]
DeviceWriter = Annotated[ApiClient, Security(authorize, scopes=[WRITE_DEVICES])]
RolloutOperator = Annotated[ApiClient, Security(authorize, scopes=[WRITE_ROLLOUTS])]
Administrator = Annotated[ApiClient, Security(authorize, scopes=[ADMIN])]
