"""The publish gate: does a candidate model beat the published one on the fixed held-out set?

Pure: it takes per-condition scores (mAP@0.5 and count MAE on
``roadside.models.evaluate.heldout_frames``) and returns a decision with its reasons.
A candidate *beats* the current model when all of these hold:

1. it was scored on every condition the current model was scored on;
2. its mean mAP@0.5 over those conditions is at least ``min_gain`` higher;
3. on no condition does its mAP@0.5 fall by more than ``max_map_drop``
   (a gain on fog must not be bought with a loss on day);
4. on no condition does its count MAE (objects per frame) rise by more than
   ``max_count_rise``: counts are what the city reads, so a model that finds
   more boxes but miscounts is not better.

With no current model (the first publish) any scored candidate passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from roadside.shared.errors import ConfigError

__all__ = ["ConditionScore", "PublishDecision", "publish_decision", "scores_from_summary"]

DEFAULT_MIN_GAIN = 0.01
DEFAULT_MAX_MAP_DROP = 0.02
DEFAULT_MAX_COUNT_RISE = 0.5


@dataclass(frozen=True, slots=True)
class ConditionScore:
    """A model's quality on one held-out condition."""

    map50: float
    count_mae: float


@dataclass(frozen=True, slots=True)
class PublishDecision:
    """The gate's verdict, with the figures it was made on."""

    publish: bool
    reason: str
    mean_map_candidate: float
    mean_map_current: float | None
    failures: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "publish": self.publish,
            "reason": self.reason,
            "mean_map_candidate": round(self.mean_map_candidate, 4),
            "mean_map_current": None if self.mean_map_current is None else round(self.mean_map_current, 4),
            "failures": list(self.failures),
        }


def _mean_map(scores: Mapping[str, ConditionScore], conditions: list[str]) -> float:
    return sum(scores[c].map50 for c in conditions) / len(conditions)


def publish_decision(
    candidate: Mapping[str, ConditionScore],
    current: Mapping[str, ConditionScore] | None,
    min_gain: float = DEFAULT_MIN_GAIN,
    *,
    max_map_drop: float = DEFAULT_MAX_MAP_DROP,
    max_count_rise: float = DEFAULT_MAX_COUNT_RISE,
) -> PublishDecision:
    """Whether ``candidate`` beats ``current`` (see the module docstring for the rule)."""
    if not candidate:
        raise ConfigError("the candidate has no held-out scores; evaluate it first")
    if current is None or not current:
        conditions = sorted(candidate)
        return PublishDecision(True, "no published model to beat", _mean_map(candidate, conditions), None)
    conditions = sorted(current)
    missing = [c for c in conditions if c not in candidate]
    if missing:
        shared = [c for c in conditions if c in candidate]
        mean = _mean_map(candidate, shared) if shared else 0.0
        reason = "candidate was not evaluated on " + ", ".join(missing)
        return PublishDecision(False, reason, mean, None, tuple(f"{c}: not evaluated" for c in missing))
    mean_new, mean_old = _mean_map(candidate, conditions), _mean_map(current, conditions)
    failures: list[str] = []
    if mean_new < mean_old + min_gain:
        failures.append(f"mean mAP@0.5 {mean_new:.3f} is not {min_gain:g} above {mean_old:.3f}")
    for c in conditions:
        new, old = candidate[c], current[c]
        if new.map50 < old.map50 - max_map_drop:
            failures.append(f"{c}: mAP@0.5 falls {old.map50:.3f} -> {new.map50:.3f}")
        if new.count_mae > old.count_mae + max_count_rise:
            failures.append(f"{c}: count MAE rises {old.count_mae:.2f} -> {new.count_mae:.2f} per frame")
    if failures:
        return PublishDecision(False, "; ".join(failures), mean_new, mean_old, tuple(failures))
    reason = f"mean mAP@0.5 {mean_old:.3f} -> {mean_new:.3f} over {', '.join(conditions)}"
    return PublishDecision(True, reason, mean_new, mean_old)


def scores_from_summary(summary: Mapping[str, Any]) -> dict[str, ConditionScore]:
    """Read the ``conditions`` of an evaluation summary (as stored in registry metadata and card.json)."""
    try:
        return {
            str(name): ConditionScore(map50=float(v["map50"]), count_mae=float(v["count_mae"]))
            for name, v in dict(summary["conditions"]).items()
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"evaluation summary is malformed: {exc!r}") from exc
