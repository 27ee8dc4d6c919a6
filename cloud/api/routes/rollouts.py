"""``/v1/rollouts``: staged model rollouts for operators (``write:rollouts``).

The routes only write the registry; the hub's rollout controller
(:mod:`roadside.cloud.release.controller`) acts on it within a second. Every change is
audited with the API client as the actor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from roadside.cloud.api import problems
from roadside.cloud.api.deps import RegistryDep, RolloutOperator, actor
from roadside.cloud.release.controller import change_rollout, create_rollout, rollout_status
from roadside.cloud.release.rollouts import GateThresholds, RolloutSpec, parse_duration
from roadside.shared.errors import ConfigError

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/v1/rollouts",
    tags=["rollouts"],
    responses={**problems.AUTH_RESPONSES, **problems.VALIDATION_RESPONSES},
)

RolloutId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The rollout id.")]
Action = Literal["pause", "resume", "abort", "rollback"]
_NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {
    404: {"model": problems.Problem, "description": "No such rollout."}
}
_CONFLICT: Final[dict[int | str, dict[str, Any]]] = {
    409: {"model": problems.Problem, "description": "The rollout's state does not allow this action."}
}

_ROLLOUT_EXAMPLE: Final[dict[str, Any]] = {
    "id": 7,
    "model": "detector",
    "version": "1.3.0",
    "target": "site:main-st",
    "status": "running",
    "reason": "",
    "current_wave": 1,
    "waves": [{"wave": 0, "devices": 2}, {"wave": 1, "devices": 8}, {"wave": 2, "devices": 40}],
    "wave_started_at": "2026-11-23T10:12:00+00:00",
    "created_at": "2026-11-23T10:00:00+00:00",
    "updated_at": "2026-11-23T10:12:00+00:00",
    "spec": {
        "model_name": "detector",
        "model_version": "1.3.0",
        "target": "site:main-st",
        "canary": 2,
        "waves": [10, 50, 100],
        "soak_s": 600.0,
        "min_frames": 20,
        "gates": {"min_agreement": 0.7, "max_confidence_drop": 0.25},
    },
    "counts": {"active": 2, "commanded": 8, "pending": 40},
    "devices": [
        {
            "device_id": "cam-0042",
            "wave": 0,
            "state": "active",
            "detail": "",
            "shadow": {"frames": 1800, "agreement": 0.93, "novel": 0.08},
            "updated_at": "2026-11-23T10:11:40+00:00",
        }
    ],
}


class GateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_agreement: float = Field(default=0.7, ge=0, le=1)
    max_confidence_drop: float = Field(default=0.25, ge=0, le=1)
    max_latency_ratio: float = Field(default=1.5, gt=0, le=100)
    min_fps_ratio: float = Field(default=0.8, ge=0, le=10)
    max_failed: int = Field(default=0, ge=0, le=100_000)
    install_timeout_s: float = Field(default=300.0, gt=0, le=86_400)
    health_wait_s: float = Field(default=120.0, ge=0, le=86_400)
    require_shadow: bool = True


class RolloutCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "detector:1.3.0",
                    "target": "site:main-st",
                    "canary": 2,
                    "waves": [10, 50, 100],
                    "soak": "10m",
                }
            ]
        },
    )

    model: str = Field(
        pattern=r"^[A-Za-z0-9_-]{1,64}:[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$", description="NAME:VERSION"
    )
    target: str = Field(
        default="all",
        min_length=3,
        max_length=256,
        description="`all`, `site:<site>[,<site>]` or `devices:<id>[,<id>]`.",
    )
    canary: int = Field(default=1, ge=0, le=10_000)
    waves: list[int] = Field(default=[10, 50, 100], min_length=1, max_length=20, description="Cumulative %.")
    soak: str = Field(
        default="10m", pattern=r"^\d{1,6}(\.\d{1,3})?(ms|s|m|h)?$", description="e.g. 30s, 10m, 1h"
    )
    min_frames: int = Field(default=20, ge=0, le=100_000)
    gates: GateSettings = Field(default_factory=GateSettings)


class ActionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "complaints from traffic ops"}]}
    )

    reason: str = Field(default="", max_length=512)


class RolloutView(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": _ROLLOUT_EXAMPLE})

    id: int
    model: str
    version: str
    target: str
    status: str
    reason: str
    current_wave: int
    waves: list[dict[str, int]]
    wave_started_at: str | None
    created_at: str
    updated_at: str
    spec: dict[str, Any]
    counts: dict[str, int]
    devices: list[dict[str, Any]]


class RolloutList(BaseModel):
    rollouts: list[RolloutView]


def _invalid(detail: str) -> problems.ProblemError:
    return problems.ProblemError(
        HTTPStatus.UNPROCESSABLE_ENTITY, "invalid-rollout", "Invalid rollout", detail
    )


def _view(registry: RegistryDep, rollout_id: int) -> RolloutView:
    if registry.rollouts.get(rollout_id) is None:
        raise problems.not_found("rollout", str(rollout_id))
    try:
        return RolloutView.model_validate(rollout_status(registry, rollout_id).to_json())
    except ConfigError as exc:  # a rollout recorded before staged rollouts existed
        raise problems.conflict(str(exc)) from exc


@router.get(
    "",
    summary="List rollouts",
    description="The newest 100 staged rollouts, optionally only those in one state.",
    response_model=RolloutList,
    responses={200: {"content": {"application/json": {"example": {"rollouts": [_ROLLOUT_EXAMPLE]}}}}},
)
def list_rollouts(
    _client: RolloutOperator,
    registry: RegistryDep,
    status: Annotated[
        Literal["pending", "running", "paused", "rolling_back", "completed", "rolled_back", "aborted"] | None,
        Query(description="Only rollouts in this state."),
    ] = None,
) -> RolloutList:
    records = [r for r in registry.rollouts.list(status) if r.spec is not None]
    return RolloutList(rollouts=[_view(registry, r.id) for r in records[-100:]])


@router.post(
    "",
    status_code=201,
    summary="Create a rollout",
    description="Plan a staged rollout of a published model over the target's active devices: the canary "
    "first, then each cumulative wave once the previous one passed every gate. A failed gate rolls back "
    "automatically.",
    response_model=RolloutView,
    responses={
        201: {"content": {"application/json": {"example": _ROLLOUT_EXAMPLE}}},
        **problems.BODY_RESPONSES,
    },
)
def create(
    client: RolloutOperator,
    registry: RegistryDep,
    request: Annotated[RolloutCreate, Body()],
    response: Response,
) -> RolloutView:
    name, _, version = request.model.partition(":")
    try:
        spec = RolloutSpec(
            model_name=name,
            model_version=version,
            target=request.target,
            canary=request.canary,
            waves=tuple(request.waves),
            soak_s=parse_duration(request.soak),
            min_frames=request.min_frames,
            gates=GateThresholds(**request.gates.model_dump()),
        )
        record = create_rollout(registry, spec, actor=actor(client))
    except ConfigError as exc:
        raise _invalid(str(exc)) from exc
    logger.info("rollout %d of %s created by API client %s", record.id, request.model, client.name)
    response.headers["Location"] = f"{router.prefix}/{record.id}"
    return _view(registry, record.id)


@router.get(
    "/{rollout_id}",
    summary="A rollout and where each device stands",
    description="Its spec, its current wave, how many devices are in each state, and each device's "
    "progress with the shadow statistics it reported.",
    response_model=RolloutView,
    responses={200: {"content": {"application/json": {"example": _ROLLOUT_EXAMPLE}}}, **_NOT_FOUND},
)
def get_rollout(_client: RolloutOperator, registry: RegistryDep, rollout_id: RolloutId) -> RolloutView:
    return _view(registry, rollout_id)


def _act(action: Action) -> Callable[..., RolloutView]:
    def act(
        client: RolloutOperator,
        registry: RegistryDep,
        rollout_id: RolloutId,
        request: Annotated[ActionRequest, Body()] = ActionRequest(),  # noqa: B008 - an immutable default
    ) -> RolloutView:
        if registry.rollouts.get(rollout_id) is None:
            raise problems.not_found("rollout", str(rollout_id))
        reason = request.reason
        try:
            change_rollout(registry, rollout_id, action, actor=actor(client), reason=reason)
        except ConfigError as exc:
            raise problems.conflict(str(exc)) from exc
        logger.info("rollout %d: %s by API client %s", rollout_id, action, client.name)
        return _view(registry, rollout_id)

    return act


_DESCRIPTIONS: Final[dict[Action, str]] = {
    "pause": "Hold promotion: no new wave starts. Gates are still judged, so a failing wave still rolls back.",
    "resume": "Go on from a pause.",
    "abort": "Stop where it is: devices keep the model they run now; no further wave starts.",
    "rollback": "Tell every device the rollout reached to return to its previous model (kept loaded: instant).",
}

_ACTIONS: Final[tuple[Action, ...]] = ("pause", "resume", "abort", "rollback")
for _action in _ACTIONS:
    router.add_api_route(
        f"/{{rollout_id}}/{_action}",
        _act(_action),
        methods=["POST"],
        summary=f"{_action.capitalize()} a rollout",
        description=_DESCRIPTIONS[_action],
        response_model=RolloutView,
        responses={
            200: {"content": {"application/json": {"example": _ROLLOUT_EXAMPLE}}},
            **_NOT_FOUND,
            **_CONFLICT,
            **problems.BODY_RESPONSES,
        },
        name=f"rollout_{_action}",
    )
