"""``roadside rollout ...`` against a real hub home and registry: an operator's session, audited."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from roadside.cli import build
from roadside.cloud.fleet.audit import AuditLog
from roadside.cloud.home import init_home
from roadside.cloud.registry import Registry
from roadside.shared.keys import KeyPair


def test_an_operator_creates_inspects_pauses_and_rolls_back_a_rollout(tmp_path: Path) -> None:
    home = init_home(tmp_path / "home", ["localhost"], ["127.0.0.1"])
    registry = Registry(home.registry_url)
    registry.create_schema()
    for i in range(4):
        registry.devices.enroll(f"cam-{i}", "main-st", KeyPair.generate().public())
    registry.models.publish("detector", "1.1.0", "c" * 64, 5_000_000)
    registry.close()
    runner, app = CliRunner(), build()
    where = ["--home", str(home.root)]

    created = runner.invoke(
        app,
        ["rollout", "create", "--model", "detector:1.1.0", "--target", "site:main-st", "--canary", "1",
         "--waves", "50,100", "--soak", "30s", "--min-agreement", "0.8", "--json", *where],
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    body = json.loads(created.output)
    assert body["status"] == "pending"
    assert [w["devices"] for w in body["waves"]] == [1, 1, 2]
    assert body["spec"]["soak_s"] == 30.0
    assert body["spec"]["gates"]["min_agreement"] == 0.8

    paused = runner.invoke(app, ["rollout", "pause", "1", "--reason", "parade on main st", "--json", *where])
    assert json.loads(paused.output)["status"] == "paused"
    again = runner.invoke(app, ["rollout", "pause", "1", *where])
    assert again.exit_code == 2
    assert "cannot pause rollout 1: it is paused" in again.output

    rolled = runner.invoke(app, ["rollout", "rollback", "1", "--reason", "wrong model", *where])
    assert rolled.exit_code == 0, rolled.output
    listed = json.loads(runner.invoke(app, ["rollout", "list", "--json", *where]).output)
    assert listed["rollouts"][0]["status"] == "rolling_back"
    assert listed["rollouts"][0]["reason"] == "wrong model"

    refused = runner.invoke(app, ["rollout", "create", "--model", "detector:9.9.9", *where])
    assert refused.exit_code == 2
    assert "not published" in refused.output
    bad = runner.invoke(app, ["rollout", "create", "--model", "detector:1.1.0", "--waves", "50,20", *where])
    assert bad.exit_code == 2
    assert "rising percentages" in bad.output

    registry = Registry(home.registry_url)
    entries = [e for e in AuditLog(registry).entries() if e.subject == "1"]
    registry.close()
    assert [e.action for e in entries] == ["rollout.create", "rollout.status", "rollout.status"]
    assert all(e.actor.startswith("cli:") for e in entries)
    assert entries[1].details["reason"] == "parade on main st"
