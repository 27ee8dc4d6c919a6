"""Publishing a candidate model: evaluate it and the published one, apply the gate, sign and record it.

The one path every publish takes (``roadside model publish`` and the hub's
retraining loop): the candidate and the latest published model of the same
name are scored on the fixed held-out set (:mod:`roadside.models.evaluate`), the pure
gate (:mod:`roadside.cloud.release.gate`) decides, a refusal is audited
(``model.publish.refused``), an override is audited (``model.publish.forced``,
with the reason), and a publish signs the file into the TUF repository and
records it with its scores, verdict and lineage.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from roadside.cloud.home import HubHome
from roadside.cloud.registry import ModelRecord, Registry
from roadside.cloud.release.gate import (
    DEFAULT_MIN_GAIN,
    PublishDecision,
    publish_decision,
    scores_from_summary,
)
from roadside.cloud.release.repository import ModelRepository, release_model, version_key
from roadside.shared.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishOutcome:
    decision: PublishDecision
    candidate: Mapping[str, Any]  # evaluation summary
    current: Mapping[str, Any] | None
    current_version: str | None
    record: ModelRecord | None  # None: refused
    forced: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "published": self.record is not None,
            "version": self.record.version if self.record else None,
            "current_version": self.current_version,
            "forced": self.forced,
            **self.decision.as_dict(),
        }


def latest_published(registry: Registry, name: str) -> ModelRecord | None:
    published = [m for m in registry.models.list(name) if m.status == "published"]
    return max(published, key=lambda m: version_key(m.version), default=None)


def published_file(home: HubHome, record: ModelRecord) -> Path:
    """The signed file of a registry model in the repository's targets (consistent-snapshot name)."""
    target = record.metadata.get("target_path")
    if not isinstance(target, str):
        raise ConfigError(f"model {record.name} {record.version} has no target in the repository")
    posix = PurePosixPath(target)
    path = home.repository_dir / "targets" / posix.parent / f"{record.sha256}.{posix.name}"
    if not path.is_file():
        raise ConfigError(f"model file {path} is missing from the repository")
    return path


def evaluation_summary(path: Path, frames: int, conditions: Sequence[str] | None = None) -> dict[str, Any]:
    """Scores on the fixed held-out conditions, every synthetic one by default (needs the train extra).

    SUMO's conditions (``sumo-day``, ``sumo-night``) also need the sim extra.
    """
    from roadside.models.card import summarise
    from roadside.models.evaluate import CONDITIONS, evaluate_onnx

    return summarise(evaluate_onnx(path, tuple(conditions or CONDITIONS), frames), frames)


def current_summary(
    home: HubHome, record: ModelRecord, frames: int, conditions: Sequence[str] | None = None
) -> dict[str, Any]:
    """The published model's stored held-out summary if it was taken the same way, else a fresh one.

    Fresh on ``conditions`` (the candidate's) and those it was judged on before when the
    stored scores lack any of them, so a candidate judged on SUMO's frames is compared with
    the published model on those too, and one not judged there is refused (the gate's
    "not evaluated on").
    """
    from roadside.models.evaluate import CONDITIONS

    wanted = set(conditions or CONDITIONS)
    stored = record.metadata.get("evaluation")
    comparable = (
        isinstance(stored, Mapping)
        and stored.get("frames_per_condition") == frames
        and isinstance(stored.get("conditions"), Mapping)
    )
    if not comparable:
        log.info("evaluating the published %s %s (no comparable stored scores)", record.name, record.version)
        return evaluation_summary(published_file(home, record), frames, sorted(wanted, key=_condition_order))
    assert isinstance(stored, Mapping)
    have = dict(stored["conditions"])
    # Where it was judged stays a bar: a candidate not scored there is refused by the gate.
    missing = sorted(wanted - set(have), key=_condition_order)
    if not missing:
        return dict(stored)
    log.info("evaluating the published %s %s on %s", record.name, record.version, ", ".join(missing))
    fresh = evaluation_summary(published_file(home, record), frames, missing)
    return {**stored, "conditions": {**have, **fresh["conditions"]}}


def _condition_order(name: str) -> tuple[int, str]:
    from roadside.models.evaluate import known_conditions

    known = known_conditions()
    return (known.index(name), name) if name in known else (len(known), name)


def lineage_of(path: Path) -> dict[str, Any]:
    """The lineage from a card.json next to the candidate, when there is one."""
    card = path.parent / "card.json"
    if not card.is_file():
        return {}
    try:
        lineage = json.loads(card.read_text())["lineage"]
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{card} is not a Roadside model card: {exc!r}") from exc
    return {"lineage": lineage} if isinstance(lineage, dict) else {}


def card_summary(path: Path, frames: int, conditions: Sequence[str] | None) -> dict[str, Any] | None:
    """The candidate's held-out scores from the card.json beside it, if they were taken the same way.

    Only when the card names this very file (its sha256), the same frames per condition
    and every condition asked for: ``roadside model train`` has just scored it, and scoring
    seven held-out sets again costs minutes on a CPU box.
    """
    from roadside.models.evaluate import CONDITIONS

    card = path.parent / "card.json"
    if not card.is_file():
        return None
    try:
        variants = json.loads(card.read_text())["variants"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        evaluation = next(v["evaluation"] for v in variants if v["sha256"] == digest)
    except (ValueError, KeyError, TypeError, StopIteration, OSError):
        return None
    wanted = set(conditions or CONDITIONS)
    if (
        not isinstance(evaluation, dict)
        or evaluation.get("frames_per_condition") != frames
        or not isinstance(evaluation.get("conditions"), dict)
        or not wanted <= set(evaluation["conditions"])
    ):
        return None
    return {**evaluation, "conditions": {c: v for c, v in evaluation["conditions"].items() if c in wanted}}


def publish_candidate(
    home: HubHome,
    registry: Registry,
    path: Path,
    *,
    name: str,
    version: str,
    actor: str,
    parent: str | None = None,
    force: bool = False,
    reason: str | None = None,
    min_gain: float = DEFAULT_MIN_GAIN,
    min_agent_version: str = "0.1.0",
    eval_frames: int = 160,
    candidate_summary: Mapping[str, Any] | None = None,
    conditions: Sequence[str] | None = None,
) -> PublishOutcome:
    """Gate and publish ``path`` as ``name`` ``version``; a refusal returns an outcome without a record.

    ``candidate_summary`` may carry the candidate's scores when they were just
    taken the same way (the retraining loop's card); otherwise they come from the
    card.json beside the file when it scored this file the same way, or are taken here,
    on ``conditions`` (every synthetic one by default). The published model is
    compared on the candidate's conditions.
    """
    if force and not (reason and reason.strip()):
        raise ConfigError("a forced publish needs a reason: say why the gate is overridden (it is audited)")
    if not home.has_repository():
        raise ConfigError(
            f"no model repository in {home.root}; run `roadside model repo init --home {home.root}`"
        )
    current = latest_published(registry, name)
    if candidate_summary is None:
        candidate_summary = card_summary(path, eval_frames, conditions)
        if candidate_summary is not None:
            log.info("taking %s's held-out scores from its model card (same file, same frames)", path.name)
    candidate = (
        dict(candidate_summary)
        if candidate_summary is not None
        else evaluation_summary(path, eval_frames, conditions)
    )
    judged_on = list(candidate.get("conditions", {})) or None
    current_scores = current_summary(home, current, eval_frames, judged_on) if current else None
    decision = publish_decision(
        scores_from_summary(candidate),
        scores_from_summary(current_scores) if current_scores else None,
        min_gain,
    )
    details: dict[str, Any] = {
        "version": version,
        "current_version": current.version if current else None,
        "decision": decision.as_dict(),
        "candidate": {c: m["map50"] for c, m in candidate["conditions"].items()},
        "current": {c: m["map50"] for c, m in current_scores["conditions"].items()}
        if current_scores
        else None,
    }
    current_version = current.version if current else None
    if not decision.publish and not force:
        registry.record_audit(actor, "model.publish.refused", name, details)
        log.warning("refused to publish %s %s: %s", name, version, decision.reason)
        return PublishOutcome(decision, candidate, current_scores, current_version, None)
    if not decision.publish:
        registry.record_audit(actor, "model.publish.forced", name, {**details, "reason": reason})
        log.warning("publishing %s %s despite the gate (%s): %s", name, version, decision.reason, reason)
    repository = ModelRepository(home.repository_dir, home.online_keys_dir, audit=registry.audit)
    record = release_model(
        repository,
        registry,
        path,
        name=name,
        version=version,
        parent=parent or current_version,
        min_agent_version=min_agent_version,
        actor=actor,
        extra_metadata={"evaluation": candidate, "gate": decision.as_dict(), **lineage_of(path)},
    )
    return PublishOutcome(
        decision, candidate, current_scores, current_version, record, forced=not decision.publish
    )
