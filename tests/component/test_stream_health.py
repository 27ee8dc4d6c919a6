"""A dead camera must not look alive: a stream's state, last-frame age and reconnects in health,
/metrics and the hub API, with a fake camera that stalls (a fake is fine for a camera; the broker
are real; tests/e2e/test_stream_health_e2e.py reads it from the hub API)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from roadside.cloud.broker.mosquitto import free_loopback_port
from roadside.edge.agent import Agent
from roadside.edge.assembly import build_agent
from roadside.edge.health import fps_of, stream_state
from roadside.edge.settings import SourceConfig, load_agent_settings
from roadside.edge.sources import Frame
from roadside.shared.bundle import BrokerAddress, EnrollmentBundle
from roadside.shared.keys import KeyPair
from roadside.shared.schemas import StreamHealth
from tests.component.conftest import BrokerHarness

pytestmark = pytest.mark.timeout(60)


class StallingCamera:
    """Frames at 20 fps until ``stall`` is set; then nothing until ``resume`` (a reconnect) or ``end``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.reconnects = 0
        self.stall = threading.Event()
        self.resume = threading.Event()
        self.end = threading.Event()
        self._closed = threading.Event()

    def frames(self) -> Iterator[Frame]:
        index = 0
        while not self._closed.is_set() and not self.end.is_set():
            if self.stall.is_set():
                if self.resume.wait(0.05):
                    self.stall.clear()
                    self.resume.clear()
                    self.reconnects += 1
                continue
            yield Frame(self.name, index, time.time(), np.zeros((120, 160, 3), dtype=np.uint8))
            index += 1
            self._closed.wait(0.05)

    def close(self) -> None:
        self._closed.set()


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def camera() -> StallingCamera:
    return StallingCamera("cam0")


@pytest.fixture
def agent(broker: BrokerHarness, site: str, tmp_path: Path, camera: StallingCamera) -> Iterator[Agent]:
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
        sources=[{"type": "synthetic", "name": "cam0", "width": 160, "height": 120}],
        outbox={"path": str(tmp_path / "outbox.db")},
        metrics_port=free_loopback_port(),
    )

    def open_source(config: SourceConfig) -> StallingCamera:
        assert config.name == "cam0"
        return camera

    running = build_agent(settings, bundle, sources=open_source)
    running.health_collector.stale_after_s = 0.5  # the default (2 s or 5 frame periods) in less time
    running.start()
    try:
        yield running
    finally:
        running.stop(drain_s=0)


def test_a_stalled_camera_reads_0_fps_and_reconnecting_then_up_then_down(
    agent: Agent, camera: StallingCamera
) -> None:
    def cam0() -> StreamHealth:
        return agent.health().streams["cam0"]

    assert wait_until(lambda: cam0().state == "up" and cam0().fps > 0)
    assert cam0().reconnects == 0

    camera.stall.set()  # the outage: the old rate over the last 50 frames said ~20 fps here
    assert wait_until(lambda: cam0().state == "reconnecting")
    stalled = cam0()
    assert stalled.fps == 0
    assert stalled.last_frame_age_s is not None
    assert stalled.last_frame_age_s >= 0.5
    assert agent.metrics is not None
    samples = scrape(agent.metrics.url)
    assert samples[("roadside_agent_stream_fps", (("stream", "cam0"),))] == 0
    assert samples[("roadside_agent_stream_up", (("state", "reconnecting"), ("stream", "cam0")))] == 1
    assert samples[("roadside_agent_stream_up", (("state", "up"), ("stream", "cam0")))] == 0
    assert samples[("roadside_agent_stream_last_frame_age_seconds", (("stream", "cam0"),))] >= 0.5

    camera.resume.set()  # the camera is back
    assert wait_until(lambda: cam0().state == "up" and cam0().fps > 0)
    assert cam0().reconnects == 1
    samples = scrape(agent.metrics.url)
    assert samples[("roadside_agent_stream_reconnects_total", (("stream", "cam0"),))] == 1

    camera.end.set()  # the source gave up: its reader ended
    assert wait_until(lambda: cam0().state == "down")
    assert cam0().fps == 0


# The pure pieces ---------------------------------------------------------------------------


def test_the_rate_of_a_silent_stream_is_0() -> None:
    window = [i * 0.1 for i in range(50)]  # 10 fps, last frame at 4.9
    assert fps_of(window) == pytest.approx(10.0)
    assert fps_of(window, now=5.0, stale_after_s=2.0) == pytest.approx(10.0)
    assert fps_of(window, now=7.0, stale_after_s=2.0) == 0.0


def test_stream_state() -> None:
    assert stream_state(reading=True, last_frame_age_s=0.1, stale_after_s=2.0) == "up"
    assert stream_state(reading=True, last_frame_age_s=3.0, stale_after_s=2.0) == "reconnecting"
    assert stream_state(reading=True, last_frame_age_s=None, stale_after_s=2.0) == "reconnecting"
    assert stream_state(reading=False, last_frame_age_s=0.1, stale_after_s=2.0) == "down"
