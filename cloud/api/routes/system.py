"""``/healthz`` and ``/metrics``: for load balancers and Prometheus, without authentication."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from roadside.cloud.api.deps import MetricsRegistryDep, SettingsDep, StoreDep
from roadside.cloud.api.schemas import HubHealth

logger = logging.getLogger(__name__)

router = APIRouter(tags=["system"])


@router.get(
    "/healthz",
    summary="Liveness and store reachability",
    description="`200` with `ok` when the telemetry store answers, `503` with `degraded` when not.",
    response_model=HubHealth,
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {"status": "ok", "version": "0.1.0", "checks": {"store": "ok"}}
                }
            }
        },
        503: {
            "model": HubHealth,
            "description": "The store is unreachable.",
            "content": {
                "application/json": {
                    "example": {"status": "degraded", "version": "0.1.0", "checks": {"store": "unreachable"}}
                }
            },
        },
    },
)
def healthz(store: StoreDep, settings: SettingsDep, response: Response) -> HubHealth:
    try:
        store.ping()
    except Exception as exc:  # any failure to answer means degraded, never a 500
        logger.warning("health check: store unreachable: %s", exc)
        response.status_code = 503
        return HubHealth(status="degraded", version=settings.version, checks={"store": "unreachable"})
    return HubHealth(status="ok", version=settings.version, checks={"store": "ok"})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="The hub's metrics (ingest, API requests) in the Prometheus text format.",
    response_class=Response,
    responses={
        200: {
            "content": {
                CONTENT_TYPE_LATEST: {
                    "schema": {"type": "string"},
                    "example": "# TYPE roadside_ingest_messages_total counter\n"
                    'roadside_ingest_messages_total{result="stored"} 1234.0\n',
                }
            }
        }
    },
)
def metrics(registry: MetricsRegistryDep) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
