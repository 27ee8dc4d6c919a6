"""``roadside air``: the operator's air-quality commands (``index`` computes an index from concentrations).

Needs nothing but the base install, so it runs on a pole, on the hub or on a laptop.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, NoReturn, cast, get_args

import typer

from roadside.shared.air.epa import Averaging, Pollutant
from roadside.shared.air.europe import Station
from roadside.shared.air.standards import compute
from roadside.shared.errors import AirIndexError

air_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Air-quality indices.")


@air_app.callback()
def air() -> None:
    """Air-quality indices (a group, so ``index`` stays a sub-command beside the ones to come)."""


StandardName = Literal["us-epa", "eu-eaqi", "eu-caqi"]


def _choice(options: tuple[str, ...]) -> str:
    return "|".join(options)


@air_app.command("index")
def index(
    standard: Annotated[str, typer.Option(help=f"{_choice(get_args(StandardName))}")] = "us-epa",
    pm25: Annotated[float | None, typer.Option(help="PM2.5, µg/m³")] = None,
    pm10: Annotated[float | None, typer.Option(help="PM10, µg/m³")] = None,
    o3: Annotated[float | None, typer.Option(help="ozone, ppb")] = None,
    no2: Annotated[float | None, typer.Option(help="nitrogen dioxide, ppb")] = None,
    so2: Annotated[float | None, typer.Option(help="sulphur dioxide, ppb")] = None,
    co: Annotated[float | None, typer.Option(help="carbon monoxide, ppm")] = None,
    averaging: Annotated[
        str | None,
        typer.Option(
            help=f"{_choice(get_args(Averaging))}: the period of the values given, for the pollutants the"
            " standard defines it for (the others use the standard's own period)"
        ),
    ] = None,
    station: Annotated[
        str,
        typer.Option(help=f"{_choice(get_args(Station))}: the European indices' station rules and CAQI grid"),
    ] = "traffic",
) -> None:
    """Print the index of the concentrations given as one JSON object."""
    if standard not in get_args(StandardName):
        _fail(f"--standard must be one of {_choice(get_args(StandardName))}, not {standard!r}")
    if averaging is not None and averaging not in get_args(Averaging):
        _fail(f"--averaging must be one of {_choice(get_args(Averaging))}, not {averaging!r}")
    if station not in get_args(Station):
        _fail(f"--station must be one of {_choice(get_args(Station))}, not {station!r}")
    given: dict[Pollutant, float | None] = {
        "pm25": pm25, "pm10": pm10, "o3": o3, "no2": no2, "so2": so2, "co": co,
    }  # fmt: skip
    concentrations = {p: v for p, v in given.items() if v is not None}
    if not concentrations:
        _fail("give at least one concentration (--pm25, --pm10, --o3, --no2, --so2, --co)")
    try:
        report = compute(
            cast(StandardName, standard),  # each checked against its choices above
            concentrations,
            cast(Averaging | None, averaging),
            cast(Station, station),
        )
    except AirIndexError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(report.to_json()))


def _fail(message: str) -> NoReturn:
    typer.echo(f"roadside air index: {message}", err=True)
    raise typer.Exit(2)
