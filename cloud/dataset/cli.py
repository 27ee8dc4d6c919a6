"""``roadside dataset list|show|commit|export|import|review|trust|policy``: the hub's versioned datasets.

``review``, ``trust`` and ``policy`` decide which labels from the field may train a
model (:mod:`roadside.cloud.dataset.trust`); each change is written to the hub's audit log
before it is made, so a refused audit write changes nothing.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from roadside.cloud.cli_common import DEFAULT_HOME, HomeOption, actor, fail, open_registry
from roadside.cloud.dataset.formats import Format, MergeMode, export, import_labels
from roadside.cloud.dataset.store import DatasetStore
from roadside.cloud.dataset.trust import InboxEntry, Review, check_share
from roadside.cloud.home import HubHome
from roadside.shared.dataset import DatasetManifest
from roadside.shared.errors import ConfigError, RoadsideError

dataset_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Hard examples and labels, as versioned datasets."
)

NameOption = Annotated[str, typer.Option("--name", help="The dataset (a folder under <home>/datasets).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]
VersionOption = Annotated[int | None, typer.Option("--version", help="A version (default: the latest).")]
NoteOption = Annotated[str, typer.Option("--note", help="Why, for the audit log.")]

review_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Labelled samples from devices, held until an operator approves them.",
)
trust_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Devices whose labels are admitted without review (still under the per-device cap).",
)
dataset_app.add_typer(review_app, name="review")
dataset_app.add_typer(trust_app, name="trust")


@contextlib.contextmanager
def _dataset(home: Path, name: str) -> Iterator[DatasetStore]:
    """The dataset for one command: errors become a clear exit, the inbox is closed."""
    try:
        store = DatasetStore(HubHome(home).datasets_dir(name), name)
    except RoadsideError as exc:
        raise fail(exc) from exc
    try:
        yield store
    except RoadsideError as exc:
        raise fail(exc) from exc
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
        selection = store.selection()
    held = selection.held_counts()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "name": name,
                    "versions": versions,
                    "pending": pending,
                    "admitted": len(selection.taken),
                    "held": held,
                }
            )
        )
        return
    for summary in versions:
        typer.echo(_line(summary))
    typer.echo(
        f"{pending} sample(s) pending in the inbox, {len(selection.taken)} admitted to the next version"
        + "".join(f", {n} held ({reason})" for reason, n in held.items())
        + ("" if versions else "; no versions yet")
    )


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


# -- review, trust, policy ----------------------------------------------------------------


def _entry(store: DatasetStore, entry: InboxEntry) -> dict[str, Any]:
    sample = entry.sample
    return {
        "seq": entry.seq,
        "device_id": entry.device_id,
        "sample_id": sample.origin.sample_id,
        "captured_at": sample.origin.captured_at.isoformat() if sample.origin.captured_at else None,
        "reasons": list(sample.origin.reasons),
        "boxes": dict(Counter(b.cls for b in sample.labels or ())),
        "review": entry.review,
        "image": str(store.object_path(sample)),
    }


def _audit(home: Path, action: str, subject: str, details: dict[str, Any]) -> None:
    with open_registry(home) as registry:
        registry.record_audit(actor(), action, subject, details)


@review_app.command("list")
def review_list(
    home: HomeOption = DEFAULT_HOME,
    name: NameOption = "detector",
    device: Annotated[str | None, typer.Option("--device", help="Only this device's samples.")] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also samples already approved or rejected, not yet in a version.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Labelled samples from devices waiting in the inbox; open ``image`` to check the boxes."""
    with _dataset(home, name) as store:
        rows = [
            _entry(store, e)
            for e in store.inbox()
            if e.sample.labels is not None
            and (show_all or e.review is None)
            and (device is None or e.device_id == device)
        ]
        trusted = store.trust_policy().trusted
    for row in rows:
        row["device_trusted"] = row["device_id"] in trusted
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        state = row["review"] or ("trusted device" if row["device_trusted"] else "needs review")
        typer.echo(
            f"{row['seq']}\t{row['device_id']}\t{state}\t{row['captured_at']}\t{row['boxes']}\t{row['image']}"
        )
    typer.echo(f"{len(rows)} sample(s)")


def _decide(
    decision: Review, home: Path, name: str, seqs: list[int], device: str | None, note: str, as_json: bool
) -> None:
    if bool(seqs) == (device is not None):
        raise fail(ConfigError("name the samples by seq, or pass --device for all of one device's"))
    with _dataset(home, name) as store:
        targets = store.review_targets(seqs, device)
        if targets:
            _audit(
                home,
                f"dataset.review.{'approve' if decision == 'approved' else 'reject'}",
                name,
                {
                    "seqs": [e.seq for e in targets],
                    "sample_ids": [e.sample.origin.sample_id for e in targets],
                    "devices": sorted({e.device_id for e in targets}),
                    "note": note,
                },
            )
            store.set_review(targets, decision, actor())
    result = {"decision": decision, "seqs": [e.seq for e in targets]}
    typer.echo(json.dumps(result) if as_json else f"{decision} {len(targets)} sample(s)")


SeqsArgument = Annotated[list[int] | None, typer.Argument(help="Inbox seq numbers (from `review list`).")]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help="Every not yet reviewed sample of this device.")
]


@review_app.command("approve")
def review_approve(
    seqs: SeqsArgument = None,
    device: DeviceOption = None,
    note: NoteOption = "",
    home: HomeOption = DEFAULT_HOME,
    name: NameOption = "detector",
    as_json: JsonOption = False,
) -> None:
    """Admit labelled samples to the next version (and so to retraining)."""
    _decide("approved", home, name, seqs or [], device, note, as_json)


@review_app.command("reject")
def review_reject(
    seqs: SeqsArgument = None,
    device: DeviceOption = None,
    note: NoteOption = "",
    home: HomeOption = DEFAULT_HOME,
    name: NameOption = "detector",
    as_json: JsonOption = False,
) -> None:
    """Keep labelled samples out of every version (they stay in the inbox, marked rejected)."""
    _decide("rejected", home, name, seqs or [], device, note, as_json)


@trust_app.command("list")
def trust_list(
    home: HomeOption = DEFAULT_HOME, name: NameOption = "detector", as_json: JsonOption = False
) -> None:
    """Devices whose labels skip review, and the per-device cap."""
    with _dataset(home, name) as store:
        devices = store.trusted_devices()
        share = store.trust_policy().max_device_share
    rows = [
        {"device_id": d.device_id, "set_by": d.set_by, "set_at": d.set_at, "note": d.note} for d in devices
    ]
    if as_json:
        typer.echo(json.dumps({"trusted": rows, "max_device_share": share}))
        return
    for row in rows:
        typer.echo(f"{row['device_id']}\t{row['set_by']}\t{row['set_at']}\t{row['note']}")
    typer.echo(
        f"{len(rows)} trusted device(s); no device may hold more than {share:.0%} of a version's labels"
    )


def _trust(home: Path, name: str, device_id: str, trusted: bool, note: str) -> None:
    with _dataset(home, name) as store:
        already = device_id in store.trust_policy().trusted
        if already == trusted:
            typer.echo(f"{device_id} is already {'trusted' if trusted else 'not trusted'}")
            return
        _audit(
            home,
            "dataset.trust.set" if trusted else "dataset.trust.unset",
            name,
            {"device_id": device_id, "note": note},
        )
        store.set_trusted(device_id, trusted, actor(), note)
    typer.echo(f"{device_id} is {'now trusted' if trusted else 'no longer trusted'} in dataset {name}")


@trust_app.command("set")
def trust_set(
    device_id: Annotated[str, typer.Argument(help="The enrolled device.")],
    note: NoteOption = "",
    home: HomeOption = DEFAULT_HOME,
    name: NameOption = "detector",
) -> None:
    """Admit this device's labels without review (only for devices you control end to end)."""
    _trust(home, name, device_id, True, note)


@trust_app.command("unset")
def trust_unset(
    device_id: Annotated[str, typer.Argument(help="The device.")],
    note: NoteOption = "",
    home: HomeOption = DEFAULT_HOME,
    name: NameOption = "detector",
) -> None:
    """Send this device's labels back to review (its samples not yet in a version included)."""
    _trust(home, name, device_id, False, note)


@dataset_app.command("policy")
def dataset_policy(
    max_device_share: Annotated[
        float | None,
        typer.Option(
            help="The most one device may hold of a version's labelled samples, in (0, 1]; 1: no cap."
        ),
    ] = None,
    note: NoteOption = "",
    home: HomeOption = DEFAULT_HOME,
    name: NameOption = "detector",
    as_json: JsonOption = False,
) -> None:
    """Show the dataset's trust policy, or change its per-device cap."""
    with _dataset(home, name) as store:
        before = store.trust_policy().max_device_share
        if max_device_share is not None and max_device_share != before:
            check_share(max_device_share)
            _audit(
                home,
                "dataset.policy.set",
                name,
                {"max_device_share": [before, max_device_share], "note": note},
            )
            store.set_max_device_share(max_device_share)
        policy = store.trust_policy()
    result = {"max_device_share": policy.max_device_share, "trusted": sorted(policy.trusted)}
    typer.echo(
        json.dumps(result)
        if as_json
        else f"max device share {policy.max_device_share}; trusted: {result['trusted']}"
    )
