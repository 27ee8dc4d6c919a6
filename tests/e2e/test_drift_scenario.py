"""The drift scenario, short form: fog rolls in, the loop closes without a human step, accuracy recovers.

Real Mosquitto, hub, two agent processes, hard examples with the scene's
ground truth as labels, a fine-tune on the hub, the publish gate, a TUF
release, a canary rollout with shadow gates. Minutes, not seconds: marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from roadside.cloud.fleet.audit import AuditLog
from roadside.cloud.registry import Registry
from roadside.sim.drift import run_drift

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def test_accuracy_recovers_after_fog_without_a_human_step(tmp_path: Path) -> None:
    # A candidate the publish gate refuses is retried when 40 more samples have come: allow for two runs.
    summary = run_drift(900.0, tmp_path / "drift", drift_at_s=8.0, min_samples=40, eval_frames=64)
    assert summary["map_drift"] < summary["map_before"] - 0.1, summary  # fog hurts the deployed model
    assert summary["new_version"] is not None, summary
    assert summary["map_after"] > summary["map_drift"] + 0.1, summary
    assert summary["devices_on_new"] == 2, summary
    assert summary["rolled_back"] == 0, summary
    assert summary["rollout_seconds"] > 0
    registry = Registry(f"sqlite:///{tmp_path / 'drift' / 'registry.db'}")
    try:
        actions = [e.action for e in AuditLog(registry).entries(limit=None)]
        assert AuditLog(registry).verify().ok
    finally:
        registry.close()
    # Every step of the loop is on record: the retraining run, its publish, the rollout and its gate verdicts.
    assert "retrain.run" in actions
    assert actions.index("rollout.create") < actions.index("rollout.gate")
    assert actions.count("model.publish") == 2  # the shipped model, then the retrained one
    assert actions.count("retrain.run") >= 1
