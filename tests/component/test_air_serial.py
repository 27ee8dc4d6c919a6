"""Air-sensor drivers end to end over a pseudo-terminal: frames in, samples and dropout events out.

The sensor end is a pty pair behind a stable symlink (as udev names a USB
adapter), unplugged by closing the pty and removing the link
(``PluggablePort`` from the serial-source tests). The fake sensors speak the
datasheets' frames and answer the commands the driver sends.
"""

from __future__ import annotations

import os
import queue
import select
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from roadside.edge.outbox import Priority
from roadside.edge.sensors.air import plantower, sds011, sps30
from roadside.edge.sensors.air.reader import AirSerialSource
from roadside.edge.sensors.base import SensorSample, SourceEvent
from roadside.edge.sensors.config import AirSerialSensorConfig
from roadside.edge.sensors.pipeline import SensorPipeline
from roadside.shared.schemas import EventsMessage, SensorsMessage, decode_uplink
from tests.component.test_sensor_sources import PluggablePort, wait_for

pytestmark = pytest.mark.timeout(30)
WAIT_S = 8.0


@pytest.fixture
def port(tmp_path: Path) -> Iterator[PluggablePort]:
    pluggable = PluggablePort(tmp_path / "ttyUSB-air")
    yield pluggable
    pluggable.close()


def _config(port: PluggablePort, kind: str, **extra: object) -> AirSerialSensorConfig:
    return AirSerialSensorConfig.model_validate(
        {"name": f"pm-{kind}", "type": kind, "port": str(port.link), "period_s": 0.2,
         "dropout_after_s": 0.6, "reconnect_base_s": 0.05, "reconnect_cap_s": 0.2} | extra
    )  # fmt: skip


def _read_master(port: PluggablePort, timeout: float = 0.05) -> bytes:
    ready, _, _ = select.select([port.master], [], [], timeout)
    return os.read(port.master, 4096) if ready else b""


class Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def __call__(self, kind: str, payload: bytes, priority: Priority) -> None:
        with self.lock:
            self.messages.append((kind, payload))

    def decoded(self, kind: str) -> list[object]:
        with self.lock:
            return [decode_uplink(k, p) for k, p in self.messages if k == kind]

    def readings(self) -> list[tuple[str, float]]:
        return [
            (r.quantity, r.value)
            for m in self.decoded("sensors")
            if isinstance(m, SensorsMessage)
            for r in m.records
        ]

    def event_types(self) -> list[str]:
        return [e.type for m in self.decoded("events") if isinstance(m, EventsMessage) for e in m.records]


def _pms(pm25: int) -> bytes:
    return plantower.encode_frame({"pm1": pm25 - 2, "pm25": pm25, "pm10": pm25 + 3})


def test_pms5003_through_the_pipeline_with_corruption_unplug_and_replug(port: PluggablePort) -> None:
    source = AirSerialSource(_config(port, "pms5003"))
    sink = Sink()
    pipeline = SensorPipeline([source.config], sink, sources=[source], batch_s=0.05)
    pipeline.start()
    try:
        assert wait_for(lambda: source.opens == 1, WAIT_S)
        assert wait_for(lambda: plantower.set_active() in _read_master(port), WAIT_S)  # the mode, on open
        corrupt = bytearray(_pms(99))
        corrupt[10] ^= 0x40
        port.write(b"\x00\x17" + _pms(11)[:20])  # line noise, then a frame in two writes
        port.write(_pms(11)[20:] + bytes(corrupt) + _pms(12)[:9] + _pms(13))
        assert wait_for(lambda: [v for q, v in sink.readings() if q == "pm25"] == [11.0, 13.0], WAIT_S)
        assert wait_for(lambda: source.stats.rejected == {"bad_checksum": 1, "truncated": 1}, WAIT_S)
        assert source.stats.accepted == 2
        assert sink.event_types() == []

        port.unplug()
        assert wait_for(lambda: sink.event_types() == ["sensor_dropout"], WAIT_S)
        assert source.silence.dropouts == 1
        port.plug()
        assert wait_for(lambda: source.opens == 2, WAIT_S)
        port.write(_pms(14))
        assert wait_for(lambda: (("pm25", 14.0)) in sink.readings(), WAIT_S)
        assert sink.event_types() == ["sensor_dropout"]  # one event per silence
    finally:
        pipeline.stop()
    assert pipeline.source_events == {"dropout": 1}
    quantities = {q for q, _ in sink.readings()}
    assert {"pm1", "pm25", "pm10", "pm25_cf1", "n03"} <= quantities


class Responder:
    """A sensor that answers each command frame it reads with ``answer(command_bytes)``."""

    def __init__(self, port: PluggablePort, answer: Callable[[bytes], bytes]) -> None:
        self.port, self.answer = port, answer
        self.received = bytearray()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-responder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data = _read_master(self.port)
            except OSError:
                return
            if data:
                self.received += data
                reply = self.answer(data)
                if reply:
                    os.write(self.port.master, reply)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT_S)


class Collector:
    def __init__(self, source: AirSerialSource) -> None:
        self.source = source
        self.items: queue.Queue[SensorSample | SourceEvent] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="test-air-collector", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for item in self.source.samples():
            self.items.put(item)

    def values(self, quantity: str, n: int) -> list[float]:
        out: list[float] = []
        deadline = time.monotonic() + WAIT_S
        while len(out) < n and time.monotonic() < deadline:
            try:
                item = self.items.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(item, SensorSample) and item.quantity == quantity:
                out.append(item.value)
        return out

    def close(self) -> None:
        self.source.close()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive()


def test_sps30_request_response_with_stuffed_values(port: PluggablePort) -> None:
    # Exact in float32, and each carries a byte the link must stuff: 9.0625 is 0x41110000,
    # 2.296875 0x40130000, 63.25 0x427D0000, 0.9921875 0x3F7E0000.
    values = {"pm1": 9.0625, "pm25": 17.0, "pm4": 2.296875, "pm10": 63.25, "nc05": 0.9921875}
    polls = []

    def answer(command: bytes) -> bytes:
        replies = b""
        for frame in command.split(b"\x7e"):
            if frame == sps30.start_measurement()[1:-1]:
                replies += sps30.miso(sps30.CMD_START)
            elif frame == sps30.read_measured_values()[1:-1]:
                polls.append(frame)
                empty = len(polls) % 2 == 0  # every other poll: no new data yet
                replies += sps30.miso(sps30.CMD_READ, b"" if empty else sps30.encode_values(values))
        return replies

    source = AirSerialSource(_config(port, "sps30", period_s=0.1))
    responder = Responder(port, answer)
    collector = Collector(source)
    try:
        assert collector.values("pm25", 3) == [17.0] * 3
        assert collector.values("pm4", 1) == [2.296875]
        assert collector.values("nc05", 1) == [0.9921875]
        reply = sps30.miso(sps30.CMD_READ, sps30.encode_values(values))
        assert all(pair in reply for pair in (b"\x7d\x31", b"\x7d\x33", b"\x7d\x5d", b"\x7d\x5e"))
        assert source.stats.acks >= 2  # the start acknowledgement and the empty replies
        assert source.stats.rejected_total == 0
    finally:
        collector.close()
        responder.close()


def test_pms_passive_mode_asks_for_each_frame(port: PluggablePort) -> None:
    def pms_answer(command: bytes) -> bytes:
        return _pms(30) if plantower.read_passive() in command else b""

    source = AirSerialSource(_config(port, "pms7003", mode="passive", period_s=0.1))
    responder = Responder(port, pms_answer)
    collector = Collector(source)
    try:
        assert collector.values("pm25", 2) == [30.0, 30.0]
        assert bytes(responder.received).startswith(plantower.set_passive())
    finally:
        collector.close()
        responder.close()


def test_sds011_sets_its_working_period_and_reads_frames(port: PluggablePort) -> None:
    source = AirSerialSource(_config(port, "sds011", working_period_min=5))
    collector = Collector(source)
    try:
        assert wait_for(lambda: sds011.set_working_period(5) in _read_master(port), WAIT_S)
        port.write(bytes.fromhex("aac0d4043a0aa1601dab") + sds011.encode_frame(8.4, 12.0))
        assert collector.values("pm25", 2) == [123.6, 8.4]
    finally:
        collector.close()


def test_a_sensor_that_never_answers_is_one_dropout(tmp_path: Path) -> None:
    missing = PluggablePort(tmp_path / "ttyUSB-gone")
    missing.unplug()
    source = AirSerialSource(_config(missing, "sds011"))
    collector = Collector(source)
    try:
        deadline = time.monotonic() + WAIT_S
        events: list[SourceEvent] = []
        while not events and time.monotonic() < deadline:
            try:
                item = collector.items.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(item, SourceEvent):
                events.append(item)
        assert [(e.kind, e.sensor, e.driver) for e in events] == [("dropout", "pm-sds011", "sds011")]
        assert events[0].silent_s >= 0.6
        time.sleep(0.5)
        assert source.silence.dropouts == 1
    finally:
        collector.close()
