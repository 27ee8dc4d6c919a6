"""``roadside dataset list|show|commit|export|import``: the hub's versioned hard-example datasets."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from cloud.cli import DEFAULT_HOME, HomeOption, _fail
from cloud.dataset.formats import Format, MergeMode, export, import_labels
from cloud.dataset.store import DatasetStore
from cloud.home import HubHome
from shared.dataset import DatasetManifest
from shared.errors import RoadsideError

dataset_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Hard examples and labels, as versioned datasets."
)

NameOption = Annotated[str, typer.Option("--name", help="The dataset (a folder under <home>/datasets).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]
VersionOption = Annotated[int | None, typer.Option("--version", help="A version (default: the latest).")]


@contextlib.contextmanager
def _dataset(home: Path, name: str) -> Iterator[DatasetStore]:
    """The dataset for one command: errors become a clear exit, the inbox is closed."""
    try:
        store = DatasetStore(HubHome(home).datasets_dir(name), name)
    except RoadsideError as exc:
        raise _fail(exc) from exc
    try:
        yield store
    except RoadsideError as exc:
        raise _fail(exc) from exc
    finally:
        store.close()


def _summary(manifest: DatasetManifest) -> dict[str, Any]:
    return {
        "name": manifest.name,
        "version": manifest.version,
        "parent": manifest.parent,
        "created_at": manifest.created_at.isoformat(),
        "digest": manifest.digest(),
        "samples": len(manifest.samples),
        "labelled": len(manifest.labelled()),
        "classes": list(manifest.classes),
        "note": manifest.note,
    }


def _line(summary: dict[str, Any]) -> str:
    return (
        f"v{summary['version']}\t{summary['created_at']}\t{summary['samples']} samples "
        f"({summary['labelled']} labelled)\t{summary['digest'][:12]}\t{summary['note']}"
    )


@dataset_app.command("list")
def dataset_list(
    home: HomeOption = DEFAULT_HOME, name: NameOption = "detector", as_json: JsonOption = False
) -> None:
    """Every version of the dataset, and what waits in its inbox."""
    with _dataset(home, name) as store:
        versions = [_summary(store.manifest(v)) for v in store.versions()]
        pending = len(store.pending())
    if as_json:
        typer.echo(json.dumps({"name": name, "versions": versions, "pending": pending}))
        return
    for summary in versions:
        typer.echo(_line(summary))
    typer.echo(f"{pending} sample(s) pending in the inbox" + ("" if versions else "; no versions yet"))


@dataset_app.command("show")
def dataset_show(
    home: HomeOption = DEFAULT_HOME,
    name: NameOption = "detector",
    version: VersionOption = None,
    as_json: JsonOption = False,
) -> None:
    """One version: its digest, classes, and samples by reason, device and class."""
    with _dataset(home, name) as store:
        manifest = store.manifest(version)
    summary = _summary(manifest)
    summary["by_reason"] = dict(Counter(r for s in manifest.samples for r in s.origin.reasons))
    summary["by_device"] = dict(Counter(s.origin.device_id or "import" for s in manifest.samples))
    summary["boxes_by_class"] = dict(Counter(b.cls for s in manifest.samples for b in s.labels or ()))
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(_line(summary))
    for key in ("classes", "by_reason", "by_device", "boxes_by_class"):
        typer.echo(f"{key}: {summary[key]}")


@dataset_app.command("commit")
def dataset_commit(
    home: HomeOption = DEFAULT_HOME,
    name: NameOption = "detector",
    note: Annotated[str, typer.Option(help="Why this version exists.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Make a new immutable version: the latest one plus everything pending in the inbox."""
    with _dataset(home, name) as store:
        manifest = store.commit(note)
    summary = _summary(manifest)
    typer.echo(json.dumps(summary) if as_json else f"committed {_line(summary)}")


@dataset_app.command("export")
def dataset_export(
    out: Annotated[Path, typer.Option("--out", help="A new (or empty) folder to write.")],
    fmt: Annotated[Format, typer.Option("--format", help="coco or yolo.")],
    home: HomeOption = DEFAULT_HOME,
    name: NameOption = "detector",
    version: VersionOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write a version as COCO or YOLO (images named by their hash), e.g. for CVAT."""
    with _dataset(home, name) as store:
        manifest = store.manifest(version)
        export(store, manifest, fmt, out)
    result = {"version": manifest.version, "format": fmt, "out": str(out), "images": len(manifest.samples)}
    typer.echo(
        json.dumps(result)
        if as_json
        else f"exported v{manifest.version} ({len(manifest.samples)} images) to {out}"
    )


@dataset_app.command("import")
def dataset_import(
    path: Annotated[Path, typer.Argument(help="COCO: the instances JSON. YOLO: the folder.")],
    fmt: Annotated[Format, typer.Option("--format", help="coco or yolo.")],
    images: Annotated[
        Path | None, typer.Option("--images", help="Where new images are (default: beside the labels).")
    ] = None,
    mode: Annotated[
        MergeMode, typer.Option(help="replace: imported boxes win; merge: add missing ones.")
    ] = "replace",
    note: Annotated[str, typer.Option(help="Why this version exists.")] = "",
    home: HomeOption = DEFAULT_HOME,
    name: NameOption = "detector",
    as_json: JsonOption = False,
) -> None:
    """Read labels back (from CVAT or any tool) as a new version; nothing is written if any line is bad."""
    with _dataset(home, name) as store:
        manifest = import_labels(store, fmt, path, images, mode, note)
    summary = _summary(manifest)
    typer.echo(json.dumps(summary) if as_json else f"imported as {_line(summary)}")
