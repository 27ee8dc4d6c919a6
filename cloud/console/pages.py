"""The console's routes: sign-in, the pages, and the operator actions behind them.

Every page checks the operator's scopes before drawing anything (and draws
only the controls those scopes allow); every state-changing request checks
its CSRF token and the scope again, whatever the page showed, and is audited
with ``console:<client name>`` as the actor.
"""

from __future__ import annotations

import asyncio
import csv
import hmac
import io
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask

from roadside.cloud.api.alerting import hub_alerts
from roadside.cloud.api.deps import ADMIN, READ_TELEMETRY, WRITE_DEVICES, WRITE_ROLLOUTS
from roadside.cloud.api.routes.stream import EVENT_STREAM, event_messages
from roadside.cloud.api.schemas import CountsParams, EventsParams
from roadside.cloud.api.webhooks import masked_url
from roadside.cloud.console import views
from roadside.cloud.console.links import LinkError, LinkGrant, verify
from roadside.cloud.console.live import signal_messages
from roadside.cloud.console.web import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    PAGE_HEADERS,
    PREFIX,
    SESSION_COOKIE,
    ConsoleDep,
    ConsoleState,
    ForbiddenError,
    Operator,
    OperatorDep,
    ResourcesDep,
    SignInRequiredError,
    check_csrf,
    get_console,
    redirect,
    render,
    require,
    set_session_cookie,
)
from roadside.cloud.fleet.live import EventFilter, FeedFullError
from roadside.cloud.registry import SCOPES
from roadside.cloud.release.controller import change_rollout, create_rollout, rollout_status
from roadside.cloud.release.rollouts import RolloutSpec, parse_duration, parse_waves
from roadside.cloud.signals.calls import FeedFullError as CallFeedFullError
from roadside.cloud.signals.phases import PhaseState, phase_states
from roadside.cloud.storage.signals import SupportsSignals
from roadside.shared.errors import ConfigError, RoadsideError

logger = logging.getLogger(__name__)

router = APIRouter(prefix=PREFIX, include_in_schema=False)

NOTICES: Final = {
    "signed-out": "You are signed out.",
    "expired": "Your session ended. Sign in again.",
    "revoked": "Device revoked. Its connection was ended and its messages are refused.",
    "created": "Rollout created. The controller starts it within a second.",
    "pause": "Rollout paused: no new wave starts.",
    "resume": "Rollout resumed.",
    "abort": "Rollout aborted: devices keep the model they run now.",
    "rollback": "Rolling back: every device the rollout reached returns to its previous model.",
    "token-revoked": "API client revoked; its sessions have ended.",
    "webhook-deleted": "Webhook deleted.",
    "alert-ack": "Alert acknowledged. It stays listed until its cause goes.",
    "alert-closed": "That alert has closed meanwhile (its cause went); nothing to acknowledge.",
}
MAX_FORM_FIELD: Final = 512


def _notice(code: str | None) -> str:
    return NOTICES.get(code or "", "")


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: str(v)[:MAX_FORM_FIELD] for k, v in form.items() if isinstance(v, str)}


# Errors that send the browser somewhere -------------------------------------------------------


async def sign_in_required(request: Request, _exc: Exception) -> Response:
    """Pages go to the sign-in page (coming back afterwards); htmx fragments are told to go there."""
    target = f"{PREFIX}/login?notice=expired"
    if request.headers.get("hx-request"):
        return Response(status_code=401, headers={**PAGE_HEADERS, "HX-Redirect": target})
    if request.method == "GET":
        target += f"&next={request.url.path}"
    return redirect(target)


async def forbidden(request: Request, exc: Exception) -> Response:
    detail = exc.detail if isinstance(exc, ForbiddenError) else "Not allowed."
    return render(request, "forbidden.html", {"detail": detail}, status_code=403)


# Sign-in ------------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only a path inside the console (no other host, no scheme-relative URL)."""
    if target and target.startswith(f"{PREFIX}/") and "\\" not in target and ".." not in target:
        return target
    return f"{PREFIX}/overview"


def _login_page(request: Request, context: dict[str, Any], status_code: int = 200) -> Response:
    login_csrf = secrets.token_urlsafe(24)
    response = render(request, "login.html", {"login_csrf": login_csrf, **context}, status_code=status_code)
    response.set_cookie(
        LOGIN_CSRF_COOKIE, login_csrf, max_age=1800, path=PREFIX, httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip
    return response


def _login_csrf_ok(request: Request, form: dict[str, str]) -> bool:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), form.get(CSRF_FIELD, "").encode())


@router.get("", response_class=HTMLResponse)
def root() -> Response:
    return redirect(f"{PREFIX}/overview")


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, notice: str | None = None, next: str | None = None) -> Response:
    return _login_page(request, {"notice": _notice(notice), "next": _safe_next(next)})


def _start_session(request: Request, client_name: str, next_url: str, how: str) -> Response:
    console = get_console(request)
    resources = request.app.state.resources
    session_id, _ = console.sessions.open(client_name)
    resources.registry.record_audit(f"console:{client_name}", "console.signin", client_name, {"with": how})
    logger.info("console: %s signed in with %s", client_name, how)
    response = redirect(_safe_next(next_url))
    set_session_cookie(request, response, session_id, console.sessions.policy)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=PREFIX)
    return response


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, resources: ResourcesDep) -> Response:
    form = await _form(request)
    if not _login_csrf_ok(request, form):
        return _login_page(
            request, {"error": "The sign-in form expired; try again.", "next": form.get("next")}, 403
        )
    client = resources.registry.api_clients.authenticate(form.get("token", "").strip())
    if client is None:
        logger.info("console: sign-in with an unknown or revoked token")
        error = (
            "That API token is unknown or revoked. Ask your hub operator: roadside hub token NAME --scope ..."
        )
        return _login_page(request, {"error": error, "next": form.get("next")}, 401)
    return _start_session(request, client.name, form.get("next", ""), "token")


@router.get("/link/{token}", response_class=HTMLResponse)
def link_page(request: Request, console: ConsoleDep, token: Annotated[str, Path(max_length=512)]) -> Response:
    """A page that asks before spending the link (a link preview or a mail scanner must not spend it)."""
    grant, error = _check_link(console, token)
    return _login_page(
        request, {"link_token": token, "link_client": grant.client_name if grant else "", "error": error}
    )


def _check_link(console: ConsoleState, token: str) -> tuple[LinkGrant | None, str]:
    if console.link_key is None:
        return None, "Sign-in links are off on this hub; sign in with an API token."
    try:
        return verify(console.link_key, token, console.clock()), ""
    except LinkError as exc:
        return None, str(exc)


@router.post("/link", response_class=HTMLResponse)
async def link_sign_in(request: Request, console: ConsoleDep, resources: ResourcesDep) -> Response:
    form = await _form(request)
    token = form.get("link_token", "")
    if not _login_csrf_ok(request, form):
        return _login_page(request, {"error": "The sign-in form expired; open the link again."}, 403)
    grant, error = _check_link(console, token)
    if grant is not None and resources.registry.api_clients.get(grant.client_name) is None:
        error = f"The API client {grant.client_name!r} is revoked or gone."
        grant = None
    if grant is not None:
        try:
            console.spent_links.spend(grant, console.clock())
        except LinkError as exc:
            grant, error = None, str(exc)
    if grant is None:
        logger.info("console: refused a sign-in link: %s", error)
        return _login_page(request, {"error": error}, 401)
    return _start_session(request, grant.client_name, "", "link")


@router.post("/logout", response_class=HTMLResponse)
async def logout(request: Request, operator: OperatorDep, console: ConsoleDep) -> Response:
    check_csrf(request, operator, await _form(request))
    console.sessions.close(operator.session_id)
    request.app.state.resources.registry.record_audit(
        operator.actor, "console.signout", operator.client.name, {}
    )
    response = redirect(f"{PREFIX}/login?notice=signed-out")
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


# Overview -----------------------------------------------------------------------------------


def _overview_context(request: Request, resources: ResourcesDep, operator: Operator) -> dict[str, Any]:
    rate = get_console(request).ingest_rate
    per_s = rate.per_s() if rate else None
    rejected = rate.rejected_by_reason() if rate else {}
    return {"view": views.overview(resources, per_s, rejected), "alerts_shown": views.ALERTS_SHOWN,
            "can_ack": operator.can(WRITE_DEVICES)}  # fmt: skip


@router.get("/overview", response_class=HTMLResponse)
def overview(
    request: Request, operator: OperatorDep, resources: ResourcesDep, notice: str | None = None
) -> Response:
    require(operator, READ_TELEMETRY)
    context = _overview_context(request, resources, operator)
    return render(request, "overview.html", {"page": "overview", "notice": _notice(notice), **context},
                  operator=operator)  # fmt: skip


@router.get("/overview/figures", response_class=HTMLResponse)
def overview_figures(request: Request, operator: OperatorDep, resources: ResourcesDep) -> Response:
    require(operator, READ_TELEMETRY)
    return render(
        request, "_overview_figures.html", _overview_context(request, resources, operator), operator=operator
    )


@router.post("/alerts/ack", response_class=HTMLResponse)
async def acknowledge_alert(request: Request, operator: OperatorDep, resources: ResourcesDep) -> Response:
    """Acknowledge an open alert (``write:devices``, as the API's): audited as ``alert.ack``."""
    form = await _form(request)
    check_csrf(request, operator, form)
    require(operator, WRITE_DEVICES)
    alert_id = form.get("alert_id", "")
    if not any(a.id == alert_id for a in hub_alerts(resources)):
        return redirect(f"{PREFIX}/overview?notice=alert-closed")
    resources.registry.alert_acks.acknowledge(
        alert_id, actor=operator.actor, note=form.get("note", "").strip()
    )
    logger.info("console: alert %s acknowledged by %s", alert_id, operator.client.name)
    return redirect(f"{PREFIX}/overview?notice=alert-ack")


# Fleet --------------------------------------------------------------------------------------


@router.get("/fleet", response_class=HTMLResponse)
def fleet(
    request: Request,
    operator: OperatorDep,
    resources: ResourcesDep,
    site: Annotated[str | None, Query(max_length=64)] = None,
    state: Annotated[str | None, Query(pattern="^(online|offline|revoked)?$")] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    require(operator, READ_TELEMETRY)
    view = views.fleet_page(resources, site, state, page)
    context = {"page": "fleet", "view": view, "site": site or "", "state": state or ""}
    if request.headers.get("hx-request"):
        return render(request, "_fleet_table.html", context, operator=operator)
    return render(request, "fleet.html", context, operator=operator)


@router.get("/fleet/{device_id}", response_class=HTMLResponse)
def device_page(
    request: Request,
    operator: OperatorDep,
    resources: ResourcesDep,
    device_id: Annotated[str, Path(max_length=64)],
    notice: str | None = None,
    window: Annotated[str, Query(max_length=8)] = "24h",
) -> Response:
    require(operator, READ_TELEMETRY)
    device = views.device(resources, device_id)
    if device is None:
        return render(
            request, "not_found.html", {"what": f"device {device_id}"}, operator=operator, status_code=404
        )
    context = {"page": "fleet", "device": device, "notice": _notice(notice),
               "can_revoke": operator.can(WRITE_DEVICES) and device.status == "active",
               **_health_context(resources, device_id, window)}  # fmt: skip
    return render(request, "device.html", context, operator=operator)


def _health_context(resources: ResourcesDep, device_id: str, window: str) -> dict[str, Any]:
    """The device page's latest health and its history over ``window`` (a chart per quantity)."""
    window = window if window in views.HEALTH_WINDOWS else "24h"
    context: dict[str, Any] = {"health": views.latest_health(resources, device_id), "window": window,
                               "health_windows": list(views.HEALTH_WINDOWS), "history": None, "history_error": ""}  # fmt: skip
    try:
        context["history"] = views.health_series(resources, device_id, window)
    except RoadsideError as exc:
        context["history_error"] = (
            f"The store did not answer: {exc}. Try a shorter window or again in a minute."
        )
    return context


@router.post("/fleet/{device_id}/revoke", response_class=HTMLResponse)
async def revoke_device(
    request: Request,
    operator: OperatorDep,
    resources: ResourcesDep,
    device_id: Annotated[str, Path(max_length=64)],
) -> Response:
    form = await _form(request)
    check_csrf(request, operator, form)
    require(operator, WRITE_DEVICES)
    error = _revoke(resources, operator, device_id, form)
    if error:
        device = views.device(resources, device_id)
        if device is None:
            return render(
                request, "not_found.html", {"what": f"device {device_id}"}, operator=operator, status_code=404
            )
        context = {"page": "fleet", "device": device, "error": error, "can_revoke": device.status == "active",
                   **_health_context(resources, device_id, "24h")}  # fmt: skip
        return render(request, "device.html", context, operator=operator, status_code=422)
    return redirect(f"{PREFIX}/fleet/{device_id}?notice=revoked")


def _revoke(resources: ResourcesDep, operator: Operator, device_id: str, form: dict[str, str]) -> str:
    """Revoke with the reason audited first; the problem to show, or ``""`` when done."""
    reason = form.get("reason", "").strip()
    revoke = resources.hooks.revoke
    if revoke is None:
        return "This hub process cannot revoke devices (it serves no broker); use roadside device revoke."
    if not reason:
        return "Say why the device is revoked; the reason goes into the audit log."
    if form.get("confirm") != device_id:
        return f"Type the device id ({device_id}) to confirm."
    try:
        resources.registry.record_audit(operator.actor, "console.revoke", device_id, {"reason": reason})
        revoke(device_id, actor=operator.actor)
    except RoadsideError as exc:
        return str(exc)
    logger.info("console: %s revoked %s (%s)", operator.client.name, device_id, reason)
    return ""


# Traffic ------------------------------------------------------------------------------------


def _counts_params(
    request: Request, window: str, bucket: str, filters: dict[str, str | None]
) -> CountsParams:
    """The API's own counts parameters (so the same checks apply): an explicit ``from``/``to`` when the
    page was given one, else the chosen window up to the next whole minute."""
    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - views.WINDOWS.get(window, views.WINDOWS["1h"])
    explicit = {k: request.query_params[k] for k in ("from", "to") if request.query_params.get(k)}
    raw: dict[str, Any] = {"from": start, "to": end, "bucket": views.BUCKETS.get(bucket, 300), **explicit}
    return CountsParams.model_validate({**raw, **{k: v for k, v in filters.items() if v}})


def _traffic_filters(request: Request) -> dict[str, str | None]:
    return {k: request.query_params.get(k) or None for k in ("site", "line", "cls", "direction", "device")}


@router.get("/traffic", response_class=HTMLResponse)
def traffic(
    request: Request,
    operator: OperatorDep,
    resources: ResourcesDep,
    window: Annotated[str, Query(max_length=8)] = "1h",
    bucket: Annotated[str, Query(max_length=8)] = "5m",
) -> Response:
    require(operator, READ_TELEMETRY)
    filters = _traffic_filters(request)
    context: dict[str, Any] = {"page": "traffic", "window": window, "bucket": bucket, "filters": filters,
                               "windows": list(views.WINDOWS), "buckets": list(views.BUCKETS), "error": ""}  # fmt: skip
    try:
        params = _counts_params(request, window, bucket, filters)
        context["view"] = views.traffic(resources, params.to_query())
        context["csv_query"] = request.url.query
        context["speeds"] = views.traffic_speeds(resources, params.to_query())
        context["sample"] = views.newest_sample(
            resources, get_console(request).samples, params.device, params.site
        )
    except ValidationError as exc:
        context["error"] = "; ".join(str(e["msg"]) for e in exc.errors())
    except RoadsideError as exc:
        context["error"] = f"The store did not answer: {exc}. Try a shorter window or again in a minute."
    return render(request, "traffic.html", context, operator=operator)


@router.get("/samples/{sha256}.jpg")
def sample_image(
    request: Request, operator: OperatorDep, sha256: Annotated[str, Path(pattern="^[0-9a-f]{64}$")]
) -> Response:
    """A sample image a device uploaded: redacted on the device (the hub refuses any other)."""
    require(operator, READ_TELEMETRY)
    samples = get_console(request).samples
    data = samples.image(sha256) if samples is not None else None
    if data is None:
        return Response("no such sample image", status_code=404, media_type="text/plain")
    headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
    return Response(data, media_type="image/jpeg", headers=headers)


@router.get("/traffic.csv")
def traffic_csv(
    request: Request,
    operator: OperatorDep,
    resources: ResourcesDep,
    window: Annotated[str, Query(max_length=8)] = "1h",
    bucket: Annotated[str, Query(max_length=8)] = "5m",
) -> Response:
    """The same rows as ``/v1/counts?format=csv`` for the page's window and filters."""
    require(operator, READ_TELEMETRY)
    try:
        params = _counts_params(request, window, bucket, _traffic_filters(request))
    except ValidationError as exc:
        return Response(str(exc), status_code=422, media_type="text/plain")
    rows = resources.store.count_buckets(params.to_query())  # per device, as /v1/counts
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["bucket_start", "device", "site", "line", "cls", "direction", "count"])
    for row in rows:
        writer.writerow([row.bucket_start.isoformat().replace("+00:00", "Z"), row.device_id, row.site,
                         row.line, row.cls, row.direction, row.count])  # fmt: skip
    headers = {**PAGE_HEADERS, "Content-Disposition": 'attachment; filename="counts.csv"'}
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)


@router.get("/events", response_class=HTMLResponse)
def events(
    request: Request,
    operator: OperatorDep,
    resources: ResourcesDep,
    window: Annotated[str, Query(max_length=8)] = "24h",
) -> Response:
    require(operator, READ_TELEMETRY)
    filters = {k: request.query_params.get(k) or None for k in ("type", "site", "device")}
    end = datetime.now(UTC) + timedelta(minutes=1)
    start = end - views.WINDOWS.get(window, views.WINDOWS["24h"])
    context: dict[str, Any] = {"page": "events", "filters": filters, "window": window,
                               "windows": list(views.WINDOWS), "events": [], "error": ""}  # fmt: skip
    try:
        params = EventsParams.model_validate(
            {"from": start, "to": end, "limit": 1000, **{k: v for k, v in filters.items() if v}}
        )
        context["events"] = views.recent_events(resources, params.to_query())
    except ValidationError as exc:
        context["error"] = "; ".join(str(e["msg"]) for e in exc.errors())
    except RoadsideError as exc:
        context["error"] = f"The store did not answer: {exc}."
    return render(request, "events.html", context, operator=operator)


@router.get("/events/stream")
async def events_stream(
    operator: OperatorDep,
    resources: ResourcesDep,
    type: Annotated[str | None, Query(max_length=32)] = None,
    site: Annotated[str | None, Query(max_length=64)] = None,
    device: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The API's live event stream (same messages), for a signed-in browser."""
    require(operator, READ_TELEMETRY)
    wanted = EventFilter(device_id=device or None, site=site or None, types=frozenset({type} if type else ()))
    try:
        subscription = resources.live.subscribe(wanted)
    except FeedFullError:
        return Response("too many live streams; reload in a minute", status_code=503, media_type="text/plain")
    settings = resources.settings
    return StreamingResponse(
        event_messages(subscription, settings.sse_heartbeat_s, settings.sse_max_duration_s),
        media_type=EVENT_STREAM,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        background=BackgroundTask(subscription.close),
    )


@router.get("/signals", response_class=HTMLResponse)
def signals(request: Request, operator: OperatorDep, resources: ResourcesDep) -> Response:
    """Each signal with its channel map (which camera zone drives which detector channel and phase)."""
    require(operator, READ_TELEMETRY)
    context = {"page": "signals", "signals": resources.registry.signals.list()}
    return render(request, "signals.html", context, operator=operator)


PHASE_LOOKBACK: Final = timedelta(minutes=10)  # a phase not heard of for longer is not shown


def _phases(store: SupportsSignals, signal_id: str) -> list[PhaseState]:
    """Each phase's interval from the controller's events of the last ten minutes."""
    now = datetime.now(UTC)
    return phase_states(
        store.controller_events(signal_id, now - PHASE_LOOKBACK, now + timedelta(seconds=5), 5000)
    )


def _phases_context(resources: ResourcesDep, signal_id: str) -> dict[str, Any]:
    store = resources.store
    if not isinstance(store, SupportsSignals):
        return {"phases": [], "phases_note": "This hub's store keeps no controller events."}
    try:
        return {"phases": _phases(store, signal_id), "phases_note": ""}
    except RoadsideError as exc:
        return {"phases": [], "phases_note": f"The store did not answer: {exc}."}


@router.get("/signals/{signal_id}", response_class=HTMLResponse)
def signal_page(
    request: Request,
    operator: OperatorDep,
    resources: ResourcesDep,
    signal_id: Annotated[str, Path(max_length=64)],
) -> Response:
    """One signal: its channels with their live calls (SSE) and its phases (from the controller's events)."""
    require(operator, READ_TELEMETRY)
    record = resources.registry.signals.get(signal_id)
    if record is None:
        return render(
            request, "not_found.html", {"what": f"signal {signal_id}"}, operator=operator, status_code=404
        )
    context = {"page": "signals", "sig": record, "live": resources.signal_calls is not None,
               **_phases_context(resources, signal_id)}  # fmt: skip
    return render(request, "signal.html", context, operator=operator)


@router.get("/signals/{signal_id}/calls")
async def signal_calls_stream(
    operator: OperatorDep, resources: ResourcesDep, signal_id: Annotated[str, Path(max_length=64)]
) -> Response:
    """The signal's calls (the API's call stream, same messages) and its phases when they change."""
    require(operator, READ_TELEMETRY)
    dispatcher = resources.signal_calls
    if dispatcher is None or await asyncio.to_thread(resources.registry.signals.get, signal_id) is None:
        return Response(
            "no such signal, or no call stream on this hub", status_code=404, media_type="text/plain"
        )
    try:
        subscription = dispatcher.feed.subscribe(signal_id)
    except CallFeedFullError:
        return Response("too many live streams; reload in a minute", status_code=503, media_type="text/plain")
    settings, store = resources.settings, resources.store

    def phases() -> list[PhaseState] | None:
        try:
            return _phases(store, signal_id) if isinstance(store, SupportsSignals) else []
        except RoadsideError as exc:  # the page keeps what it showed; calls go on
            logger.warning("console: phases of %s unreadable: %s", signal_id, exc)
            return None

    return StreamingResponse(
        signal_messages(subscription, phases, settings.sse_heartbeat_s, settings.sse_max_duration_s),
        media_type=EVENT_STREAM,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        background=BackgroundTask(subscription.close),
    )


@router.get("/air", response_class=HTMLResponse)
def air(request: Request, operator: OperatorDep, resources: ResourcesDep) -> Response:
    require(operator, READ_TELEMETRY)
    try:
        rows, error = views.air_quality(resources), ""
    except RoadsideError as exc:
        rows, error = [], f"The air-quality store did not answer: {exc}."
    return render(request, "air.html", {"page": "air", "rows": rows, "error": error}, operator=operator)


# Models and rollouts ------------------------------------------------------------------------


@router.get("/models", response_class=HTMLResponse)
def models(
    request: Request, operator: OperatorDep, resources: ResourcesDep, notice: str | None = None
) -> Response:
    require(operator, READ_TELEMETRY)
    return _models_page(request, operator, resources, {"notice": _notice(notice)})


def _models_page(
    request: Request,
    operator: Operator,
    resources: ResourcesDep,
    extra: dict[str, Any],
    status_code: int = 200,
) -> Response:
    registry = resources.registry
    context = {
        "page": "models",
        "models": list(reversed(registry.models.list())),
        "rollouts": list(reversed(registry.rollouts.list()))[:100],
        "can_operate": operator.can(WRITE_ROLLOUTS),
        "form": {},
        **extra,
    }
    return render(request, "models.html", context, operator=operator, status_code=status_code)


@router.post("/rollouts", response_class=HTMLResponse)
async def create(request: Request, operator: OperatorDep, resources: ResourcesDep) -> Response:
    form = await _form(request)
    check_csrf(request, operator, form)
    require(operator, WRITE_ROLLOUTS)
    name, _, version = form.get("model", "").partition(":")
    try:
        spec = RolloutSpec(
            model_name=name,
            model_version=version,
            target=form.get("target", "all").strip() or "all",
            canary=int(form.get("canary", "1") or 1),
            waves=parse_waves(form.get("waves", "10,50,100").replace(" ", "")),
            soak_s=parse_duration(form.get("soak", "10m").strip() or "10m"),
            min_frames=int(form.get("min_frames", "20") or 20),
        )
        record = create_rollout(resources.registry, spec, actor=operator.actor)
    except (ConfigError, ValueError) as exc:
        return _models_page(request, operator, resources, {"error": str(exc), "form": form}, 422)
    logger.info("console: rollout %d created by %s", record.id, operator.client.name)
    return redirect(f"{PREFIX}/rollouts/{record.id}?notice=created")


def _rollout_context(resources: ResourcesDep, rollout_id: int, operator: Operator) -> dict[str, Any] | None:
    if resources.registry.rollouts.get(rollout_id) is None:
        return None
    try:
        status = rollout_status(resources.registry, rollout_id)
    except ConfigError:
        return None
    actions = views.allowed_actions(status.state) if operator.can(WRITE_ROLLOUTS) else ()
    return {"page": "models", "status": status, "actions": actions, "counts": status.counts()}


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout(
    request: Request,
    operator: OperatorDep,
    resources: ResourcesDep,
    rollout_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    notice: str | None = None,
) -> Response:
    require(operator, READ_TELEMETRY)
    context = _rollout_context(resources, rollout_id, operator)
    if context is None:
        return render(
            request, "not_found.html", {"what": f"rollout {rollout_id}"}, operator=operator, status_code=404
        )
    name = "_rollout_body.html" if request.headers.get("hx-request") else "rollout.html"
    return render(request, name, {**context, "notice": _notice(notice)}, operator=operator)


@router.post("/rollouts/{rollout_id}/{action}", response_class=HTMLResponse)
async def rollout_action(
    request: Request,
    operator: OperatorDep,
    resources: ResourcesDep,
    rollout_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    action: Annotated[str, Path(pattern="^(pause|resume|abort|rollback)$")],
) -> Response:
    form = await _form(request)
    check_csrf(request, operator, form)
    require(operator, WRITE_ROLLOUTS)
    reason = form.get("reason", "").strip()
    error = ""
    if action == "rollback" and not reason:
        error = "Say why you roll back; the reason goes into the audit log."
    else:
        try:
            change_rollout(resources.registry, rollout_id, action, actor=operator.actor, reason=reason)
        except ConfigError as exc:
            error = str(exc)
    if error:
        context = _rollout_context(resources, rollout_id, operator)
        if context is None:
            return render(
                request,
                "not_found.html",
                {"what": f"rollout {rollout_id}"},
                operator=operator,
                status_code=404,
            )
        return render(
            request, "rollout.html", {**context, "error": error}, operator=operator, status_code=409
        )
    logger.info("console: rollout %d %s by %s", rollout_id, action, operator.client.name)
    return redirect(f"{PREFIX}/rollouts/{rollout_id}?notice={action}")


# Audit and admin ----------------------------------------------------------------------------


@router.get("/audit", response_class=HTMLResponse)
def audit(
    request: Request,
    operator: OperatorDep,
    resources: ResourcesDep,
    q: Annotated[str, Query(max_length=128)] = "",
) -> Response:
    require(operator, ADMIN)
    return render(
        request, "audit.html", {"page": "audit", "view": views.audit(resources, q), "q": q}, operator=operator
    )


def _admin_page(
    request: Request,
    operator: Operator,
    resources: ResourcesDep,
    extra: dict[str, Any],
    status_code: int = 200,
) -> Response:
    webhooks = resources.webhooks.list() if resources.webhooks is not None else None
    context = {"page": "admin", "clients": resources.registry.api_clients.list(), "webhooks": webhooks,
               "scopes": sorted(SCOPES), "new_token": "", "error": "", **extra}  # fmt: skip
    return render(request, "admin.html", context, operator=operator, status_code=status_code)


@router.get("/admin", response_class=HTMLResponse)
def admin(
    request: Request, operator: OperatorDep, resources: ResourcesDep, notice: str | None = None
) -> Response:
    require(operator, ADMIN)
    return _admin_page(request, operator, resources, {"notice": _notice(notice)})


@router.post("/admin/tokens", response_class=HTMLResponse)
async def create_token(request: Request, operator: OperatorDep, resources: ResourcesDep) -> Response:
    form = await request.form()
    fields = {k: str(v)[:MAX_FORM_FIELD] for k, v in form.multi_items() if isinstance(v, str)}
    check_csrf(request, operator, fields)
    require(operator, ADMIN)
    scopes = [str(s) for s in form.getlist("scope")]
    name = fields.get("name", "").strip()
    try:
        token = resources.registry.api_clients.create(
            name, scopes, fields.get("department", "").strip(), actor=operator.actor
        )
    except (ConfigError, ValueError) as exc:
        return _admin_page(request, operator, resources, {"error": str(exc)}, 422)
    logger.info("console: API client %s created by %s", name, operator.client.name)
    return _admin_page(request, operator, resources, {"new_token": token, "new_name": name})


@router.post("/admin/tokens/{name}/revoke", response_class=HTMLResponse)
async def revoke_token(
    request: Request, operator: OperatorDep, resources: ResourcesDep, console: ConsoleDep,
    name: Annotated[str, Path(max_length=64)],
) -> Response:  # fmt: skip
    check_csrf(request, operator, await _form(request))
    require(operator, ADMIN)
    if name == operator.client.name:
        return _admin_page(
            request,
            operator,
            resources,
            {"error": "You cannot revoke the client you are signed in with."},
            409,
        )
    try:
        resources.registry.api_clients.revoke(name, actor=operator.actor)
    except ConfigError as exc:
        return _admin_page(request, operator, resources, {"error": str(exc)}, 409)
    console.sessions.close_client(name)
    return redirect(f"{PREFIX}/admin?notice=token-revoked")


@router.post("/admin/webhooks", response_class=HTMLResponse)
async def create_webhook(request: Request, operator: OperatorDep, resources: ResourcesDep) -> Response:
    form = await _form(request)
    check_csrf(request, operator, form)
    require(operator, ADMIN)
    if resources.webhooks is None:
        return _admin_page(
            request, operator, resources, {"error": "Webhooks are not configured on this hub."}, 501
        )
    types = frozenset(t.strip() for t in form.get("types", "").split(",") if t.strip())
    wanted = EventFilter(site=form.get("site", "").strip() or None, types=types)
    try:
        record = resources.webhooks.create(form.get("url", "").strip(), wanted, created_by=operator.actor)
    except (RoadsideError, ValueError) as exc:
        return _admin_page(request, operator, resources, {"error": str(exc)}, 422)
    resources.registry.record_audit(
        operator.actor, "webhook.create", record.id, {"url": masked_url(record.url)}
    )
    return _admin_page(request, operator, resources, {"new_secret": record.secret, "new_webhook": record.id})


@router.post("/admin/webhooks/{webhook_id}/delete", response_class=HTMLResponse)
async def delete_webhook(
    request: Request,
    operator: OperatorDep,
    resources: ResourcesDep,
    webhook_id: Annotated[str, Path(max_length=64)],
) -> Response:
    check_csrf(request, operator, await _form(request))
    require(operator, ADMIN)
    if resources.webhooks is None or not resources.webhooks.delete(webhook_id):
        return _admin_page(request, operator, resources, {"error": f"No webhook {webhook_id}."}, 404)
    resources.registry.record_audit(operator.actor, "webhook.delete", webhook_id, {})
    return redirect(f"{PREFIX}/admin?notice=webhook-deleted")


# Static files -------------------------------------------------------------------------------


@router.get("/static/{digest}/{name:path}")
def static(console: ConsoleDep, digest: str, name: str) -> Response:
    asset = console.assets.find(f"{digest}/{name}")
    if asset is None:
        return Response("no such file (an old page? reload it)", status_code=404, media_type="text/plain")
    headers = {"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"}
    return Response(asset.body, media_type=asset.media_type, headers=headers)


__all__ = ["SignInRequiredError", "router"]
