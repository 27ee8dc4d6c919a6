"""``roadside deadletters list|show|redrive``: the messages ingest refused, and a second chance."""

from __future__ import annotations

import contextlib
import getpass
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from roadside.cloud.cli_common import DEFAULT_HOME, HomeOption
from roadside.shared.errors import RoadsideError

if TYPE_CHECKING:
    from roadside.cloud.ingest.deadletter import DeadLetter, DeadLetterStore
    from roadside.shared.keys import PublicKeys

deadletters_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Messages ingest refused: inspect and re-drive them."
)

ReasonFilter = Annotated[str | None, typer.Option(help="Only letters refused for this reason.")]
DeviceFilter = Annotated[str | None, typer.Option("--device", help="Only letters of this device.")]


@contextlib.contextmanager
def _letters(home: Path) -> Iterator[DeadLetterStore]:
    from roadside.cloud.home import HubHome
    from roadside.cloud.ingest.deadletter import DeadLetterStore

    path = HubHome(home).dead_letters_db
    if not path.exists():
        typer.echo(f"error: no dead-letter store at {path}", err=True)
        raise typer.Exit(2)
    store = DeadLetterStore(path)
    try:
        yield store
    finally:
        store.close()


def _row(letter: DeadLetter) -> dict[str, object]:
    return {
        "id": letter.id,
        "received": datetime.fromtimestamp(letter.received_ms / 1000, UTC).isoformat(),
        "topic": letter.topic,
        "device": letter.device_id,
        "reason": letter.reason,
        "detail": letter.detail,
        "size": letter.size,
        "kept": len(letter.payload),
        "redriven": letter.redrive_outcome,
    }


@deadletters_app.command("list")
def deadletters_list(
    home: HomeOption = DEFAULT_HOME,
    reason: ReasonFilter = None,
    device: DeviceFilter = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """The newest dead letters first."""
    with _letters(home) as letters:
        found = letters.recent(limit, reason=reason, device_id=device)
        evicted = letters.evicted
    for letter in found:
        row = _row(letter)
        if as_json:
            typer.echo(json.dumps(row))
        else:
            outcome = f"  [{row['redriven']}]" if row["redriven"] else ""
            typer.echo(
                f"{letter.id:>8}  {row['received']}  {letter.reason:<16} {letter.device_id or '-':<20}"
                f" {letter.size:>7} B  {letter.detail[:80]}{outcome}"
            )
    if evicted and not as_json:
        typer.echo(f"({evicted} older letters were evicted to keep the store within its cap)")


@deadletters_app.command("show")
def deadletters_show(
    letter_id: int,
    home: HomeOption = DEFAULT_HOME,
    payload_out: Annotated[Path | None, typer.Option(help="Write the message's bytes to this file.")] = None,
) -> None:
    """One letter: why it was refused, its clear envelope header, and optionally its bytes."""
    from roadside.shared.envelope import parse
    from roadside.shared.errors import IntegrityError

    with _letters(home) as letters:
        letter = letters.get(letter_id)
    if letter is None:
        typer.echo(f"error: no dead letter {letter_id}", err=True)
        raise typer.Exit(2)
    row = _row(letter)
    try:
        header = parse(letter.payload).header
        row["header"] = {
            "device": header.device_id,
            "kind": header.kind,
            "seq": header.seq,
            "ts_ms": header.ts_ms,
        }
    except IntegrityError as exc:
        row["header"] = f"unreadable: {exc}"
    typer.echo(json.dumps(row, indent=2))
    if payload_out is not None:
        payload_out.write_bytes(letter.payload)
        typer.echo(f"wrote {len(letter.payload)} bytes to {payload_out}")


@deadletters_app.command("redrive")
def deadletters_redrive(
    letter_ids: Annotated[list[int] | None, typer.Argument(help="Letter ids (or use the filters).")] = None,
    home: HomeOption = DEFAULT_HOME,
    config: Annotated[Path | None, typer.Option(help="The hub's config (for its store).")] = None,
    reason: ReasonFilter = None,
    device: DeviceFilter = None,
    all_pending: Annotated[
        bool, typer.Option("--all", help="Every letter not yet stored by a re-drive (with the filters).")
    ] = False,
) -> None:
    """Run letters through ingest again (after enrolling a device, fixing the store...); audited."""
    if not letter_ids and not (all_pending or reason or device):
        typer.echo("error: name letter ids, or choose them with --reason, --device or --all", err=True)
        raise typer.Exit(2)
    try:
        summary = _redrive(home, config, letter_ids or [], reason, device)
    except RoadsideError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(summary))


def _redrive(
    home: Path, config: Path | None, letter_ids: list[int], reason: str | None, device: str | None
) -> dict[str, object]:
    from roadside.cloud.dataset.store import DatasetStore
    from roadside.cloud.home import HubHome
    from roadside.cloud.ingest.core import Accepted, IngestCore
    from roadside.cloud.ingest.redrive import Redriver
    from roadside.cloud.registry import Registry
    from roadside.cloud.settings import load_hub_settings
    from roadside.cloud.storage.adapters import open_store
    from roadside.shared.envelope import HubOpener

    settings = load_hub_settings(config, home=home)
    hub_home = HubHome(settings.home)
    registry = Registry(settings.registry_url or hub_home.registry_url)
    store = open_store(settings.store, hub_home)
    datasets = DatasetStore(hub_home.datasets_dir())

    def lookup(device_id: str, kid: str) -> PublicKeys | None:
        found = registry.devices.key(device_id, kid)
        return None if found is None else found[1]

    def site_of(device_id: str) -> str | None:
        found = registry.devices.get(device_id)
        return None if found is None else found.site

    def samples(accepted: list[Accepted]) -> None:
        for result in accepted:
            datasets.add_report(result.header.device_id, result.samples)

    opener = HubOpener([hub_home.hub_keys()], lookup, max_age_s=settings.max_message_age_s)
    try:
        with _letters(home) as letters:
            ids = letter_ids or letters.pending(reason=reason, device_id=device)
            report = Redriver(letters, IngestCore(opener, site_of), store, on_stored=samples).redrive(ids)
        summary = report.summary()
        registry.audit.append(
            f"cli:{getpass.getuser()}", "deadletters.redrive", "dead-letters", {"ids": ids[:1000], **summary}
        )
        return summary
    finally:
        datasets.close()
        store.close()
        registry.close()
