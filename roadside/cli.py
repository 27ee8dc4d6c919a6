"""The ``roadside`` command: the sub-commands of the parts installed here, under one name.

``agent`` comes from ``roadside[edge]`` (:mod:`roadside.edge.cli`); ``pki``, ``device``,
``hub``, ``broker``, ``audit``, ``rollout``, ``dataset``, ``model`` and
``deadletters`` from ``roadside[cloud]`` (:func:`roadside.cloud.cli.register`); ``air``
from the base install (:mod:`roadside.shared.air.cli`); ``demo``
from the simulator (:mod:`roadside.sim.demo`), which needs both. A part that is not
installed leaves a stub that says which extra to install. This is the only
module besides ``sim`` that imports both ``edge`` and ``cloud``.
"""

from __future__ import annotations

import sys

import typer


def build(agent_only: bool = False) -> typer.Typer:
    """The whole command tree; with ``agent_only``, the ``agent`` group alone (see :func:`main`)."""
    app = typer.Typer(
        no_args_is_help=True, add_completion=False, help="Roadside: edge-to-cloud inference for cities."
    )
    try:
        from roadside.edge.cli import app as agent_app

        app.add_typer(agent_app, name="agent", help="Run and inspect the roadside agent.")
    except ImportError as exc:  # the edge extra is not installed here
        _missing(app, "agent", "edge", exc)
    if agent_only:
        return app
    try:
        from roadside.cloud.cli import register

        register(app)
    except ImportError as exc:  # the cloud extra is not installed here
        _missing(app, "hub", "cloud", exc)
    from roadside.shared.air.cli import air_app  # the base install: no extra needed

    app.add_typer(air_app, name="air", help="Air-quality indices (US EPA AQI, EAQI, CAQI).")
    try:
        from roadside.signalcontrol.cli import app as signal_app

        app.add_typer(
            signal_app, name="signal", help="Drive a traffic signal from Roadside's detector calls."
        )
        try:  # the channel maps live in the hub's registry
            from roadside.cloud.signals.cli import map_app

            signal_app.add_typer(map_app, name="map", help="Channel maps: detector channel <-> camera zone.")
        except ImportError:  # no cloud extra here: `roadside signal map` is absent, `run` still works
            pass
    except ImportError as exc:  # the controller's extra is not installed here
        _missing(app, "signal", "signal", exc)
    try:
        from roadside.sim.demo import demo

        app.command("demo")(demo)
    except ImportError as exc:  # the demo runs the hub: it needs the cloud extra
        _missing(app, "demo", "cloud", exc)
    return app


def _missing(app: typer.Typer, name: str, extra: str, exc: ImportError) -> None:
    @app.command(name, help=f"(needs `pip install roadside[{extra}]`)")
    def _unavailable() -> None:
        typer.echo(
            f"`roadside {name}` needs the {extra} extra: pip install 'roadside[{extra}]' ({exc})", err=True
        )
        raise typer.Exit(2)


def main() -> None:
    """The console script ``roadside``.

    ``roadside agent ...`` builds the agent's group alone: where the cloud extra is installed
    too, registering the hub's commands imports FastAPI, SQLAlchemy, Alembic and the rest,
    about 60 MB of resident memory the agent process would carry for nothing (ADR 0023).
    """
    build(agent_only=sys.argv[1:2] == ["agent"])()
