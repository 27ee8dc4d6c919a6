"""The rollout benchmark, small: six simulated agents take a new model through the hub's staged rollout.

It runs ``bench.rollout.main`` (the code behind ``python -m bench.rollout
--agents 200``) with six agents, so the benchmark cannot rot unnoticed: real
Mosquitto with mutual TLS, the hub's rollout controller, TUF verification on
every agent, the naive baseline and a rollback. The ~5 MB model and its fine-tune are
generated once and cached under ``~/.cache/roadside/bench``.
"""

from __future__ import annotations

import json

import pytest

from bench import rollout

pytestmark = pytest.mark.timeout(120)

AGENTS = 6
KEYS = {
    "agents",
    "seconds_to_all",
    "failed",
    "active_on_new",
    "seconds_to_completed",
    "rollout_state",
    "waves",
    "command_to_active_p50_s",
    "command_to_active_p95_s",
    "phase_p50_s",
    "bytes_downloaded",
    "bytes_per_agent",
    "bytes_vs_model",
    "transfers",
    "model_bytes",
    "baseline_naive",
    "vs_naive",
}


def test_every_agent_ends_active_on_the_new_model(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--agents",
        str(AGENTS),
        "--canary",
        "1",
        "--waves",
        "50,100",
        "--workers",
        "3",
        "--timeout",
        "60",
    ]
    result = rollout.main(argv)

    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert set(result) >= KEYS
    assert result["agents"] == AGENTS
    assert (result["failed"], result["refused"], result["dropped_connections"]) == (0, 0, 0)
    assert result["rollout_state"] == "completed"
    # The devices' own updaters boot the new version, not only their reports say so.
    assert result["active_on_new"] == AGENTS
    # Canary 1, then 50% (3 devices in all), then the rest.
    assert [(w["devices"], w["active"]) for w in result["waves"]] == [(1, 1), (2, 2), (3, 3)]
    assert 0 < result["command_to_active_p50_s"] <= result["command_to_active_p95_s"]
    assert set(result["phase_p50_s"]) == {"queued", "stage", "activate", "to_hub"}
    assert 0 < result["seconds_to_all"] <= result["seconds_to_completed"]
    # The update is a fine-tune of the model the fleet runs: every agent fetched the signed patch
    # (ADR 0027) and its metadata through TUF, under half the model.
    assert result["update"] == "fine-tune"
    assert result["transfers"] == {"zstd-patch": AGENTS}
    assert result["form_failures"] == 0
    assert result["model_bytes"] > 4_000_000
    assert 0 < result["bytes_per_agent"] < 0.5 * result["model_bytes"]
    assert abs(result["bytes_downloaded"] - AGENTS * result["bytes_per_agent"]) <= AGENTS
    naive = result["baseline_naive"]
    assert (naive["failed"], naive["bytes_downloaded"]) == (0, AGENTS * result["model_bytes"])
    assert naive["seconds_to_all"] > 0
    # Rolled back by the operator afterwards: every device reports it and boots 1.0.0 again.
    assert result["rollback"]["rolled_back"] == result["rollback"]["boots_previous"] == AGENTS
    assert result["rollback"]["seconds_to_all"] > 0
