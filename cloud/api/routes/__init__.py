"""One router per resource; :data:`ROUTERS` is the order they are mounted in."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.api.routes import counts, devices, events, system

ROUTERS: tuple[APIRouter, ...] = (devices.router, counts.router, events.router, system.router)
