"""One router per resource; :data:`ROUTERS` is the order they are mounted in."""

from __future__ import annotations

from fastapi import APIRouter

from roadside.cloud.api.routes import (
    air,
    alerts,
    counts,
    devices,
    events,
    fleet,
    rollouts,
    sensors,
    signals,
    speeds,
    stream,
    system,
    webhooks,
)

# The stream router goes before events' so `/v1/events/stream` is never read as something else.
ROUTERS: tuple[APIRouter, ...] = (
    devices.router,
    fleet.router,
    alerts.router,
    counts.router,
    speeds.router,
    stream.router,
    events.router,
    sensors.router,
    webhooks.router,
    rollouts.router,
    signals.router,
    air.router,
    system.router,
)
