"""``/v1/alerts``: what an operator should look at now (:mod:`roadside.cloud.fleet.alerts`), and
acknowledging one (``write:devices``; audited as ``alert.ack``)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from roadside.cloud.api import problems
from roadside.cloud.api.alerting import hub_alerts
from roadside.cloud.api.deps import DeviceWriter, TelemetryReader, actor, get_resources
from roadside.cloud.fleet.alerts import ALERT_KINDS, Alert, AlertKind, Severity
from roadside.cloud.registry.alert_acks import MAX_ALERT_ID, MAX_NOTE

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/v1/alerts",
    tags=["alerts"],
    responses={**problems.AUTH_RESPONSES, **problems.VALIDATION_RESPONSES},
)

_ALERT_EXAMPLE: Final[dict[str, Any]] = {
    "id": "device_offline:cam-0042:1746087298",
    "kind": "device_offline",
    "severity": "warning",
    "subject": "cam-0042",
    "site": "main-st-5th-ave",
    "since": "2025-05-01T08:14:58Z",
    "summary": "cam-0042 not heard from for 45 min: check its power and uplink (roadside agent doctor on the device).",
    "acknowledged_by": None,
    "acknowledged_at": None,
}


class AlertView(BaseModel):
    id: str = Field(description="Names this occurrence: kind, subject and when it began.")
    kind: AlertKind
    severity: Severity
    subject: str = Field(description="The device, `device/stream`, rejection reason, rollout id or location.")
    site: str | None
    since: datetime
    summary: str = Field(description="What happened and what to do.")
    acknowledged_by: str | None = Field(
        description="Who acknowledged it (`api:NAME`, `console:NAME`), if anyone."
    )
    acknowledged_at: datetime | None

    @classmethod
    def of(cls, alert: Alert) -> AlertView:
        return cls(id=alert.id, kind=alert.kind, severity=alert.severity, subject=alert.subject, site=alert.site,
                   since=alert.since, summary=alert.summary, acknowledged_by=alert.acknowledged_by,
                   acknowledged_at=alert.acknowledged_at)  # fmt: skip


class AlertList(BaseModel):
    alerts: list[AlertView] = Field(description="Critical first, then the oldest first.")
    open: int = Field(description="How many are not acknowledged.")


class AckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"note": "crew on the way"}]})

    note: str = Field(
        default="", max_length=MAX_NOTE, description="Goes into the audit log with the acknowledgement."
    )


_NO_NOTE: Final = AckRequest()


@router.get(
    "",
    summary="Open alerts",
    description="Derived from the hub's state on each request: devices offline beyond 15 minutes, camera "
    "streams not up for 2 minutes, bursts of refused messages (20 of one reason in 5 minutes), rollouts "
    "rolling or rolled back within a day, air-quality locations at a harmful category. An alert closes by "
    "itself when its cause goes. Acknowledged ones stay listed (marked) unless `acknowledged=false`.",
    response_model=AlertList,
    responses={
        200: {"content": {"application/json": {"example": {"alerts": [_ALERT_EXAMPLE], "open": 1}}}},
        **problems.STORE_RESPONSES,
    },
)
def list_alerts(
    _client: TelemetryReader,
    request: Request,
    kind: Annotated[
        AlertKind | None, Query(description=f"Only this kind: one of {', '.join(ALERT_KINDS)}.")
    ] = None,
    acknowledged: Annotated[
        bool | None,
        Query(description="`false`: only those nobody acknowledged; `true`: only acknowledged ones."),
    ] = None,
) -> AlertList:
    alerts = hub_alerts(get_resources(request))
    shown = [a for a in alerts if (kind is None or a.kind == kind)
             and (acknowledged is None or a.acknowledged == acknowledged)]  # fmt: skip
    return AlertList(alerts=[AlertView.of(a) for a in shown], open=sum(not a.acknowledged for a in alerts))


@router.post(
    "/{alert_id}/ack",
    summary="Acknowledge an alert",
    description="Mark an open alert as seen (audited as `alert.ack` with the note). It stays open until its "
    "cause goes; its next occurrence is a new alert. Acknowledging twice keeps the first.",
    response_model=AlertView,
    responses={
        200: {"content": {"application/json": {"example": {**_ALERT_EXAMPLE, "acknowledged_by": "api:ops",
                                                           "acknowledged_at": "2025-05-01T09:01:12Z"}}}},
        404: {"model": problems.Problem, "description": "No open alert has this id (it closed, or never was)."},
        **problems.BODY_RESPONSES,
        **problems.STORE_RESPONSES,
    },
)  # fmt: skip
def acknowledge_alert(
    client: DeviceWriter,
    request: Request,
    alert_id: Annotated[str, Path(min_length=1, max_length=MAX_ALERT_ID, description="The alert's `id`.")],
    body: Annotated[AckRequest, Body()] = _NO_NOTE,
) -> AlertView:
    resources = get_resources(request)
    alert = next((a for a in hub_alerts(resources) if a.id == alert_id), None)
    if alert is None:
        raise problems.not_found("open alert", alert_id)
    ack = resources.registry.alert_acks.acknowledge(alert_id, actor=actor(client), note=body.note)
    logger.info("alert %s acknowledged by %s", alert_id, client.name)
    return AlertView.of(alert).model_copy(
        update={"acknowledged_by": ack.acknowledged_by, "acknowledged_at": ack.acknowledged_at}
    )
