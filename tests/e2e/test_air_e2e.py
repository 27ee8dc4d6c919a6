"""Air quality end to end: a PMS5003 on a pseudo-terminal behind an agent, a hub with an air section.

Frames → agent driver → sealed ``sensors`` messages → hub ingest → the air job's stages → ``/v1/air``;
the sensor unplugged → ``sensor_dropout`` in ``/v1/events``; backdated readings from a second device
with NO2 above the limit → the hub's own ``air_exceedance`` event, stored and offered to the live feed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.fleet import SimulatedDevice
from roadside.cloud.air.config import AirConfig
from roadside.cloud.home import acl_devices, enroll_device
from roadside.cloud.hub import Hub
from roadside.cloud.settings import HubSettings
from roadside.edge.agent import Agent
from roadside.edge.sensors.air import plantower
from roadside.edge.settings import load_agent_settings
from roadside.shared import topics
from roadside.shared.bundle import BrokerAddress
from roadside.shared.schemas import SensorReading, SensorsMessage, encode
from tests.component.test_sensor_sources import PluggablePort
from tests.e2e.rig import Rig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
SITE = "air-site"


def wait_until(check: Callable[[], Any], timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    return check()


def _air() -> AirConfig:
    return AirConfig.model_validate(
        {
            "locations": [{
                "id": "main-5th", "name": "Main St & 5th Ave", "site": SITE, "timezone": "Europe/Berlin",
                "sensors": [
                    {"device": "pole-1", "sensor": "pm-1", "period_s": 1, "parameters": ["pm25", "pm10"]},
                    {"device": "pole-2", "sensor": "gas-1", "period_s": 60, "parameters": ["no2"]},
                ],
            }],
            "limits": {"no2": 100.0},
            "every_s": 0.5,
        }
    )  # fmt: skip


def test_pms5003_frames_to_the_air_api_and_events(rig: Rig, tmp_path: Path) -> None:
    token = rig.registry.api_clients.create("portal", ["read:telemetry"])
    address = BrokerAddress(host="127.0.0.1", port=rig.broker.port)
    pole1, _ = enroll_device(rig.home, rig.registry, "pole-1", SITE, address)
    pole2, _ = enroll_device(rig.home, rig.registry, "pole-2", SITE, address)
    rig.broker.reload_acl(acl_devices(rig.registry))
    hub = Hub(
        HubSettings(
            home=rig.home.root, broker_port=rig.broker.port, api_port=0, batch_wait_s=0.05, air=_air()
        )
    )
    hub.start()
    port = PluggablePort(tmp_path / "ttyUSB-pms")
    agent: Agent | None = None
    device: SimulatedDevice | None = None
    try:
        assert hub.wait_ready(10), rig.broker.log_tail()
        api = httpx.Client(base_url=hub.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        settings = load_agent_settings(
            None, bundle=tmp_path / "unused.json", sources=[],
            sensors=[{"type": "pms5003", "name": "pm-1", "port": str(port.link), "period_s": 1,
                      "dropout_after_s": 1.5, "reconnect_base_s": 0.1, "reconnect_cap_s": 0.3}],
            outbox={"path": str(tmp_path / "outbox.db")},
        )  # fmt: skip
        agent = Agent.from_settings(settings, pole1)
        agent.start()

        def frames_arrived() -> list[Any]:
            port.write(plantower.encode_frame({"pm1": 9, "pm25": 14, "pm10": 21}))
            body = api.get("/v1/air/sensors/pole-1.pm-1.pm25/measurements", params={"stage": "raw"}).json()
            return list(body.get("results", []))

        raw = wait_until(frames_arrived)
        assert raw, "no PMS5003 value reached the air API"
        assert raw[0]["value"] == 14.0
        calibrated = api.get("/v1/air/sensors/pole-1.pm-1.pm25/measurements").json()["results"]
        assert calibrated[0]["calibration"] is None  # no calibration configured: said so
        port.unplug()

        def dropout() -> list[Any]:
            return list(api.get("/v1/events", params={"type": "sensor_dropout"}).json()["events"])

        (event,) = wait_until(dropout)
        assert (event["stream"], event["model_version"]) == ("pm-1", "driver-pms5003")

        # Two hours of NO2 from a second device, backdated, the last hour above the limit.
        device = SimulatedDevice(pole2)
        device.connect("127.0.0.1", rig.broker.port)
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        readings = [
            SensorReading(ts=end - timedelta(minutes=120 - i), sensor="gas-1", quantity="no2",
                          value=150.0 if i >= 60 else 20.0, unit="ppb")
            for i in range(120)
        ]  # fmt: skip
        sealed = device.sealer.seal(
            "sensors", 1, encode(SensorsMessage(records=readings)), int(time.time() * 1000)
        )
        device.client.publish(topics.uplink(SITE, "pole-2", "sensors"), sealed, qos=1)

        def exceedance() -> list[Any]:
            return list(api.get("/v1/events", params={"type": "air_exceedance"}).json()["events"])

        (exceeded,) = wait_until(exceedance)
        assert (exceeded["stream"], exceeded["cls"]) == ("main-5th", "no2")
        assert hub.live.published >= 2  # the dropout and the exceedance went to SSE and webhooks
        location = api.get("/v1/air/locations/main-5th").json()
        assert location["index"] is not None
        assert location["index"]["by_pollutant"]["no2"] > 100  # 150 ppb: Unhealthy for Sensitive Groups
    finally:
        if device is not None:
            device.close()
        if agent is not None:
            agent.stop(drain_s=5)
        port.close()
        hub.stop()
