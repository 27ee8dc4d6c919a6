"""``/v1/webhooks``: where the hub POSTs events as they arrive (``admin``).

Deliveries are signed (``X-Roadside-Signature``) and retried; see
:mod:`roadside.cloud.api.webhooks` for the scheme a receiver verifies.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Final

from fastapi import APIRouter, Body, Path, Response
from fastapi.exceptions import RequestValidationError

from roadside.cloud.api import problems
from roadside.cloud.api.deps import Administrator, AuditDep, WebhooksDep, actor
from roadside.cloud.api.schemas import Webhook, WebhookCreate, WebhookCreated, WebhookList
from roadside.cloud.api.webhooks import (
    UnresolvedHostError,
    WebhookDestinationError,
    WebhookLimitError,
    masked_url,
)

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/v1/webhooks",
    tags=["webhooks"],
    responses={
        **problems.AUTH_RESPONSES,
        **problems.VALIDATION_RESPONSES,
        501: {"model": problems.Problem, "description": "Webhooks are not configured on this hub."},
    },
)

WebhookId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^wh_[0-9a-f]{1,40}$")]

_WEBHOOK: Final[dict[str, Any]] = {
    "id": "wh_3f9a0c1d2e4b5a6978c1",
    "url": "https://signals.city.example/roadside/events",
    "device": None,
    "site": "main-st-5th-ave",
    "types": ["stopped_vehicle", "wrong_way"],
    "created_at": "2025-05-01T08:00:00Z",
    "created_by": "api:ops",
    "delivered": 1520,
    "failed": 3,
    "last_attempt_at": "2025-05-01T10:14:59Z",
    "last_status": 204,
    "last_error": None,
}
_NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {
    404: {"model": problems.Problem, "description": "No webhook with this id."}
}
_SIGNING: Final = (
    'Each delivery is a `POST` of `{"webhook_id", "delivery_id", "events": [...]}` (events as in '
    "`/v1/events`) with `X-Roadside-Timestamp` (Unix seconds) and `X-Roadside-Signature: sha256=<hex>`, "
    "the HMAC-SHA256 under the secret of `<timestamp>.<body>`; verify it in constant time and refuse old "
    "timestamps. `X-Roadside-Delivery` is the same on every attempt of a delivery. Failed attempts (no "
    "answer, 408, 425, 429, 5xx) are retried with jittered exponential backoff; a 2xx ends them."
)


@router.post(
    "",
    status_code=201,
    summary="Register a webhook",
    description="POST matching events to `url` as the hub accepts them. " + _SIGNING + " The secret is "
    "returned only in this answer (`Cache-Control: no-store`). The hub resolves the URL's host now and "
    "before each delivery, and refuses (422, nothing stored, the attempt audited) one that is or "
    "resolves to a loopback, link-local, private, multicast or otherwise non-global address, unless "
    "the operator allow-listed its network (`webhook_allow_networks`). A delivery connects to the "
    "address it resolved, with the URL's host as `Host` and TLS server name.",
    response_model=WebhookCreated,
    responses={
        201: {
            "content": {
                "application/json": {"example": {**_WEBHOOK, "secret": "a-long-random-shared-secret"}}
            }
        },
        **problems.BODY_RESPONSES,
        409: {
            "model": problems.Problem,
            "description": "The hub already has its maximum number of webhooks.",
        },
    },
)
def create_webhook(
    client: Administrator,
    audit: AuditDep,
    webhooks: WebhooksDep,
    request: Annotated[WebhookCreate, Body()],
    response: Response,
) -> WebhookCreated:
    try:
        record = webhooks.create(
            request.url, request.event_filter(), created_by=actor(client), secret=request.secret
        )
    except WebhookLimitError as exc:
        raise problems.conflict(str(exc)) from exc
    except (WebhookDestinationError, UnresolvedHostError) as exc:
        # Nothing was stored; the attempt is still audited: an admin key probing internal hosts is news.
        audit.append(
            actor(client), "webhook.refuse", "webhook", {"url": masked_url(request.url), "reason": str(exc)}
        )
        logger.info("webhook to %s refused for API client %s: %s", masked_url(request.url), client.name, exc)
        raise RequestValidationError(
            [{"loc": ("body", "url"), "msg": str(exc), "type": "value_error"}]
        ) from exc
    details = {"url": masked_url(record.url), "device": request.device, "site": request.site,
               "types": sorted(request.types)}  # fmt: skip
    audit.append(actor(client), "webhook.create", record.id, details)
    logger.info(
        "webhook %s to %s registered by API client %s", record.id, masked_url(record.url), client.name
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Location"] = f"{router.prefix}/{record.id}"
    return WebhookCreated(**Webhook.from_record(record).model_dump(), secret=record.secret)


@router.get(
    "",
    summary="List webhooks",
    description="Every registered webhook with its delivery counts and last outcome (never its secret).",
    response_model=WebhookList,
    responses={200: {"content": {"application/json": {"example": {"webhooks": [_WEBHOOK]}}}}},
)
def list_webhooks(_client: Administrator, webhooks: WebhooksDep) -> WebhookList:
    return WebhookList(webhooks=[Webhook.from_record(r) for r in webhooks.list()])


@router.get(
    "/{webhook_id}",
    summary="Get one webhook",
    description="The webhook, its delivery counts and last outcome (never its secret).",
    response_model=Webhook,
    responses={200: {"content": {"application/json": {"example": _WEBHOOK}}}, **_NOT_FOUND},
)
def get_webhook(_client: Administrator, webhooks: WebhooksDep, webhook_id: WebhookId) -> Webhook:
    record = webhooks.get(webhook_id)
    if record is None:
        raise problems.not_found("webhook", webhook_id)
    return Webhook.from_record(record)


@router.delete(
    "/{webhook_id}",
    status_code=204,
    summary="Delete a webhook",
    description="Stop delivering to it. Deliveries already queued may still be attempted once.",
    response_class=Response,
    responses={204: {"description": "Deleted."}, **_NOT_FOUND},
)
def delete_webhook(
    client: Administrator, audit: AuditDep, webhooks: WebhooksDep, webhook_id: WebhookId
) -> Response:
    if not webhooks.delete(webhook_id):
        raise problems.not_found("webhook", webhook_id)
    audit.append(actor(client), "webhook.delete", webhook_id, {})
    logger.info("webhook %s deleted by API client %s", webhook_id, client.name)
    return Response(status_code=204)
