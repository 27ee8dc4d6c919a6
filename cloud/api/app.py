"""The hub's HTTP API for city systems: :func:`create_app` wires routers, auth, problems and metrics.

The app borrows the store, the registry, the metrics registry, the live feed
and the webhook store from the hub process, which opens them before serving
and closes them after; the app never closes them. What only the hub can do
(enroll, revoke, tell a device's connection state) comes in as hooks. Serve
it with uvicorn::

    app = create_app(
        store=store, registry=registry, metrics_registry=metrics,
        live=feed, webhooks=webhook_store,
        enroll=hub.enroll, revoke=hub.revoke,  # each takes ``actor=`` for the audit log
        device_status=hub.ingest.status.get,
    )
    uvicorn.run(app, host="0.0.0.0", port=8080)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from roadside.cloud.air.queries import AirQueries
from roadside.cloud.api import problems
from roadside.cloud.api.deps import (
    ApiResources,
    ApiSettings,
    DeviceStatus,
    EnrollDevice,
    FleetHooks,
    RevokeDevice,
)
from roadside.cloud.api.ratelimit import RateLimit, TokenBuckets
from roadside.cloud.api.rejections import RejectionWindow
from roadside.cloud.api.routes import ROUTERS
from roadside.cloud.api.webhooks import WebhookStore
from roadside.cloud.fleet.alerts import AlertPolicy
from roadside.cloud.fleet.live import LiveFeed
from roadside.cloud.registry import Registry
from roadside.cloud.signals.calls import CallDispatcher, silent_dispatcher
from roadside.cloud.storage.base import TimeSeriesStore
from roadside.shared.version import roadside_version

logger = logging.getLogger(__name__)

# Read routes take no body; the few write routes take small JSON documents.
DEFAULT_MAX_BODY_BYTES: Final = 64 * 1024
# A dashboard polling a few series a second is well inside it; a runaway loop is not.
DEFAULT_RATE_LIMIT: Final = RateLimit(per_s=20.0, burst=100)
UNMATCHED_ROUTE: Final = "unmatched"

_DESCRIPTION = """\
Read what the roadside fleet measures: devices and their health, line-crossing
counts and speeds per time bucket, detection events, sensor series; follow
events live (Server-Sent Events or signed webhooks); enroll, rotate and revoke
devices.

**Authentication.** Every `/v1` route needs an API key, sent as
`Authorization: Bearer rs_…`. Keys carry scopes (`read:telemetry`,
`write:devices`, `write:rollouts`, `admin`); a missing, unknown or revoked key
gets `401`, a key without the scope a route needs gets `403` naming it.

**Limits.** Each key has a request rate (a token bucket: bursts are fine); past
it, `429` with `Retry-After`. Request bodies are capped (`413`), and every list
has a `limit`.

**Export.** Counts, speeds, events and sensors come as CSV with `format=csv`
or `Accept: text/csv`.

**Errors** are RFC 9457 problem details (`application/problem+json`) with
`type`, `title`, `status` and `detail`; a `422` lists each invalid parameter in
`invalid_params`.

**Times** are ISO 8601 with a timezone; windows are `[from, to)`, the last
24 hours by default and at most 31 days.
"""

_TAGS: Final = [
    {"name": "devices", "description": "The enrolled fleet, liveness and latest health."},
    {"name": "counts", "description": "Line-crossing counts, summed into time buckets."},
    {"name": "speeds", "description": "Count, mean and 85th percentile speed per time bucket."},
    {"name": "events", "description": "Detection events such as wrong-way or stopped vehicles; live stream."},
    {"name": "sensors", "description": "Sensor readings: series and latest values."},
    {"name": "alerts", "description": "Open alerts derived from the hub's state, and their acknowledgement."},
    {"name": "webhooks", "description": "Signed HTTP callbacks for events as they arrive (admin)."},
    {
        "name": "rollouts",
        "description": "Staged model rollouts: canary, waves, gates, automatic rollback (write:rollouts).",
    },
    {
        "name": "air",
        "description": "Air quality in OpenAQ's shape: locations, sensors per parameter, measurements "
        "(raw, cleaned, calibrated, with flags), hourly and daily means with coverage, the index.",
    },
    {"name": "system", "description": "Health check and Prometheus metrics; no authentication."},
]


def create_app(
    *,
    store: TimeSeriesStore,
    registry: Registry,
    metrics_registry: CollectorRegistry,
    version: str | None = None,
    online_after_s: float = 180.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    live: LiveFeed | None = None,
    webhooks: WebhookStore | None = None,
    enroll: EnrollDevice | None = None,
    revoke: RevokeDevice | None = None,
    device_status: DeviceStatus | None = None,
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
    sse_heartbeat_s: float = 15.0,
    sse_max_duration_s: float = 3600.0,
    signal_calls: CallDispatcher | None = None,
    air: AirQueries | None = None,
    alert_policy: AlertPolicy | None = None,
) -> FastAPI:
    """Build the API over a store and a registry the caller owns.

    ``metrics_registry`` is where the ingest side registers its metrics;
    ``/metrics`` serves all of it, and the app adds its own HTTP request
    metrics there (so build one app per registry). A device is ``online``
    when ``device_status`` says so (its retained status and last will), or,
    when that does not know it, when heard from within ``online_after_s`` seconds.

    ``live`` is the feed the ingest side publishes accepted events to (SSE
    streams read it; a private, silent one when not given). ``webhooks`` is
    where webhooks are registered (their routes answer 501 without it);
    ``enroll`` and ``revoke`` are the hub's enrollment and revocation (501
    without them). ``rate_limit`` is per API client (``None``: unlimited).
    SSE streams send a heartbeat after ``sse_heartbeat_s`` of silence and end
    after ``sse_max_duration_s``. ``version`` defaults to the installed Roadside's.
    """
    version = roadside_version() if version is None else version
    app = FastAPI(
        title="Roadside hub API",
        version=version,
        description=_DESCRIPTION,
        openapi_tags=_TAGS,
        license_info={"name": "Apache-2.0", "identifier": "Apache-2.0"},
    )
    app.state.resources = ApiResources(
        store=store,
        registry=registry,
        metrics_registry=metrics_registry,
        settings=ApiSettings(
            version=version,
            online_after_s=online_after_s,
            sse_heartbeat_s=sse_heartbeat_s,
            sse_max_duration_s=sse_max_duration_s,
        ),
        live=live if live is not None else LiveFeed(),
        webhooks=webhooks,
        hooks=FleetHooks(enroll=enroll, revoke=revoke, device_status=device_status),
        rate_limiter=TokenBuckets(rate_limit) if rate_limit is not None else None,
        # Without the hub's dispatcher (which also publishes on MQTT), SSE clients get a private, silent feed.
        signal_calls=signal_calls
        if signal_calls is not None
        else silent_dispatcher(registry, metrics_registry),
        air=air,
        alert_policy=alert_policy or AlertPolicy(),
        rejections=RejectionWindow(metrics_registry, (alert_policy or AlertPolicy()).rejections_window_s),
    )
    for router in ROUTERS:
        app.include_router(router)
    problems.install(app)
    # Added last = outermost: metrics see every answer, the body limit's 413s included.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=RequestMetrics(metrics_registry))
    app.openapi = _problem_openapi(app)  # type: ignore[method-assign]
    logger.info(
        "API %s ready (online threshold %s s, body cap %s bytes)", version, online_after_s, max_body_bytes
    )
    return app


class RequestMetrics:
    """HTTP request count and latency by route template (never the raw path: bounded labels)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "roadside_api_requests_total",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "roadside_api_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template",
            ["method", "route"],
            registry=registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the server sends if the app raises before answering
        started = time.perf_counter()

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - started)


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_body_bytes`` with a 413 problem.

    A declared ``Content-Length`` over the cap is refused before the app runs;
    a chunked body is counted as the app reads it and refused when it passes
    the cap (the app sees :class:`problems.ContentTooLargeError`).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise problems.ContentTooLargeError(self.max_body_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except problems.ContentTooLargeError:
            if response_started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        logger.info(
            "refused a body over %s bytes on %s %s", self.max_body_bytes, request.method, request.url.path
        )
        response = problems.from_http_exception(request, problems.ContentTooLargeError(self.max_body_bytes))
        # The unread body is left on the connection; close it rather than read it.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    raw = Headers(scope=scope).get("content-length")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _problem_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI documents every response as JSON; error responses are problem+json."""
    generate = app.openapi
    problem_ref = "#/components/schemas/Problem"

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                for response in operation.get("responses", {}).values():
                    content = response.get("content", {})
                    json_body = content.get("application/json")
                    if json_body and json_body.get("schema", {}).get("$ref") == problem_ref:
                        content[problems.PROBLEM_MEDIA_TYPE] = content.pop("application/json")
        app.openapi_schema = schema
        return schema

    return openapi
