"""The ``roadside`` command. Sub-commands come from the parts that are installed:
``agent`` from ``roadside[edge]``; ``pki``, ``device``, ``hub``, ``broker`` and
``demo`` from ``roadside[cloud]``.
"""

from __future__ import annotations

import typer


def build() -> typer.Typer:
    app = typer.Typer(
        no_args_is_help=True, add_completion=False, help="Roadside: edge-to-cloud inference for cities."
    )
    try:
        from edge.cli import app as agent_app

        app.add_typer(agent_app, name="agent", help="Run and inspect the roadside agent.")
    except ImportError as exc:  # the edge extra is not installed here
        _missing(app, "agent", "edge", exc)
    try:
        from cloud.cli import register

        register(app)
    except ImportError as exc:  # the cloud extra is not installed here
        _missing(app, "hub", "cloud", exc)
    return app


def _missing(app: typer.Typer, name: str, extra: str, exc: ImportError) -> None:
    @app.command(name, help=f"(needs `pip install roadside[{extra}]`)")
    def _unavailable() -> None:
        typer.echo(
            f"`roadside {name}` needs the {extra} extra: pip install 'roadside[{extra}]' ({exc})", err=True
        )
        raise typer.Exit(2)


def main() -> None:
    build()()
