"""Sensor readings from the agent to the hub's store: flagged, batched, sealed, ingested."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from roadside.cloud.storage.base import EventQuery, SensorQuery
from roadside.edge.agent import Agent
from roadside.edge.sensors.synthetic import SyntheticSensorSource
from roadside.edge.settings import load_agent_settings
from tests.e2e.conftest import SITE, Loop

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def test_agent_with_a_synthetic_sensor_publishes_readings_the_hub_stores(loop: Loop, tmp_path: Path) -> None:
    bundle = loop.enroll("dev-sensors")
    start = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    settings = load_agent_settings(
        None,
        bundle=tmp_path / "unused.json",
        sources=[],  # sensors only: no camera on this pole
        sensors=[
            {
                "type": "synthetic",
                "name": "aq0",
                "seed": 7,
                "period_s": 10,
                "realtime": False,
                "start": start.isoformat(),
                "max_ticks": 360,
                "faults": {"spike_prob": 0.01, "stuck_prob": 0.005, "out_of_range_prob": 0.005},
                # Street noise never falls below 40 dB(A): raised once, never cleared.
                "thresholds": [{"quantity": "noise", "level": 45, "clear": 40}],
            }
        ],
        outbox={"path": str(tmp_path / "outbox.db"), "records_per_message": 500},
    )
    agent = Agent.from_settings(settings, bundle)
    agent.start()
    try:
        assert agent.sensors.sources_done(timeout=30)
    finally:
        agent.stop(drain_s=20)
    uplink = agent.uplink
    assert agent.outbox_backlog_at_stop == 0, (
        uplink.connects,
        uplink.published,
        uplink.acked,
        uplink.refused,
    )
    sent = agent.sensors.readings
    assert sent > 4 * 300

    query = SensorQuery(start, start + timedelta(hours=2), device_id="dev-sensors", sensor="aq0", limit=5000)
    deadline = time.monotonic() + 30
    stored = loop.hub.store.sensor_series(query)
    while len(stored) < sent and time.monotonic() < deadline:
        time.sleep(0.1)
        stored = loop.hub.store.sensor_series(query)
    assert len(stored) == sent
    assert {(r.device_id, r.site) for r in stored} == {("dev-sensors", SITE)}
    assert {r.reading.quantity for r in stored} == {"pm25", "no2", "occupancy", "noise"}
    # Faulty readings are stored with their flag, not dropped and not passed off as ok.
    assert Counter(r.reading.quality for r in stored) == agent.sensors.flags
    source = agent.sensors.sources[0]
    assert isinstance(source, SyntheticSensorSource)
    sentinels = [r.reading for r in stored if r.reading.value == -9999.0]
    assert sentinels
    assert {r.quality for r in sentinels} == {"out_of_range"}
    assert len(sentinels) == sum(1 for s in source.injected if s.fault == "out_of_range")

    events = loop.hub.store.events(
        EventQuery(start, start + timedelta(hours=2), device_id="dev-sensors", type="sensor_threshold")
    )
    assert [(e.event.stream, e.event.cls) for e in events] == [("aq0", "noise")]
    assert events[0].event.ts == start
