"""The retraining decision: enough labelled samples, not too soon after a publish, no rollout in progress."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadside.cloud.settings import RetrainConfig
from roadside.cloud.training.loop import RetrainSnapshot, decide_retrain

POLICY = RetrainConfig(min_samples=60, min_interval_s=3600.0)


def snapshot(
    waiting: int = 60, last_publish: float | None = None, now: float = 10_000.0, *statuses: str
) -> RetrainSnapshot:
    return RetrainSnapshot(waiting, last_publish, now, statuses)


def test_enough_samples_and_nothing_in_the_way_runs() -> None:
    decision = decide_retrain(snapshot(60), POLICY)
    assert decision.run
    assert "60 labelled samples" in decision.reason


def test_too_few_samples_waits() -> None:
    decision = decide_retrain(snapshot(59), POLICY)
    assert not decision.run
    assert decision.reason == "59 of 60 labelled samples waiting"


def test_a_recent_publish_holds_the_next_run_off_until_the_interval_passes() -> None:
    assert not decide_retrain(snapshot(500, 9_000.0, 10_000.0), POLICY).run
    assert decide_retrain(snapshot(500, 6_400.0, 10_000.0), POLICY).run


@pytest.mark.parametrize("status", ["pending", "running", "paused", "rolling_back"])
def test_a_rollout_in_progress_holds_retraining_off(status: str) -> None:
    decision = decide_retrain(snapshot(60, None, 10_000.0, "completed", status), POLICY)
    assert not decision.run
    assert "in progress" in decision.reason


def test_finished_rollouts_do_not_hold_it_off() -> None:
    assert decide_retrain(snapshot(60, None, 10_000.0, "completed", "rolled_back", "aborted"), POLICY).run


@given(
    waiting=st.integers(0, 1_000),
    since=st.one_of(st.none(), st.floats(0, 10_000)),
    busy=st.booleans(),
)
def test_runs_exactly_when_every_condition_holds(waiting: int, since: float | None, busy: bool) -> None:
    now = 20_000.0
    last = None if since is None else now - since
    statuses = ("running",) if busy else ("completed",)
    expected = waiting >= 60 and (since is None or since >= 3600.0) and not busy
    assert decide_retrain(RetrainSnapshot(waiting, last, now, statuses), POLICY).run is expected
