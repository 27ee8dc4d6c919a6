"""The rollout core: wave planning, device state order, and every gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from roadside.cloud.release.rollouts import (
    Decision,
    DeviceProgress,
    GateThresholds,
    RolloutPlan,
    RolloutSpec,
    Target,
    WaveVerdict,
    advance_state,
    confidence_drop,
    evaluate_wave,
    parse_duration,
    parse_target,
    parse_waves,
    plan_waves,
)
from roadside.cloud.settings import RetrainConfig
from roadside.shared.errors import ConfigError
from roadside.shared.schemas import Health, ShadowStats, StreamHealth

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SAME = [0.0, 0.0, 0.05, 0.05, 0.1, 0.1, 0.2, 0.2, 0.2, 0.1]


def stats(agreement: float = 0.95, hist: list[float] | None = None, p95: float = 5.0) -> ShadowStats:
    return ShadowStats(
        frames=200,
        agreement=agreement,
        novel=0.05,
        latency_p95_ms_running=5.0,
        latency_p95_ms_candidate=p95,
        confidence_running=SAME,
        confidence_candidate=hist or SAME,
    )


def health(fps: float, version: str = "1.0.0", p95: float = 5.0, at: datetime = T0) -> Health:
    return Health(
        ts=at,
        uptime_s=10,
        model_version=version,
        provider="CPUExecutionProvider",
        streams={"cam": StreamHealth(fps=fps, dropped_frames=0)},
        inference_p95_ms=p95,
        outbox_backlog=0,
    )


def device(
    name: str,
    state: str = "active",
    shadow: ShadowStats | None = None,
    baseline: Health | None = None,
    after: Health | None = None,
    at: datetime = T0 + timedelta(seconds=30),
) -> DeviceProgress:
    return DeviceProgress(name, 0, state, at, "", shadow, baseline, after)


def judge(devices: list[DeviceProgress], now_s: float = 60, **gates: Any) -> WaveVerdict:
    return evaluate_wave(
        devices, GateThresholds(**gates), wave_started=T0, soak_s=20, now=T0 + timedelta(seconds=now_s)
    )


def test_durations_waves_and_targets_parse() -> None:
    assert parse_duration("10m") == 600
    assert parse_duration("90") == 90
    assert parse_duration("1.5h") == 5400
    assert parse_waves("10,50,100") == (10, 50, 100)
    assert parse_target("site:north,south") == Target("site", ("north", "south"))
    assert parse_target("all") == Target("all")
    for bad in ("10x", "", "-1m"):
        with pytest.raises(ConfigError):
            parse_duration(bad)
    for waves in ("50,10,100", "10,50", "0,100", "a,b"):
        with pytest.raises(ConfigError):
            parse_waves(waves)
    with pytest.raises(ConfigError):
        parse_target("group:")


def test_targets_select_active_devices_and_refuse_unknown_ones() -> None:
    fleet = [("a", "north"), ("b", "south"), ("c", "north")]
    assert Target("site", ("north",)).select(fleet) == ["a", "c"]
    assert Target("all").select(fleet) == ["a", "b", "c"]
    with pytest.raises(ConfigError, match="zzz"):
        Target("devices", ("a", "zzz")).select(fleet)


def test_waves_start_with_the_canary_and_cover_every_device_once() -> None:
    devices = [f"d{i:03d}" for i in range(200)]
    waves = plan_waves(devices, canary=2, percents=(10, 50, 100), salt="r1")
    assert [len(w) for w in waves] == [2, 18, 80, 100]
    assert sorted(d for w in waves for d in w) == devices
    assert plan_waves(devices, 2, (10, 50, 100), "r1") == waves  # stable for one rollout
    assert plan_waves(devices, 2, (10, 50, 100), "r2")[0] != waves[0]  # not always the same canaries


def test_small_fleets_drop_empty_waves() -> None:
    assert plan_waves(["a", "b"], canary=1, percents=(10, 50, 100), salt="s") in (
        [["a"], ["b"]],
        [["b"], ["a"]],
    )
    assert [len(w) for w in plan_waves(["a", "b", "c"], canary=5, percents=(100,), salt="s")] == [3]


def test_a_spec_is_a_plan_for_one_model_version() -> None:
    plan = RolloutPlan("site:north", 2, (25, 100), 30.0, 10, GateThresholds(min_agreement=0.6))
    spec = RolloutSpec.of("detector", "1.1.0", plan)
    assert spec == RolloutSpec("detector", "1.1.0", "site:north", 2, (25, 100), 30.0, 10, plan.gates)
    assert spec.to_json() == {"model_name": "detector", "model_version": "1.1.0", **plan.to_json()}
    for bad in ({"waves": (10, 50)}, {"canary": -1}, {"soak_s": 90_000.0}, {"min_frames": -1}):
        with pytest.raises(ConfigError):
            RolloutPlan(**bad)


def test_the_retraining_loop_rolls_out_with_a_plan_flat_keys_still_accepted() -> None:
    flat = RetrainConfig.model_validate({"waves": [100], "soak_s": 5, "gates": {"health_wait_s": 20}})
    nested = RetrainConfig.model_validate({"rollout": {"waves": [100], "soak_s": 5.0}})
    assert flat.rollout == RolloutPlan(waves=(100,), soak_s=5.0, gates=GateThresholds(health_wait_s=20.0))
    assert nested.rollout == RolloutPlan(waves=(100,), soak_s=5.0)
    assert RetrainConfig().rollout == RolloutPlan()
    with pytest.raises(ValueError, match="nope"):
        RetrainConfig.model_validate({"rollout": {"nope": 1}})
    with pytest.raises(ValueError, match="nope"):
        RetrainConfig.model_validate({"gates": {"nope": 1}})


def test_spec_round_trips_and_rejects_bad_settings() -> None:
    spec = RolloutSpec(
        "detector", "1.1.0", "site:north", 2, (25, 100), 30.0, 10, GateThresholds(min_agreement=0.6)
    )
    assert RolloutSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ConfigError):
        RolloutSpec.from_json({**spec.to_json(), "gates": {"min_agreemnt": 0.5}})
    with pytest.raises(ConfigError):
        GateThresholds(min_agreement=1.5)


def test_device_states_only_move_forward_until_a_rollback() -> None:
    assert advance_state("commanded", "staging") == "staging"
    assert advance_state("active", "shadow") == "active"  # a late report cannot move a device back
    assert advance_state("refused", "active") == "refused"
    assert advance_state("active", "rolled_back") == "rolled_back"
    assert advance_state("rolling_back", "active") == "rolling_back"
    assert advance_state("rolling_back", "rolled_back") == "rolled_back"


def test_confidence_drop_is_one_sided() -> None:
    assert confidence_drop(SAME, SAME) == 0.0
    assert confidence_drop([0, 1], [1, 0]) == 1.0  # everything moved to low confidence
    assert confidence_drop([1, 0], [0, 1]) == 0.0  # surer of itself: a retrained model after drift
    assert confidence_drop([2, 2], [1, 1]) == 0.0  # normalised first
    assert confidence_drop([1, 1], [0, 0]) == 1.0  # finds nothing the running model found
    assert confidence_drop([0, 0], [1, 0]) == 0.0  # the running model found nothing: nothing to fall from


def test_a_wave_waits_for_its_devices_then_passes() -> None:
    verdict = judge([device("a", shadow=stats()), device("b", state="shadow")])
    assert verdict.decision is Decision.WAIT
    verdict = judge([device("a", shadow=stats()), device("b", shadow=stats())])
    assert verdict.decision is Decision.PASS
    assert {g.gate for g in verdict.gates} >= {"install", "agreement", "confidence", "latency", "health"}


@pytest.mark.parametrize(
    ("shadow", "gate"),
    [
        (stats(agreement=0.2), "agreement"),
        (stats(hist=[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]), "confidence"),
        (stats(p95=50.0), "latency"),
    ],
)
def test_a_misbehaving_model_fails_its_gate(shadow: ShadowStats, gate: str) -> None:
    verdict = judge([device("a", shadow=shadow), device("b", state="shadow")])
    assert verdict.decision is Decision.FAIL
    assert verdict.reason.startswith(gate)
    assert "a" in verdict.reason


def test_refused_or_failed_installs_fail_the_wave_unless_tolerated() -> None:
    refused = DeviceProgress("b", 0, "refused", T0, "tampered_target: hash mismatch")
    verdict = judge([device("a", shadow=stats()), refused])
    assert verdict.decision is Decision.FAIL
    assert "tampered_target" in verdict.reason
    assert judge([device("a", shadow=stats()), refused], max_failed=1).decision is Decision.PASS


def test_silence_past_the_deadline_fails_the_wave() -> None:
    quiet = DeviceProgress("b", 0, "commanded", T0, "")
    assert judge([quiet], now_s=100).decision is Decision.WAIT
    verdict = judge([quiet], now_s=20 + 300 + 1)
    assert verdict.decision is Decision.FAIL
    assert "did not report" in verdict.reason


def test_missing_shadow_statistics_fail_unless_not_required() -> None:
    assert judge([device("a")]).decision is Decision.FAIL
    assert judge([device("a")], require_shadow=False).decision is Decision.PASS


def test_a_surer_candidate_passes_the_confidence_gate() -> None:
    surer = stats(hist=[0, 0, 0, 0, 0, 0, 0.05, 0.15, 0.3, 0.5])
    assert judge([device("a", shadow=surer)]).decision is Decision.PASS


def test_health_after_the_switch_is_compared_with_before() -> None:
    before = health(fps=10.0)
    good = device("a", shadow=stats(), baseline=before, after=health(fps=9.5, version="1.1.0"))
    assert judge([good]).decision is Decision.PASS
    slow = device("a", shadow=stats(), baseline=before, after=health(fps=4.0, version="1.1.0"))
    verdict = judge([slow])
    assert verdict.decision is Decision.FAIL
    assert "FPS" in verdict.reason
    waiting = device("a", shadow=stats(), baseline=before)
    assert judge([waiting], now_s=60).decision is Decision.WAIT
    verdict = judge([waiting], now_s=30 + 121)
    assert verdict.decision is Decision.FAIL
    assert "no health report" in verdict.reason
