"""``roadside signal map list|show|set|add|remove|controller``: channel maps in the hub's registry.

Each change is validated whole (``roadside.cloud.signals.channel_map``) and
audited with the operator's login; a malformed map or an unknown channel is
refused with the reason and exit status 2, and changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from roadside.cloud.cli_common import DEFAULT_HOME, HomeOption, RegistryUrlOption, actor, fail, open_registry
from roadside.shared.errors import ConfigError, RoadsideError

map_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Channel maps: detector channel <-> camera zone <-> phase.",
)

SignalArg = Annotated[str, typer.Argument(help="The signal's id.")]
KindOption = Annotated[Literal["vehicle", "pedestrian"], typer.Option(help="Vehicle or pedestrian detector.")]


def _echo_map(signal: str, home: Path, url: str | None) -> None:
    with open_registry(home, url) as registry:
        record = registry.signals.get(signal)
        if record is None:
            raise fail(ConfigError(f"unknown signal {signal!r}"))
        body = {"signal": record.signal_id, "name": record.name, "version": record.version,
                **record.channel_map.model_dump(mode="json", exclude_none=True)}  # fmt: skip
        typer.echo(json.dumps(body, indent=2))


@map_app.command("list")
def map_list(home: HomeOption = DEFAULT_HOME, registry_url: RegistryUrlOption = None) -> None:
    """Every signal with its map's version and channel count, one JSON object a line."""
    with open_registry(home, registry_url) as registry:
        for r in registry.signals.list():
            typer.echo(json.dumps({"signal": r.signal_id, "name": r.name, "version": r.version,
                                   "channels": len(r.channel_map.channels)}))  # fmt: skip


@map_app.command("show")
def map_show(
    signal: SignalArg, home: HomeOption = DEFAULT_HOME, registry_url: RegistryUrlOption = None
) -> None:
    """The signal's channel map as JSON (what ``set`` takes)."""
    _echo_map(signal, home, registry_url)


@map_app.command("set")
def map_set(
    signal: SignalArg,
    file: Annotated[Path, typer.Argument(help='JSON: {"channels": [...]} or the bare list.', exists=True)],
    name: Annotated[str | None, typer.Option(help="The signal's display name.")] = None,
    home: HomeOption = DEFAULT_HOME,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Replace the signal's whole channel map (creates the signal if new)."""
    from roadside.cloud.signals.channel_map import parse_channel_map

    try:
        channel_map = parse_channel_map(file.read_bytes())
    except (ConfigError, OSError) as exc:
        raise fail(exc if isinstance(exc, RoadsideError) else ConfigError(str(exc))) from exc
    with open_registry(home, registry_url) as registry:
        record = registry.signals.set_map(signal, channel_map, name=name, actor=actor())
    typer.echo(f"signal {signal}: channel map version {record.version}, {len(channel_map.channels)} channels")


@map_app.command("add")
def map_add(
    signal: SignalArg,
    channel: Annotated[int, typer.Option(help="Detector channel number.")],
    device: Annotated[str, typer.Option(help="The camera's device id.")],
    stream: Annotated[str, typer.Option(help="The camera's stream name on the device.")],
    zone: Annotated[str, typer.Option(help="The detector zone's name in the agent's config.")],
    phase: Annotated[int | None, typer.Option(help="The phase the channel calls.")] = None,
    approach: Annotated[str | None, typer.Option(help="north, east, ... or a name.")] = None,
    lane: Annotated[int | None, typer.Option(help="Lane number on the approach.")] = None,
    kind: KindOption = "vehicle",
    home: HomeOption = DEFAULT_HOME,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Add a channel, or replace the one with this number."""
    from pydantic import ValidationError

    from roadside.cloud.signals.channel_map import Channel, ChannelMap

    try:
        new = Channel(channel=channel, kind=kind, device=device, stream=stream, zone=zone, phase=phase,
                      approach=approach, lane=lane)  # fmt: skip
    except ValidationError as exc:
        raise fail(ConfigError(f"malformed channel: {exc.errors()[0]['msg']}")) from exc
    with open_registry(home, registry_url) as registry:
        record = registry.signals.get(signal)
        current = record.channel_map if record is not None else ChannelMap()
        updated = registry.signals.set_map(
            signal, current.with_channel(new), expect_version=record.version if record else 0, actor=actor()
        )
    typer.echo(f"signal {signal}: channel {channel} set, map version {updated.version}")


@map_app.command("remove")
def map_remove(
    signal: SignalArg,
    channel: Annotated[int, typer.Argument(help="Detector channel number.")],
    kind: KindOption = "vehicle",
    home: HomeOption = DEFAULT_HOME,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Remove one channel; an unknown channel is refused."""
    with open_registry(home, registry_url) as registry:
        record = registry.signals.get(signal)
        if record is None:
            raise fail(ConfigError(f"unknown signal {signal!r}"))
        smaller = record.channel_map.without(channel, kind)
        updated = registry.signals.set_map(signal, smaller, expect_version=record.version, actor=actor())
    typer.echo(f"signal {signal}: channel {channel} removed, map version {updated.version}")


@map_app.command("controller")
def map_controller(
    user: Annotated[str, typer.Argument(help="The controller's certificate name (its MQTT identity).")],
    signals: Annotated[
        list[str] | None, typer.Argument(help="Signals whose calls it may read; none: remove.")
    ] = None,
    home: HomeOption = DEFAULT_HOME,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Let a controller identity subscribe to these signals' call topics (broker ACL, reloaded at once)."""
    from roadside.cloud.broker.mosquitto import acl_lock, set_signal_controller
    from roadside.cloud.home import HubHome, reload_broker, write_acl

    hub_home = HubHome(home)
    try:
        with open_registry(home, registry_url) as registry:
            unknown = [s for s in signals or [] if registry.signals.get(s) is None]
            if unknown:
                raise ConfigError(f"unknown signal(s) {', '.join(unknown)}: set their channel maps first")
            with acl_lock(hub_home.broker_dir):
                set_signal_controller(hub_home.broker_dir, user, signals or [])
            write_acl(hub_home, registry)  # takes the lock itself
        reloaded = reload_broker(hub_home)
    except RoadsideError as exc:
        raise fail(exc) from exc
    where = "the broker reloaded it" if reloaded else "no broker runs from this home: reload yours"
    typer.echo(f"controller {user}: {', '.join(signals) if signals else 'no signals'} ({where})")
