"""``roadside agent ...``"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from shared.errors import ConfigError

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
    from edge.agent import Agent
    from edge.settings import load_agent_settings
    from shared.bundle import read_bundle
    from shared.logs import setup_logging

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
        agent = Agent(settings, enrollment)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    agent.run_forever(stop)
