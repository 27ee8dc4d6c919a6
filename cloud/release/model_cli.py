"""``roadside model train|publish|list|repo init``: retrain, gate and publish detectors.

Thin: datasets come through ``roadside.shared.dataset``, training and the card from
``roadside.models.retrain``, the verdict from ``roadside.cloud.release.gate``, signing from
``roadside.cloud.release.repository``. Training needs the ``train`` extra (torch).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from roadside.cloud.cli_common import DEFAULT_HOME, HomeOption, actor
from roadside.shared.errors import ConfigError, RoadsideError

if TYPE_CHECKING:
    import torch

    from roadside.cloud.home import HubHome
    from roadside.cloud.registry import Registry
    from roadside.models.card import ParentRef

log = logging.getLogger(__name__)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]
EvalFramesOption = Annotated[int, typer.Option(min=8, help="Held-out frames per condition.")]
ConditionsOption = Annotated[
    str,
    typer.Option(
        help="Held-out conditions: synthetic, sumo (SUMO's cameras; the sim extra), all, or a comma list "
        "(day,dusk,night,rain,fog,sumo-day,sumo-night)."
    ),
]

model_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Retrain, gate and publish models.")
repo_app = typer.Typer(no_args_is_help=True, add_completion=False, help="The hub's TUF model repository.")
model_app.add_typer(repo_app, name="repo")


@contextmanager
def _errors() -> Iterator[None]:
    """Roadside errors become one line on stderr and exit status 2."""
    try:
        yield
    except RoadsideError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@contextmanager
def _registry(home: HubHome) -> Iterator[Registry]:
    from roadside.cloud.registry import Registry

    registry = Registry(home.registry_url)
    try:
        registry.create_schema()  # idempotent: a fresh home has no tables yet
        yield registry
    finally:
        registry.close()


def _split(spec: str, what: str) -> tuple[str, str | None]:
    name, sep, version = spec.partition(":")
    if not name or (sep and not version):
        raise ConfigError(f"{what} {spec!r}: expected NAME or NAME:VERSION")
    return name, version or None


# repo init ---------------------------------------------------------------------


@repo_app.command("init")
def repo_init(
    home: HomeOption = DEFAULT_HOME,
    root_keys: Annotated[
        Path | None,
        typer.Option(help="Offline directory for the root keys (default: <home>/release/DEMO-root-keys)."),
    ] = None,
    keys: Annotated[int, typer.Option(min=1, help="Number of root keys.")] = 3,
    threshold: Annotated[int, typer.Option(min=1, help="Root signatures needed.")] = 2,
) -> None:
    """Create the hub's TUF model repository, its online keys, and new root keys (offline)."""
    from roadside.cloud.home import HubHome
    from roadside.cloud.release import keys as tuf_keys
    from roadside.cloud.release.repository import ModelRepository

    hub = HubHome(home)
    with _errors():
        if hub.has_repository():
            raise ConfigError(f"{hub.repository_dir} already holds a model repository")
        if threshold > keys:
            raise ConfigError(f"threshold {threshold} is more than the {keys} root keys")
        offline = root_keys or hub.root / "release" / "DEMO-root-keys"
        if root_keys is None:
            typer.echo(
                f"WARNING: root keys written to {offline}, next to the hub. That is for a demo "
                "only: in production pass --root-keys on removable media and keep it offline.",
                err=True,
            )
        signers = tuf_keys.generate_root_keys(offline, keys)
        with _registry(hub) as registry:
            ModelRepository.create(
                hub.repository_dir,
                hub.online_keys_dir,
                root_keys=tuf_keys.public_keys(signers),
                threshold=threshold,
                root_signers=signers[:threshold],
                audit=registry.audit,
                actor=actor(),
            )
    typer.echo(f"model repository at {hub.repository_dir}; root keys ({threshold} of {keys}) in {offline}")


# train -------------------------------------------------------------------------


def _resolve_parent(hub: HubHome, spec: str) -> tuple[Path, ParentRef]:
    from roadside.cloud.release.publishing import latest_published, published_file
    from roadside.models.card import ParentRef
    from roadside.models.retrain import file_sha256

    if spec.endswith(".onnx"):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"parent model {path} does not exist")
        return path, ParentRef(sha256=file_sha256(path), path=str(path))
    name, version = _split(spec, "--parent")
    with _registry(hub) as registry:
        record = registry.models.get(name, version) if version else latest_published(registry, name)
    if record is None:
        raise ConfigError(f"parent model {spec} is not in the registry; `roadside model list` shows what is")
    path = published_file(hub, record)
    if file_sha256(path) != record.sha256:
        raise ConfigError(f"{path} does not match the registry's sha256 for {name} {record.version}")
    return path, ParentRef(sha256=record.sha256, name=name, version=record.version, path=str(path))


def _pick_device(choice: str) -> torch.device:
    import torch

    if choice not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, not {choice!r}")
    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise ConfigError("--device cuda, but torch sees no CUDA device")
    if choice == "cpu" or not cuda:
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


@contextmanager
def _distributed(device: torch.device) -> Iterator[int]:
    """Under ``torchrun`` (WORLD_SIZE > 1) join the process group; yields this process's rank.

    Not exercised by the test suite (one CPU box): NCCL on CUDA, Gloo on CPU.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield 0
        return
    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank()
    finally:
        dist.destroy_process_group()


@model_app.command("train")
def train(
    dataset: Annotated[str, typer.Option(help="NAME[:VERSION] of a hub dataset (latest version if none).")],
    parent: Annotated[str, typer.Option(help="NAME[:VERSION] from the registry, or a PATH.onnx.")],
    out: Annotated[Path, typer.Option(help="Folder for the ONNX files and the model card.")],
    home: HomeOption = DEFAULT_HOME,
    dataset_dir: Annotated[Path | None, typer.Option(help="Dataset folder (default: the hub's).")] = None,
    version: Annotated[str, typer.Option(help="Model version written into the ONNX metadata.")] = "0.2.0",
    steps: Annotated[int | None, typer.Option(min=1, help="Fixed step count (default 100).")] = None,
    seconds: Annotated[float | None, typer.Option(min=1, help="Time budget instead of --steps.")] = None,
    replay_share: Annotated[
        float | None,
        typer.Option(min=0, max=0.95, help="Share of ordinary scene frames (default: the recipe's 0.85)."),
    ] = None,
    repeat_threshold: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="Oversample the dataset's frames of rare classes: a class in a share f < T of the frames"
            " repeats them sqrt(T/f) times (repeat-factor sampling; 0: off).",
        ),
    ] = 0.0,
    seed: int = 0,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for torch.")] = 2,
    fp16: Annotated[bool, typer.Option(help="Also write and evaluate an FP16 variant.")] = False,
    int8: Annotated[bool, typer.Option(help="Also write and evaluate an INT8 variant.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    eval_frames: EvalFramesOption = 160,
    conditions: ConditionsOption = "synthetic",
    as_json: JsonOption = False,
) -> None:
    """Fine-tune a published detector on a dataset version; export, evaluate and write its model card."""
    from roadside.cloud.home import HubHome
    from roadside.models.card import DatasetRef
    from roadside.models.evaluate import parse_conditions
    from roadside.models.finetune import FinetuneConfig, samples_from_manifest
    from roadside.models.retrain import RetrainRequest, retrain
    from roadside.shared.dataset import load_manifest

    hub = HubHome(home)
    with _errors():
        if steps is not None and seconds is not None:
            raise ConfigError("give --steps or --seconds, not both")
        heldout = parse_conditions(conditions)
        name, ds_version = _split(dataset, "--dataset")
        folder = dataset_dir or hub.datasets_dir(name)
        manifest = load_manifest(folder, int(ds_version) if ds_version and ds_version.isdigit() else None)
        if ds_version is not None and not ds_version.isdigit():
            raise ConfigError(f"dataset version {ds_version!r} must be a number")
        frames = samples_from_manifest(folder, manifest)
        parent_path, parent_ref = _resolve_parent(hub, parent)
        config = FinetuneConfig(
            steps=None if seconds is not None else (steps or FinetuneConfig.steps),
            seconds=seconds or FinetuneConfig.seconds,
            replay_share=FinetuneConfig.replay_share if replay_share is None else replay_share,
            repeat_threshold=repeat_threshold,
            seed=seed,
            threads=threads,
        )
        request = RetrainRequest(
            parent_path=parent_path,
            parent=parent_ref,
            dataset=DatasetRef(manifest.name, manifest.version, manifest.digest(), len(frames)),
            out_dir=out,
            version=version,
            finetune=config,
            fp16=fp16,
            int8=int8,
            eval_frames=eval_frames,
            conditions=heldout,
        )
        torch_device = _pick_device(device)
        with _distributed(torch_device) as rank:
            card = retrain(request, frames, torch_device, export=rank == 0)
    if card is None:
        return
    if as_json:
        typer.echo(json.dumps(card.as_dict()))
        return
    for variant in card.variants:
        figures = ", ".join(f"{c} {m['map50']:.3f}" for c, m in variant.evaluation["conditions"].items())
        typer.echo(f"{variant.kind} {out / variant.file}: mAP@0.5 {figures}")
    typer.echo(f"model card: {out / 'MODEL_CARD.md'}")


# publish -----------------------------------------------------------------------


def _scores_line(summary: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{c} {m['map50']:.3f} (count MAE {m['count_mae']:.2f})" for c, m in summary["conditions"].items()
    )


@model_app.command("publish")
def publish(
    path: Annotated[Path, typer.Argument(help="The candidate ONNX file.", exists=True, dir_okay=False)],
    version: Annotated[str, typer.Option(help="Version to publish it as.")],
    home: HomeOption = DEFAULT_HOME,
    name: Annotated[str, typer.Option(help="Model name.")] = "detector",
    parent: Annotated[str | None, typer.Option(help="Version it was trained from (lineage).")] = None,
    force: Annotated[bool, typer.Option(help="Publish even if the gate refuses (needs --reason).")] = False,
    reason: Annotated[str | None, typer.Option(help="Why the gate is overridden (audited).")] = None,
    min_gain: Annotated[float, typer.Option(help="Mean mAP@0.5 gain required.")] = 0.01,
    min_agent_version: Annotated[str, typer.Option(help="Oldest agent that can run it.")] = "0.1.0",
    eval_frames: EvalFramesOption = 160,
    conditions: ConditionsOption = "synthetic",
    as_json: JsonOption = False,
) -> None:
    """Evaluate a candidate against the published model; sign and record it only if it is better."""
    from roadside.cloud.home import HubHome
    from roadside.cloud.release.publishing import publish_candidate
    from roadside.models.evaluate import parse_conditions

    hub = HubHome(home)
    with _errors(), _registry(hub) as registry:
        outcome = publish_candidate(
            hub,
            registry,
            path,
            name=name,
            version=version,
            actor=actor(),
            parent=parent,
            force=force,
            reason=reason,
            min_gain=min_gain,
            min_agent_version=min_agent_version,
            eval_frames=eval_frames,
            conditions=parse_conditions(conditions),
        )
    decision = outcome.decision
    if outcome.record is None:
        typer.echo(
            f"refused: {name} {version} does not beat {name} {outcome.current_version or '-'}: "
            f"{decision.reason}\n  candidate: {_scores_line(outcome.candidate)}\n"
            f"  current:   {_scores_line(outcome.current or {'conditions': {}})}",
            err=True,
        )
        raise typer.Exit(1)
    if outcome.forced:
        typer.echo(f"WARNING: publishing despite the gate ({decision.reason}); audited", err=True)
    record = outcome.record
    result = {
        "published": f"{record.name} {record.version}",
        "sha256": record.sha256,
        "transfers": _transfers(record.metadata),
        **decision.as_dict(),
    }
    typer.echo(json.dumps(result) if as_json else f"published {name} {version}: {decision.reason}")


def _transfers(metadata: Mapping[str, Any]) -> list[str]:
    """The forms signed beside the model (``zstd``, ``zstd-patch``; ADR 0027), as the release listed them."""
    entries = metadata.get("transfers")
    return (
        [str(t.get("encoding")) for t in entries if isinstance(t, Mapping)]
        if isinstance(entries, list)
        else []
    )


@model_app.command("list")
def list_models(
    home: HomeOption = DEFAULT_HOME,
    name: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Models in the registry, oldest first, with their held-out mean mAP@0.5."""
    from roadside.cloud.home import HubHome

    with _errors(), _registry(HubHome(home)) as registry:
        models = registry.models.list(name)
    rows: list[dict[str, Any]] = []
    for m in models:
        evaluation = m.metadata.get("evaluation")
        conditions = evaluation.get("conditions", {}) if isinstance(evaluation, Mapping) else {}
        rows.append({
            "name": m.name,
            "version": m.version,
            "parent": m.parent,
            "status": m.status,
            "sha256": m.sha256,
            "created_at": m.created_at.isoformat(),
            "map50": {c: v.get("map50") for c, v in conditions.items()},
            "transfers": _transfers(m.metadata),
        })  # fmt: skip
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        scores = " ".join(f"{c}={v:.3f}" for c, v in r["map50"].items() if isinstance(v, float))
        typer.echo(f"{r['name']}\t{r['version']}\tparent={r['parent'] or '-'}\t{r['status']}\t{scores}")
