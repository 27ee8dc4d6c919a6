"""The publish gate's rule (cloud.release.gate): mean mAP gain, no per-condition regression."""

from __future__ import annotations

import pytest

from roadside.cloud.release.gate import ConditionScore, publish_decision, scores_from_summary
from roadside.shared.errors import ConfigError

CURRENT = {
    "day": ConditionScore(map50=0.98, count_mae=0.6),
    "night": ConditionScore(map50=0.98, count_mae=1.2),
    "fog": ConditionScore(map50=0.67, count_mae=4.6),
}


def _with(**changes: ConditionScore) -> dict[str, ConditionScore]:
    return {**CURRENT, **changes}


def test_first_publish_has_nothing_to_beat() -> None:
    decision = publish_decision(CURRENT, None)
    assert decision.publish
    assert decision.mean_map_current is None
    assert decision.reason == "no published model to beat"


def test_fine_tune_that_fixes_fog_and_keeps_day_is_published() -> None:
    candidate = _with(fog=ConditionScore(0.96, 0.8), day=ConditionScore(0.975, 0.9))
    decision = publish_decision(candidate, CURRENT, min_gain=0.01)
    assert decision.publish, decision.reason
    assert decision.mean_map_candidate > decision.mean_map_current  # type: ignore[operator]
    assert "0.877 -> 0.972" in decision.reason


def test_identical_model_does_not_beat_itself() -> None:
    decision = publish_decision(CURRENT, CURRENT, min_gain=0.01)
    assert not decision.publish
    assert decision.failures == ("mean mAP@0.5 0.877 is not 0.01 above 0.877",)


def test_gain_on_one_condition_cannot_buy_a_loss_on_another() -> None:
    candidate = _with(fog=ConditionScore(0.99, 0.5), day=ConditionScore(0.90, 0.6))
    decision = publish_decision(candidate, CURRENT)
    assert not decision.publish
    assert decision.failures == ("day: mAP@0.5 falls 0.980 -> 0.900",)


def test_count_error_rise_refuses_even_with_better_map() -> None:
    candidate = _with(fog=ConditionScore(0.99, 0.5), night=ConditionScore(0.98, 2.0))
    decision = publish_decision(candidate, CURRENT, max_count_rise=0.5)
    assert not decision.publish
    assert decision.failures == ("night: count MAE rises 1.20 -> 2.00 per frame",)


def test_small_drop_within_tolerance_is_allowed() -> None:
    candidate = _with(fog=ConditionScore(0.95, 1.0), day=ConditionScore(0.965, 0.7))
    assert publish_decision(candidate, CURRENT, max_map_drop=0.02).publish


def test_candidate_missing_a_condition_is_refused() -> None:
    candidate = {k: v for k, v in CURRENT.items() if k != "fog"}
    decision = publish_decision(candidate, CURRENT)
    assert not decision.publish
    assert decision.failures == ("fog: not evaluated",)


def test_empty_candidate_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no held-out scores"):
        publish_decision({}, CURRENT)


def test_decision_as_dict_is_json_ready() -> None:
    d = publish_decision(CURRENT, CURRENT).as_dict()
    assert d["publish"] is False
    assert d["mean_map_current"] == pytest.approx(0.8767, abs=1e-4)
    assert isinstance(d["failures"], list)


def test_scores_from_summary_reads_stored_evaluation() -> None:
    summary = {"conditions": {"day": {"map50": 0.98, "count_mae": 0.61, "recall": {}}}}
    assert scores_from_summary(summary) == {"day": ConditionScore(0.98, 0.61)}
    with pytest.raises(ConfigError, match="malformed"):
        scores_from_summary({"conditions": {"day": {"map50": 0.9}}})
