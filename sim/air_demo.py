"""``roadside demo --scenario air``: two poles' air sensors and traffic counts, the hub's air quality.

A Mosquitto and a hub on this machine (as ``roadside demo``), with an ``air``
section: two locations, a PMS5003-type particle sensor (CF=1 PM2.5 and RH,
corrected with the US EPA equation as calibration v1) and an NO2 cell on each
pole, and an NO2 limit. Each pole sends, sealed over mutual TLS like an agent,
the last twelve hours of one-minute readings and 15-minute counts by class.
The pollution follows the traffic (NO2 rises with the vehicles counted), and
the readings carry the agent's own quality flags (its ``QualityChecker`` runs
on them here: a sentinel, a stuck run, spikes). On Main St the evening rush
pushes NO2 over the limit, which raises an ``air_exceedance`` event.

The last line is one JSON object read back from the API and the air store:
readings stored, flags by kind, the index now per location, the exceedance
events, and the correlation of traffic with NO2.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from roadside.cloud.air.config import AirConfig
from roadside.cloud.air.store import AirStore
from roadside.cloud.broker.mosquitto import MosquittoBroker
from roadside.cloud.home import acl_devices, enroll_device, init_home
from roadside.cloud.hub import Hub
from roadside.cloud.registry import Registry
from roadside.cloud.settings import HubSettings
from roadside.edge.sensors.base import SensorSample
from roadside.edge.sensors.config import QualityConfig
from roadside.edge.sensors.quality import QualityChecker
from roadside.mqttlink import MqttSession, SessionConfig, context_from_pem
from roadside.shared import topics
from roadside.shared.bundle import BrokerAddress, EnrollmentBundle
from roadside.shared.envelope import DeviceSealer
from roadside.shared.errors import RoadsideError
from roadside.shared.schemas import CountRecord, CountsMessage, SensorReading, SensorsMessage, encode

POLES = (("pole-main", "main-st", "main-5th", 1.0), ("pole-oak", "oak-ave", "oak-2nd", 0.35))
NAMES = {"main-5th": "Main St & 5th Ave", "oak-2nd": "Oak Ave & 2nd St"}
HOURS = 12
CHUNK = 500


def _air_config() -> AirConfig:
    locations = []
    calibrations = []
    for device, site, location, _ in POLES:
        locations.append({
            "id": location, "name": NAMES[location], "site": site,
            "timezone": "Europe/Berlin", "station": "traffic",
            "sensors": [
                {"device": device, "sensor": "pm-1", "period_s": 60, "parameters": ["pm25", "rh"]},
                {"device": device, "sensor": "no2-1", "period_s": 60, "parameters": ["no2"]},
            ],
        })  # fmt: skip
        calibrations.append({"sensor": f"{device}.pm-1", "quantity": "pm25_cf1", "output": "pm25",
                             "version": 1, "method": "us-epa-pm25"})  # fmt: skip
    return AirConfig.model_validate(
        {"standard": "us-epa", "locations": locations, "calibrations": calibrations,
         "limits": {"no2": 100.0}, "every_s": 1.0, "rescan_s": (HOURS + 1) * 3600}
    )  # fmt: skip


def traffic(minute: float, scale: float) -> float:
    """Vehicles per 15 minutes: a base flow and an evening rush peaking 2.5 hours before now."""
    hours_before_end = HOURS - minute / 60
    return scale * (120 + 380 * math.exp(-(((hours_before_end - 2.5) / 1.2) ** 2)))


def pole_data(
    device: str, scale: float, end: datetime, rng: random.Random
) -> tuple[list[SensorReading], list[CountRecord]]:
    """Twelve hours of readings (flagged by the agent's quality checks) and counts."""
    start = end - timedelta(hours=HOURS)
    checker = QualityChecker(QualityConfig(), 60.0)  # the agent's checks, its default ranges
    readings: list[SensorReading] = []
    counts: list[CountRecord] = []
    for minute in range(HOURS * 60):
        ts = (start + timedelta(minutes=minute)).timestamp()
        flow = traffic(minute, scale)
        no2 = 12 + 0.22 * flow + rng.gauss(0, 3)
        pm = 6 + 0.03 * flow + rng.gauss(0, 0.8)
        rh = 55 + 10 * math.sin(minute / 180)
        if minute % 97 == 13:
            no2 += 90 * rng.choice((-1, 1))  # a one-minute spike
        if 300 <= minute < 306:
            pm = 7.0  # a stuck run
        values = {"pm25_cf1": max(0.0, pm), "rh": rh, "no2": max(0.0, no2)}
        if minute == 400:
            values["pm25_cf1"] = -9999.0  # the sentinel a failing sensor sends
        for quantity, value in values.items():
            sensor = "no2-1" if quantity == "no2" else "pm-1"
            unit = {"pm25_cf1": "ug/m3", "rh": "%", "no2": "ppb"}[quantity]
            readings.append(checker.check(SensorSample(ts, sensor, quantity, value, unit)))
        if minute % 15 == 0:
            at = datetime.fromtimestamp(ts, UTC)
            for cls, share in (("car", 0.86), ("truck", 0.08), ("bus", 0.02), ("bicycle", 0.04)):
                counts.append(CountRecord(interval_start=at, interval_s=900, line="main", cls=cls,
                                          direction="in", count=round(flow * share), model_version="demo"))  # fmt: skip
    return readings, counts


class Pole:
    """One pole's uplink: its own TLS identity and envelope keys, QoS 1, as an agent sends."""

    def __init__(self, bundle: EnrollmentBundle, port: int) -> None:
        self.bundle = bundle
        self.sealer = DeviceSealer(bundle.device_id, bundle.keypair(), bundle.hub_public())
        scratch = Path(tempfile.mkdtemp(prefix="air-demo-tls-"))
        try:
            tls = context_from_pem(bundle.ca_cert_pem, bundle.client_cert_pem, bundle.client_key_pem, scratch)
        finally:
            scratch.rmdir()
        self.session = MqttSession(SessionConfig("127.0.0.1", port, bundle.device_id, tls=tls, max_queued=0))
        self.session.connect()
        self.session.loop_start()
        self.seq = 0

    def send(self, kind: str, payload: bytes) -> None:
        self.seq += 1
        sealed = self.sealer.seal(kind, self.seq, payload, int(time.time() * 1000))
        self.session.publish(topics.uplink(self.bundle.site, self.bundle.device_id, kind), sealed, qos=1)  # type: ignore[arg-type]

    def close(self) -> None:
        self.session.disconnect()
        self.session.loop_stop()


def demo_air(duration: float | None, home: Path | None, console: Console) -> None:
    workdir = home or Path(tempfile.mkdtemp(prefix="roadside-demo-air-"))
    hub_home = init_home(workdir, ["localhost"], ["127.0.0.1"], force=True)
    broker = MosquittoBroker(
        hub_home.broker_dir, ca_cert_pem=hub_home.ca_file.read_bytes(), server=hub_home.broker_server_cert()
    )
    hub: Hub | None = None
    poles: list[Pole] = []
    rng = random.Random(7)  # noqa: S311 (a seeded simulation, not secrets)
    try:
        broker.start()
        registry = Registry(hub_home.registry_url)
        bundles = []
        for device, site, _, _ in POLES:
            bundle, _ = enroll_device(
                hub_home, registry, device, site, BrokerAddress(host="127.0.0.1", port=broker.port)
            )
            bundles.append(bundle)
        broker.reload_acl(acl_devices(registry))
        token = registry.api_clients.create("air-demo", ["read:telemetry"], "demo")
        registry.close()
        hub = Hub(HubSettings(home=workdir, broker_port=broker.port, api_port=0, air=_air_config()))
        hub.start()
        if not hub.wait_ready(15):
            raise RoadsideError(f"the hub did not connect to the broker; see {broker.log_file}")
        console.print(f"[bold]API[/bold] {hub.api_url}  (token: {token})  state in {workdir}")
        end = datetime.now(UTC).replace(second=0, microsecond=0)
        for bundle, (device, _, _, scale) in zip(bundles, POLES, strict=True):
            pole = Pole(bundle, broker.port)
            poles.append(pole)
            readings, counts = pole_data(device, scale, end, rng)
            for i in range(0, len(readings), CHUNK):
                pole.send("sensors", encode(SensorsMessage(records=readings[i : i + CHUNK])))
            for i in range(0, len(counts), CHUNK):
                pole.send("counts", encode(CountsMessage(records=counts[i : i + CHUNK])))
        summary = _wait_and_summarise(hub, token, workdir, duration or 60.0, console)
        print(json.dumps(summary))
    finally:
        for pole in poles:
            pole.close()
        if hub is not None:
            hub.stop()
        broker.stop()


def _wait_and_summarise(
    hub: Hub, token: str, workdir: Path, timeout: float, console: Console
) -> dict[str, Any]:
    api = httpx.Client(base_url=hub.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    window = {"from": (datetime.now(UTC) - timedelta(hours=HOURS + 1)).isoformat(),
              "to": (datetime.now(UTC) + timedelta(minutes=1)).isoformat()}  # fmt: skip
    deadline = time.monotonic() + timeout
    locations: list[dict[str, Any]] = []
    exceedances: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        locations = api.get("/v1/air/locations").json()["results"]
        exceedances = api.get("/v1/events", params={"type": "air_exceedance", **window}).json()["events"]
        if all(loc["index"] is not None for loc in locations) and exceedances:
            break
        time.sleep(1.0)
    for loc in locations:
        index = loc["index"]
        if index is not None:
            console.print(
                f"{loc['name']}: AQI {index['overall']} {index['category']} ({index['responsible']})"
            )
    correlation = {
        loc["id"]: api.get(f"/v1/air/locations/{loc['id']}/traffic", params=window)
        .json()["correlation"]
        .get("no2")
        for loc in locations
    }
    store = AirStore(workdir / "air.db")
    try:
        raw = store.measurements(stage="raw", start=0, end=time.time() + 60, limit=10_000_000)
        cleaned = store.measurements(stage="cleaned", start=0, end=time.time() + 60, limit=10_000_000)
    finally:
        store.close()
    flags: dict[str, int] = {}
    for s in cleaned:
        for flag in s.measurement.flags:
            flags[flag] = flags.get(flag, 0) + 1
    return {
        "readings_stored": len(raw),
        "flags": dict(sorted(flags.items())),
        "index": {
            loc["id"]: None
            if loc["index"] is None
            else {k: loc["index"][k] for k in ("overall", "category", "responsible")}
            for loc in locations
        },
        "exceedance_events": len(exceedances),
        "traffic_no2_correlation": {k: None if v is None else round(v, 3) for k, v in correlation.items()},
        "api": hub.api_url,
        "state": str(workdir),
    }
