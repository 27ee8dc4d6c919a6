"""``roadside signal run``: the actuated controller on a SUMO traffic light, fed by the hub's calls."""

from __future__ import annotations

import json
import signal as os_signal
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from roadside.shared.errors import ConfigError, RoadsideError
from roadside.shared.logs import setup_logging
from roadside.signalcontrol.relay import RelaySettings, run_relay
from roadside.signalcontrol.service import ControllerSettings, TimingFile, run_on_sumo

SignalOption = Annotated[
    str, typer.Option(help="The signal's id in the hub (its channel map names the phases).")
]
HubOption = Annotated[str, typer.Option(help="The hub's API, e.g. https://hub.example:8443")]
TokenFileOption = Annotated[
    Path, typer.Option(help="API key with read:telemetry and write:signals, one line.")
]
CaFileOption = Annotated[Path | None, typer.Option(help="CA bundle for the hub's TLS certificate.")]


def run(
    signal: SignalOption,
    hub: HubOption,
    token_file: TokenFileOption,
    net: Annotated[Path, typer.Option(help="The SUMO .net.xml holding the traffic light.")],
    tls: Annotated[str, typer.Option(help="The traffic light's id in SUMO.")],
    sumo_port: Annotated[int, typer.Option(help="SUMO's TraCI port (SUMO started with --num-clients).")],
    sumo_order: Annotated[int, typer.Option(help="This client's order in SUMO's step.")] = 2,
    timing: Annotated[
        Path | None, typer.Option(help='JSON: {"default": {...}, "phases": {"2": {...}}} in seconds.')
    ] = None,
    ca_file: CaFileOption = None,
    seconds: Annotated[float | None, typer.Option(help="Stop after this many simulated seconds.")] = None,
) -> None:
    """Run the controller until SUMO ends; print a JSON summary. Exit 3 if the conflict monitor trips."""
    setup_logging("INFO")
    stop = threading.Event()
    for sig in (os_signal.SIGTERM, os_signal.SIGINT):
        os_signal.signal(sig, lambda *_: stop.set())
    try:
        summary = run_on_sumo(
            _settings(signal, hub, token_file, net, tls, sumo_port, sumo_order, timing, ca_file, seconds),
            stop,
        )
    except RoadsideError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    body = asdict(summary)
    body.pop("latencies_ms")
    typer.echo(json.dumps(body, default=str))
    if summary.tripped:
        raise typer.Exit(3)


def _settings(
    signal: str,
    hub: str,
    token_file: Path,
    net: Path,
    tls: str,
    sumo_port: int,
    sumo_order: int,
    timing: Path | None,
    ca_file: Path | None,
    seconds: float | None,
) -> ControllerSettings:
    return ControllerSettings(
        signal=signal,
        hub_url=hub,
        token=_secret(token_file, "the API key with write:signals"),
        net=net,
        tls=tls,
        sumo_port=sumo_port,
        sumo_order=sumo_order,
        ca_file=ca_file,
        timing=TimingFile.load(timing),
        max_ticks=round(seconds * 10) if seconds is not None else None,
    )


def relay(
    signal: SignalOption,
    hub: HubOption,
    token_file: TokenFileOption,
    cabinet: Annotated[str, typer.Option(help="The cabinet controller's SNMP agent, HOST or HOST:PORT.")],
    write_community_file: Annotated[
        Path, typer.Option(help="The cabinet's SNMP v2c write community, one line (a secret).")
    ],
    community: Annotated[str, typer.Option(help="The cabinet's SNMP v2c read community.")] = "public",
    max_phases: Annotated[
        int | None, typer.Option(help="Phases to drive; default: the cabinet's maxPhases.")
    ] = None,
    refresh: Annotated[
        float,
        typer.Option(help="Rewrite every call at least this often (s), below the cabinet's backup time."),
    ] = 1.0,
    ca_file: CaFileOption = None,
    seconds: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
) -> None:
    """Place Roadside's detector calls in a cabinet controller over NTCIP 1202 and log its phases."""
    setup_logging("INFO")
    stop = threading.Event()
    for sig in (os_signal.SIGTERM, os_signal.SIGINT):
        os_signal.signal(sig, lambda *_: stop.set())
    host, _, port = cabinet.rpartition(":") if cabinet.count(":") == 1 else (cabinet, "", "")
    try:
        summary = run_relay(
            RelaySettings(
                signal=signal,
                hub_url=hub,
                token=_secret(token_file, "the API key with write:signals"),
                cabinet_host=host or cabinet,
                cabinet_port=_port(port) if port else 161,
                community=community,
                write_community=_secret(write_community_file, "the SNMP write community"),
                max_phases=max_phases,
                refresh_s=refresh,
                ca_file=ca_file,
                max_ticks=round(seconds * 10) if seconds is not None else None,
            ),
            stop,
        )
    except RoadsideError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(asdict(summary)))


def _port(text: str) -> int:
    if not text.isdigit():
        raise typer.BadParameter(f"{text!r} is not a port number", param_hint="--cabinet")
    return int(text)


def _secret(path: Path, what: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the file {path} with {what}: {exc.strerror}") from exc
    if not value:
        raise ConfigError(f"{path} is empty: put {what} in it")
    return value


app = typer.Typer(no_args_is_help=True, help="Drive a traffic signal from Roadside's detector calls.")
app.command("run")(run)
app.command("relay")(relay)


@app.callback()
def signal_group() -> None:
    """Drive a traffic signal from Roadside's detector calls (a group, so ``run`` keeps its name)."""
