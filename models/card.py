"""Model cards: lineage, held-out metrics and their rendering (pure; no torch, no onnxruntime).

A retrained model ships with ``card.json`` (machine-readable, the same
evaluation summary the registry stores at publish time, so the publish gate
compares like with like) and ``MODEL_CARD.md`` (for people). The lineage
says exactly what went in: the dataset name, version and manifest digest,
the parent model's name, version and sha256, the code version and the
training settings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .evaluate import CONDITIONS, EvalReport

__all__ = [
    "CARD_FORMAT",
    "CodeVersion",
    "DatasetRef",
    "Lineage",
    "ModelCard",
    "ParentRef",
    "Variant",
    "git_commit",
    "render_markdown",
    "summarise",
]

CARD_FORMAT = 1
_SHA_RE = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class DatasetRef:
    """The dataset version a model learned from."""

    name: str
    version: int
    digest: str  # sha256 of the canonical manifest
    samples: int


@dataclass(frozen=True)
class ParentRef:
    """The model a fine-tune started from."""

    sha256: str
    name: str | None = None  # None when given as a file rather than a registry entry
    version: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class CodeVersion:
    package: str
    git_commit: str | None = None


@dataclass(frozen=True)
class Lineage:
    dataset: DatasetRef
    parent: ParentRef
    code: CodeVersion
    training: Mapping[str, Any]  # the fine-tune settings and run statistics
    started_at: str  # ISO 8601, UTC
    finished_at: str


@dataclass(frozen=True)
class Variant:
    """One exported file of the model (fp32, fp16, int8) and its held-out figures."""

    kind: str
    file: str
    sha256: str
    size_bytes: int
    evaluation: Mapping[str, Any]  # a :func:`summarise` result
    parity_max_abs_diff: float | None = None  # fp32 only: against PyTorch


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    lineage: Lineage
    variants: Sequence[Variant] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        """``card.json``."""
        return {"format": CARD_FORMAT, **asdict(self)}


def summarise(reports: Mapping[str, EvalReport], frames: int) -> dict[str, Any]:
    """The evaluation summary stored in card.json and the registry: per condition, the gate's inputs and more."""
    return {
        "heldout": "roadside.models.evaluate.heldout_frames",
        "frames_per_condition": frames,
        "conditions": {
            name: {
                "map50": round(r.map50, 4),
                "count_mae": round(r.count_mae, 4),
                "count_rel_error": round(r.count_rel_error, 4),
                "recall": {k: round(v, 4) for k, v in r.recall.items()},
                "ap50": {k: round(v, 4) for k, v in r.ap50.items()},
                "objects": r.objects,
            }
            for name, r in reports.items()
        },
    }


def git_commit(root: Path) -> str | None:
    """The checked-out commit, read from ``.git`` without running git; None outside a checkout."""
    git = root / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head if _SHA_RE.fullmatch(head) else None
        ref = head.removeprefix("ref: ")
        loose = git / ref
        if loose.is_file():
            sha = loose.read_text().strip()
            return sha if _SHA_RE.fullmatch(sha) else None
        for line in (git / "packed-refs").read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref and _SHA_RE.fullmatch(sha):
                return sha
    except OSError:
        return None
    return None


def _condition_label(name: str) -> str:
    c = CONDITIONS.get(name)
    if c is None:
        return name
    weather = [f"rain {c.rain:g}"] if c.rain else []
    weather += [f"fog {c.fog:g}"] if c.fog else []
    return f"{name} (light {c.light:g}{', ' + ', '.join(weather) if weather else ''})"


def _metrics_table(variants: Sequence[Variant]) -> list[str]:
    names = list(variants[0].evaluation["conditions"]) if variants else []
    lines = [
        "| variant | condition | mAP@0.5 | recall car / truck / pedestrian / cyclist | count MAE/frame |",
        "| --- | --- | --- | --- | --- |",
    ]
    for v in variants:
        for name in names:
            m = v.evaluation["conditions"].get(name)
            if m is None:
                continue
            recall = " / ".join(f"{x:.3f}" for x in m["recall"].values())
            lines.append(
                f"| {v.kind} | {_condition_label(name)} | {m['map50']:.3f} | {recall} | {m['count_mae']:.2f} |"
            )
    return lines


def render_markdown(card: ModelCard) -> str:
    """``MODEL_CARD.md``."""
    lin = card.lineage
    parent = lin.parent
    parent_name = f"{parent.name} {parent.version}" if parent.name else (parent.path or "a file")
    frames = card.variants[0].evaluation.get("frames_per_condition") if card.variants else None
    lines = [
        f"# Model card: {card.name} {card.version}",
        "",
        "A fine-tune of a published Roadside detector (`models/finetune.py`); the",
        "architecture, input and output are those of `models/MODEL_CARD.md`.",
        "",
        "## Lineage",
        "",
        "| | |",
        "| --- | --- |",
        f"| dataset | `{lin.dataset.name}` v{lin.dataset.version}, {lin.dataset.samples} labelled samples |",
        f"| dataset digest | `{lin.dataset.digest}` |",
        f"| parent model | {parent_name}, sha256 `{parent.sha256}` |",
        f"| code | roadside {lin.code.package}, commit `{lin.code.git_commit or 'unknown'}` |",
        f"| trained | {lin.started_at} → {lin.finished_at} |",
        "",
        "Training settings:",
        "",
        *(f"- `{k}`: {v}" for k, v in lin.training.items()),
        "",
        "## Files",
        "",
        "| variant | file | bytes | sha256 | parity vs PyTorch |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {v.kind} | `{v.file}` | {v.size_bytes} | `{v.sha256[:16]}…` | "
            f"{'' if v.parity_max_abs_diff is None else f'{v.parity_max_abs_diff:.2g}'} |"
            for v in card.variants
        ),
        "",
        "## Evaluation",
        "",
        f"Fixed held-out sets (`roadside.models.evaluate.heldout_frames`, {frames} frames per condition);",
        "recall at confidence 0.25, count MAE = mean per frame of the sum over classes of",
        "|detected − true|.",
        "",
        *_metrics_table(card.variants),
        "",
        "## Limitations",
        "",
        "Everything in `models/MODEL_CARD.md` applies. A fine-tune on one condition",
        "is only as good as the samples it saw; check the table above for every",
        "condition, not just the new one.",
        "",
    ]
    return "\n".join(lines)
