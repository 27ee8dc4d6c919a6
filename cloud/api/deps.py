"""Dependencies routes declare with ``Annotated``: the store, the registry, settings, the caller.

The hub process opens the store and the registry and closes them; the app
only borrows them, from ``app.state.resources`` (see :func:`cloud.api.app.create_app`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from prometheus_client import CollectorRegistry

from cloud.api import problems
from cloud.registry import ApiClient, Registry
from cloud.storage.base import TimeSeriesStore

logger = logging.getLogger(__name__)

READ_TELEMETRY: Final = "read:telemetry"


@dataclass(frozen=True, slots=True)
class ApiSettings:
    version: str
    online_after_s: float


@dataclass(frozen=True, slots=True)
class ApiResources:
    """What the routes reach through dependencies; owned by the hub process, not the app."""

    store: TimeSeriesStore
    registry: Registry
    metrics_registry: CollectorRegistry
    settings: ApiSettings


def get_resources(request: Request) -> ApiResources:
    resources = request.app.state.resources
    assert isinstance(resources, ApiResources)
    return resources


def get_store(resources: Annotated[ApiResources, Depends(get_resources)]) -> TimeSeriesStore:
    return resources.store


def get_registry(resources: Annotated[ApiResources, Depends(get_resources)]) -> Registry:
    return resources.registry


def get_settings(resources: Annotated[ApiResources, Depends(get_resources)]) -> ApiSettings:
    return resources.settings


def get_metrics_registry(resources: Annotated[ApiResources, Depends(get_resources)]) -> CollectorRegistry:
    return resources.metrics_registry


StoreDep = Annotated[TimeSeriesStore, Depends(get_store)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
MetricsRegistryDep = Annotated[CollectorRegistry, Depends(get_metrics_registry)]

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
    registry: RegistryDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> ApiClient:
    """The API client behind the bearer token, if it holds every scope the route asks for."""
    if credentials is None:
        logger.info("no bearer token on %s %s", request.method, request.url.path)
        raise problems.unauthorized("Send an API key as 'Authorization: Bearer <key>'.", invalid_token=False)
    client = registry.authenticate(credentials.credentials)
    if client is None:
        logger.info("unknown or revoked API key on %s %s", request.method, request.url.path)
        raise problems.unauthorized("The API key is unknown or revoked.", invalid_token=True)
    for scope in security_scopes.scopes:
        if not client.allows(scope):
            logger.info("API client %s lacks scope %s for %s", client.name, scope, request.url.path)
            raise problems.insufficient_scope(scope)
    return client


TelemetryReader = Annotated[ApiClient, Security(authorize, scopes=[READ_TELEMETRY])]
