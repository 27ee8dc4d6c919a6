"""Issue 9, item 14b, as the field saw it: during a camera outage the hub API said 10 fps.

An enrolled agent with a (fake) camera that stalls, the real broker and hub: the health
report read back from ``/v1/devices/{id}`` says the stream is reconnecting at 0 fps, and the
uplink is publishing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from roadside.edge.assembly import build_agent
from roadside.edge.settings import SourceConfig, load_agent_settings
from roadside.shared.bundle import write_bundle
from tests.component.test_stream_health import StallingCamera
from tests.e2e.conftest import Loop

pytestmark = pytest.mark.timeout(90)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_the_api_shows_a_stalled_camera_as_reconnecting_at_0_fps(loop: Loop, tmp_path: Path) -> None:
    camera = StallingCamera("cam0")

    def open_source(config: SourceConfig) -> StallingCamera:
        assert config.name == "cam0"
        return camera

    bundle = loop.enroll("dev-stall")
    write_bundle(bundle, tmp_path / "bundle.json")
    settings = load_agent_settings(
        None,
        bundle=tmp_path / "bundle.json",
        sources=[{"type": "synthetic", "name": "cam0", "width": 160, "height": 120}],
        outbox={"path": str(tmp_path / "outbox.db")},
    )
    agent = build_agent(settings, bundle, sources=open_source)
    agent.health_collector.stale_after_s = 0.5
    api = loop.api()

    def latest() -> dict[str, Any] | None:
        health: dict[str, Any] | None = api.get("/v1/devices/dev-stall").json()["health"]
        return health

    agent.start()
    try:
        assert wait_for(lambda: agent.health().streams["cam0"].state == "up", 15)
        camera.stall.set()
        assert wait_for(lambda: agent.health().streams["cam0"].state == "reconnecting", 15)
        agent.heartbeat()

        def stalled_report() -> bool:
            health = latest()
            return health is not None and health["streams"]["cam0"]["state"] == "reconnecting"

        assert wait_for(stalled_report, 30), latest()
        health = latest()
        assert health is not None
        cam0 = health["streams"]["cam0"]
        assert cam0["fps"] == 0
        assert cam0["last_frame_age_s"] >= 0.5
        assert cam0["reconnects"] == 0
        assert health["uplink"]["state"] == "publishing"
        assert health["uplink"]["refusals"] == 0
    finally:
        agent.stop(drain_s=1)
