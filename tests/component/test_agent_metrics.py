"""The agent's health: /metrics on 127.0.0.1 against a running agent, and the pieces behind it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from roadside.cloud.broker.mosquitto import free_loopback_port
from roadside.edge.agent import Agent
from roadside.edge.health import (
    FrameLedger,
    HealthReport,
    StreamSample,
    SystemSample,
    parse_nvidia_smi,
    read_jetson_gpu,
    read_thermal_zones,
)
from roadside.edge.settings import load_agent_settings
from roadside.edge.sources import Frame
from roadside.shared.bundle import BrokerAddress, EnrollmentBundle
from roadside.shared.keys import KeyPair
from roadside.shared.queues import BoundedQueue, Overflow
from tests.component.conftest import BrokerHarness

pytestmark = pytest.mark.timeout(30)


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url, timeout=5)
    response.raise_for_status()
    text = response.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def agent(broker: BrokerHarness, site: str, tmp_path: Path) -> Agent:
    issued = broker.issued("dev-a")
    bundle = EnrollmentBundle(
        device_id="dev-a",
        site=site,
        broker=BrokerAddress(host="127.0.0.1", port=broker.port),
        ca_cert_pem=broker.broker.ca_file.read_text(),
        client_cert_pem=issued.cert_pem.decode(),
        client_key_pem=issued.key_pem.decode(),
        device_keys=KeyPair.generate().to_json(),
        hub_keys=KeyPair.generate().public().to_json(),
    )
    settings = load_agent_settings(
        None,
        bundle=tmp_path / "bundle.json",
        sources=[{"type": "synthetic", "name": "cam0", "width": 320, "height": 240, "fps": 8}],
        outbox={"path": str(tmp_path / "outbox.db")},
        metrics_port=free_loopback_port(),
    )
    return Agent.from_settings(settings, bundle)


def test_metrics_serve_the_health_gauges_on_loopback(agent: Agent) -> None:
    assert agent.metrics is not None
    agent.start()
    try:
        assert wait_until(
            lambda: agent.uplink.connected and agent.health_report().streams[0].frames_processed > 3
        )
        assert agent.metrics.url == f"http://127.0.0.1:{agent.settings.metrics_port}/metrics"
        samples = scrape(agent.metrics.url)
        cam0 = (("stream", "cam0"),)
        assert samples[("roadside_agent_stream_fps", cam0)] > 0
        assert samples[("roadside_agent_stream_frames_read_total", cam0)] >= 3
        assert samples[("roadside_agent_stream_frames_processed_total", cam0)] >= 3
        assert samples[("roadside_agent_stream_dropped_frames_total", cam0)] >= 0
        assert samples[("roadside_agent_inference_ms", (("quantile", "0.95"),))] > 0
        assert ("roadside_agent_queue_depth", (("queue", "frames"),)) in samples
        assert ("roadside_agent_queue_depth", (("queue", "commands"),)) in samples
        assert ("roadside_agent_outbox_backlog_messages", ()) in samples
        assert ("roadside_agent_outbox_bytes", ()) in samples
        assert samples[("roadside_agent_uplink_connected", ())] == 1
        assert samples[("roadside_agent_resident_memory_bytes", ())] > 10e6
        assert ("roadside_agent_cpu_percent", ()) in samples
        info = [k for k in samples if k[0] == "roadside_agent_model_info"]
        assert info
        assert dict(info[0][1])["provider"] == "CPUExecutionProvider"

        health = agent.health()
        assert health.streams["cam0"].fps > 0
        assert health.rss_mb is not None
        assert health.cpu_percent is not None
        assert health.inference_p95_ms is not None
    finally:
        agent.stop(drain_s=1)
    with pytest.raises(httpx.ConnectError):  # the server went with the agent
        httpx.get(f"http://127.0.0.1:{agent.settings.metrics_port}/metrics", timeout=2)


# The pieces -----------------------------------------------------------------------


def frame(stream: str, i: int) -> Frame:
    return Frame(stream, i, float(i), np.zeros((2, 2, 3), dtype=np.uint8))


def test_the_ledger_books_each_drop_to_the_stream_whose_frame_was_dropped() -> None:
    queue: BoundedQueue[Frame] = BoundedQueue(2, Overflow.DROP_OLDEST)
    ledger = FrameLedger(queue)
    ledger.put(frame("a", 0))
    ledger.put(frame("b", 0))
    mark = ledger.mark()
    ledger.put(frame("b", 1))  # drops a0
    assert (ledger.dropped("a"), ledger.dropped("b")) == (1, 0)
    assert queue.get_batch(1, 0, 0.1)[0].stream == "b"  # the pipeline takes b0
    ledger.put(frame("a", 1))  # room: nothing dropped
    ledger.put(frame("a", 2))  # drops b1
    assert (ledger.dropped("a"), ledger.dropped("b")) == (1, 1)
    assert (ledger.read("a"), ledger.read("b")) == (3, 2)
    assert ledger.passed(mark)  # a0, b0 (and b1) are all out of the queue
    assert not ledger.passed(ledger.mark())
    ledger.forget("a")
    assert ledger.read("a") == 0


def test_a_blocking_queue_never_holds_the_ledger_while_it_waits() -> None:
    queue: BoundedQueue[Frame] = BoundedQueue(1, Overflow.BLOCK)
    ledger = FrameLedger(queue)
    ledger.put(frame("a", 0))
    mark = ledger.mark()
    waiting = threading.Thread(target=ledger.put, args=(frame("a", 1),), daemon=True)
    waiting.start()
    waiting.join(0.2)
    assert waiting.is_alive()  # the queue is full: the reader waits for the pipeline...
    assert not ledger.passed(mark)  # ...and the pipeline can still ask the ledger
    assert queue.get_batch(1, 0, 0.1)
    waiting.join(5)
    assert ledger.passed(mark)
    assert ledger.read("a") == 2


def test_nvidia_smi_rows_and_unsupported_fields() -> None:
    gpus = parse_nvidia_smi("0, 37, 1200, 16384, 54\n1, [N/A], [N/A], 8192, [Not Supported]\n")
    assert [(g.index, g.utilization_percent, g.memory_used_mb, g.temperature_c) for g in gpus] == [
        (0, 37.0, 1200.0, 54.0),
        (1, None, None, None),
    ]


def test_thermal_zones_and_jetson_gpu_load_from_sysfs(tmp_path: Path) -> None:
    zones = tmp_path / "devices/virtual/thermal"
    for name, kind, millis in (
        ("thermal_zone0", "CPU-therm", "41500"),
        ("thermal_zone1", "GPU-therm", "39000"),
    ):
        (zones / name).mkdir(parents=True)
        (zones / name / "type").write_text(kind + "\n")
        (zones / name / "temp").write_text(millis + "\n")
    (zones / "thermal_zone2").mkdir()
    (zones / "thermal_zone2" / "type").write_text("PMIC-Die\n")
    (zones / "thermal_zone2" / "temp").write_text("-274000\n")  # an unconnected sensor: skipped
    assert read_thermal_zones(tmp_path) == {"CPU-therm": 41.5, "GPU-therm": 39.0}
    assert read_jetson_gpu(tmp_path) is None
    (tmp_path / "devices/gpu.0").mkdir(parents=True)
    (tmp_path / "devices/gpu.0/load").write_text("275\n")
    jetson = read_jetson_gpu(tmp_path)
    assert jetson is not None
    assert jetson.utilization_percent == 27.5
    assert jetson.memory_used_mb is None  # unified memory: not invented


def test_what_cannot_be_read_stays_none_on_the_wire() -> None:
    report = HealthReport(
        ts=datetime.now(UTC),
        uptime_s=12.0,
        model_version="m1",
        provider="CPUExecutionProvider",
        streams=(StreamSample("cam0", 9.5, 100, 95, 5),),
        inference_p50_ms=None,
        inference_p95_ms=None,
        queue_depths={"frames": 0},
        frame_queue_dropped=5,
        outbox_backlog=3,
        outbox_bytes=1000,
        outbox_dropped=0,
        uplink_connected=False,
        system=SystemSample(),
    )
    health = report.to_health()
    assert health.streams["cam0"].dropped_frames == 5
    assert (health.cpu_percent, health.rss_mb, health.inference_p50_ms) == (None, None, None)
    assert health.outbox_backlog == 3
