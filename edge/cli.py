"""``roadside agent ...``"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from roadside.shared.errors import ConfigError

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("run")
def run(
    bundle: Annotated[Path, typer.Option(help="Enrollment bundle from `roadside device enroll`.")] = Path(
        "/etc/roadside/bundle.json"
    ),
    config: Annotated[Path | None, typer.Option(help="Agent config (TOML or JSON).")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING.")] = "INFO",
) -> None:
    """Run the agent until SIGTERM or Ctrl-C; the open interval is sent before it exits."""
    from roadside.edge.agent import Agent
    from roadside.edge.settings import load_agent_settings
    from roadside.shared.bundle import read_bundle
    from roadside.shared.logs import setup_logging

    try:
        settings = load_agent_settings(config, bundle=bundle)
        enrollment = read_bundle(settings.bundle)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    setup_logging(log_level, device_id=enrollment.device_id)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        agent = Agent.from_settings(settings, enrollment, config_path=config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        agent.run_forever(stop)
    except ConfigError as exc:  # e.g. the metrics port is taken
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command("install")
def install(
    bundle: Annotated[Path, typer.Option(help="Enrollment bundle from `roadside device enroll`.")],
    camera: Annotated[
        list[str] | None, typer.Option(help="A camera as NAME=URI or URI (repeat for more).")
    ] = None,
    provider: Annotated[
        list[str] | None, typer.Option(help="onnxruntime execution providers, best first (repeat).")
    ] = None,
    metrics_port: Annotated[int, typer.Option(help="Prometheus /metrics on 127.0.0.1; 0: off.")] = 9464,
    hub_url: Annotated[str | None, typer.Option(help="Hub API URL, for the doctor's clock check.")] = None,
    exec_path: Annotated[
        Path | None, typer.Option("--exec", help="Path of the `roadside` command the unit runs.")
    ] = None,
    root: Annotated[Path, typer.Option(help="Install under this directory instead of /.")] = Path("/"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing agent.toml.")] = False,
) -> None:
    """Write the systemd unit, the agent config and the bundle under /etc/roadside; print what to run next."""
    from roadside.edge.install import install as run_install
    from roadside.edge.install import parse_camera

    try:
        cameras = [parse_camera(text, i) for i, text in enumerate(camera or [])]
        result = run_install(
            bundle, root, cameras, provider, metrics_port, hub_url, exec_path=exec_path, force=force
        )
    except (ConfigError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"device {result.device}")
    for path in result.written:
        typer.echo(f"wrote {path}")
    for path in result.kept:
        typer.echo(f"kept  {path} (exists; --force overwrites it)")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo("\nnext, run:")
    for command in result.commands:
        typer.echo(f"  {command}")


@app.command("doctor")
def doctor(
    config: Annotated[Path | None, typer.Option(help="Agent config (TOML or JSON).")] = None,
    bundle: Annotated[Path | None, typer.Option(help="Enrollment bundle (default: the config's).")] = None,
    hub_url: Annotated[str | None, typer.Option(help="Hub API URL, to measure clock skew.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker and the hub.")] = 5.0,
    camera_timeout: Annotated[float, typer.Option(help="Seconds to wait for a camera's first frame.")] = 10.0,
    skip_providers: Annotated[bool, typer.Option(help="Do not try the model on each provider.")] = False,
) -> None:
    """Check the bundle, the broker (TLS, MQTT), the clock, each camera, the disk and the providers."""
    from rich.console import Console

    from roadside.edge.doctor import render, run_checks
    from roadside.edge.install import CONFIG_PATH
    from roadside.edge.settings import load_agent_settings

    if config is None and CONFIG_PATH.is_file():
        config = CONFIG_PATH
    try:
        settings = load_agent_settings(config, bundle=bundle)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    results = run_checks(settings, hub_url, timeout, camera_timeout, providers=not skip_providers)
    if not render(results, Console()):
        raise typer.Exit(1)


@app.command("selftest")
def selftest(
    model: Annotated[
        Path | None, typer.Option(help="ONNX detector to try (default: the one shipped in the wheel).")
    ] = None,
    provider: Annotated[
        list[str] | None, typer.Option(help="onnxruntime execution providers, best first (repeat).")
    ] = None,
    frames: Annotated[int, typer.Option(min=1, max=1000, help="Frames to time on the model.")] = 5,
) -> None:
    """Check this install with no bundle, broker or camera: the model runs, the outbox stores, envelopes seal.

    Prints one JSON object; exits 1 when a check fails.
    """
    import json

    from roadside.edge.selftest import run_selftest
    from roadside.edge.settings import ModelConfig

    config = ModelConfig(path=model, providers=provider or ["CPUExecutionProvider"], trt_cache_path=None)
    report = run_selftest(config, frames)
    typer.echo(json.dumps(report.to_json()))
    if not report.ok:
        raise typer.Exit(1)
