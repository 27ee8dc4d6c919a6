"""``roadside rollout create|list|status|pause|resume|abort|rollback``: staged model rollouts.

These commands write the registry; the running hub's rollout controller acts
on the change within a second (``rollout_tick_s``). Each change is audited
with the operator's login as the actor.
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from roadside.cloud.cli_common import DEFAULT_HOME, HomeOption, RegistryUrlOption, actor, fail, open_registry
from roadside.cloud.release.controller import RolloutStatus, change_rollout, create_rollout, rollout_status
from roadside.cloud.release.rollouts import (
    FINAL_STATES,
    GateThresholds,
    RolloutSpec,
    parse_duration,
    parse_waves,
)
from roadside.shared.errors import ConfigError

rollout_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Staged model rollouts: canary, waves, gates, rollback."
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
ReasonOption = Annotated[str, typer.Option(help="Why (kept in the audit log).")]


def _show(status: RolloutStatus, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(status.to_json()))
        return
    r = status.rollout
    console = Console()
    console.print(
        f"rollout {r.id}: {r.model_name}:{r.model_version} → {r.target}  [bold]{r.status}[/bold]"
        f"  wave {r.current_wave}" + (f"  ({r.reason})" if r.reason else "")
    )
    table = Table("device", "wave", "state", "agreement", "novel", "detail")
    for d in status.devices:
        shadow = d.shadow or {}
        table.add_row(
            d.device_id,
            str(d.wave),
            d.state,
            f"{shadow['agreement']:.2f}" if "agreement" in shadow else "",
            f"{shadow['novel']:.2f}" if "novel" in shadow else "",
            d.detail[:60],
        )
    console.print(table)


@rollout_app.command("create")
def create(
    model: Annotated[str, typer.Option(help="NAME:VERSION of a published model.")],
    target: Annotated[str, typer.Option(help="all, site:<site>[,<site>] or devices:<id>[,<id>].")] = "all",
    canary: Annotated[int, typer.Option(help="Devices in the canary wave.")] = 1,
    waves: Annotated[str, typer.Option(help="Cumulative percentages after the canary.")] = "10,50,100",
    soak: Annotated[
        str, typer.Option(help="Shadow time on each device before it switches (30s, 10m).")
    ] = "10m",
    min_frames: Annotated[int, typer.Option(help="Frames each device must compare in shadow.")] = 20,
    min_agreement: Annotated[
        float, typer.Option(help="Gate: share of the old model's detections found.")
    ] = 0.7,
    max_confidence_drop: Annotated[float, typer.Option(help="Gate: confidence histogram distance.")] = 0.25,
    max_latency_ratio: Annotated[float, typer.Option(help="Gate: p95 latency, new over old.")] = 1.5,
    min_fps_ratio: Annotated[float, typer.Option(help="Gate: FPS after the switch over before.")] = 0.8,
    max_failed: Annotated[int, typer.Option(help="Gate: failed installs tolerated per wave.")] = 0,
    install_timeout: Annotated[
        str, typer.Option(help="How long past the soak a wave may stay silent.")
    ] = "5m",
    health_wait: Annotated[str, typer.Option(help="How long to wait for health after a switch.")] = "2m",
    home: HomeOption = DEFAULT_HOME,
    registry_url: RegistryUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Plan a rollout; the hub starts it with the canary within a second."""
    name, _, version = model.partition(":")
    try:
        spec = RolloutSpec(
            model_name=name,
            model_version=version,
            target=target,
            canary=canary,
            waves=parse_waves(waves),
            soak_s=parse_duration(soak),
            min_frames=min_frames,
            gates=GateThresholds(
                min_agreement=min_agreement,
                max_confidence_drop=max_confidence_drop,
                max_latency_ratio=max_latency_ratio,
                min_fps_ratio=min_fps_ratio,
                max_failed=max_failed,
                install_timeout_s=parse_duration(install_timeout),
                health_wait_s=parse_duration(health_wait),
            ),
        )
    except ConfigError as exc:
        raise fail(exc) from exc
    with open_registry(home, registry_url) as registry:
        record = create_rollout(registry, spec, actor=actor())
        _show(rollout_status(registry, record.id), as_json)


@rollout_app.command("list")
def list_rollouts(
    home: HomeOption = DEFAULT_HOME, registry_url: RegistryUrlOption = None, as_json: JsonOption = False
) -> None:
    """Every rollout, oldest first."""
    with open_registry(home, registry_url) as registry:
        records = registry.rollouts.list()
    if as_json:
        typer.echo(json.dumps({"rollouts": [
            {"id": r.id, "model": f"{r.model_name}:{r.model_version}", "target": r.target, "status": r.status,
             "wave": r.current_wave, "reason": r.reason}
            for r in records
        ]}))  # fmt: skip
        return
    table = Table("id", "model", "target", "status", "wave", "reason")
    for r in records:
        table.add_row(
            str(r.id), f"{r.model_name}:{r.model_version}", r.target, r.status, str(r.current_wave), r.reason
        )
    Console().print(table)


@rollout_app.command("status")
def status(
    rollout_id: Annotated[int, typer.Argument(help="The rollout id.")],
    wait: Annotated[
        float,
        typer.Option(help="Wait up to this many seconds for the rollout to finish; exit 1 unless completed."),
    ] = 0.0,
    home: HomeOption = DEFAULT_HOME,
    registry_url: RegistryUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Where the rollout and each of its devices stand."""
    with open_registry(home, registry_url) as registry:
        deadline = time.monotonic() + wait
        current = rollout_status(registry, rollout_id)
        while wait and current.state not in FINAL_STATES and time.monotonic() < deadline:
            time.sleep(1.0)
            current = rollout_status(registry, rollout_id)
        _show(current, as_json)
    if wait and current.state != "completed":
        raise typer.Exit(1)


def _action(action: str, help_text: str) -> None:
    def run(
        rollout_id: Annotated[int, typer.Argument(help="The rollout id.")],
        reason: ReasonOption = "",
        home: HomeOption = DEFAULT_HOME,
        registry_url: RegistryUrlOption = None,
        as_json: JsonOption = False,
    ) -> None:
        with open_registry(home, registry_url) as registry:
            change_rollout(registry, rollout_id, action, actor=actor(), reason=reason)
            _show(rollout_status(registry, rollout_id), as_json)

    run.__doc__ = help_text
    rollout_app.command(action)(run)


_action("pause", "Hold promotion (a failing wave still rolls back).")
_action("resume", "Go on from a pause.")
_action("abort", "Stop where it is: devices keep what they run now.")
_action("rollback", "Every device the rollout reached returns to its previous model.")
