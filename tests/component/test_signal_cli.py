"""``roadside signal map``: channel maps edited from the command line, refused when malformed (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from roadside.cli import build
from roadside.cloud.broker.mosquitto import ACL_FILE
from roadside.cloud.home import init_home
from roadside.cloud.registry import Registry

pytestmark = pytest.mark.timeout(60)


def test_map_set_add_remove_show_and_refusals(tmp_path: Path) -> None:
    home = init_home(tmp_path / "hub", ["localhost"], ["127.0.0.1"])
    app, runner = build(), CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, ["signal", "map", *args, "--home", str(home.root)])
        return result.exit_code, result.output

    good = tmp_path / "map.json"
    good.write_text(
        json.dumps([{"channel": 5, "device": "cam-1", "stream": "north", "zone": "nb-stop-1", "phase": 2}])
    )
    assert run("set", "main-5th", str(good), "--name", "Main & 5th") == (
        0, "signal main-5th: channel map version 1, 1 channels\n"
    )  # fmt: skip
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"channels": [{"channel": 200, "device": "cam-1", "stream": "n", "zone": "z"}]})
    )
    code, out = run("set", "main-5th", str(bad))
    assert code == 2
    assert "malformed channel map: channels.0.channel" in out
    bad.write_text("{not json")
    code, out = run("set", "main-5th", str(bad))
    assert (code, "the channel map is not JSON" in out) == (2, True)
    code, out = run("add", "main-5th", "--channel", "6", "--device", "cam-1", "--stream", "north", "--zone",
                    "nb-stop-1")  # fmt: skip
    assert code == 2
    assert "one zone, one channel" in out
    code, _ = run("add", "main-5th", "--channel", "6", "--device", "cam-1", "--stream", "north", "--zone", "nb-stop-2",
                  "--phase", "2")  # fmt: skip
    assert code == 0
    code, out = run("remove", "main-5th", "9")
    assert code == 2
    assert "unknown vehicle detector channel 9; this signal has [5, 6]" in out
    assert run("remove", "main-5th", "5")[0] == 0
    code, out = run("show", "main-5th")
    shown = json.loads(out)
    assert (shown["version"], [c["channel"] for c in shown["channels"]], shown["name"]) == (
        3,
        [6],
        "Main & 5th",
    )
    code, out = run("controller", "ctl-main", "main-5th")
    assert code == 0, out
    assert (
        # a controller is named in the ACL (ADR 0022): denied the device patterns, allowed its calls
        "user ctl-main\ntopic deny roadside/v1/#\ntopic read roadside/signals/v1/main-5th/calls"
        in (home.broker_dir / ACL_FILE).read_text()
    )
    code, out = run("controller", "ctl-x", "nowhere")
    assert (code, "unknown signal(s) nowhere" in out) == (2, True)
    registry = Registry(home.registry_url)
    try:
        actions = [
            (e.action, e.actor.startswith("cli:"))
            for e in registry.audit.entries()
            if e.subject == "main-5th"
        ]
    finally:
        registry.close()
    assert actions == [("signal.map", True)] * 3
