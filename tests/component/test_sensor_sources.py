"""Sensor adapters against real local endpoints: a pseudo-terminal serial port and a real Mosquitto.

The serial device is a pty pair reached through a symlink, the way udev's
``/dev/serial/by-id/...`` names a USB adapter: unplugging it closes the pty
and removes the link; plugging it back makes a new pty behind the same link.
The local broker is a Mosquitto on a plain loopback listener, as a sensor
bus on the device would be.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import threading
import time
import tty
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from roadside.cloud.broker.mosquitto import find_mosquitto, free_loopback_port
from roadside.edge.sensors.base import SensorSample, SensorSource
from roadside.edge.sensors.config import MqttSensorConfig, SerialSensorConfig
from roadside.edge.sensors.mqtt_local import LocalMqttSensorSource
from roadside.edge.sensors.serial import SerialSensorSource, format_kv, format_nmea

pytestmark = pytest.mark.timeout(20)
WAIT_S = 5.0


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class Collector:
    """Runs a source's ``samples()`` on a named thread and queues what it yields."""

    def __init__(self, source: SensorSource) -> None:
        self.source = source
        self.samples: queue.Queue[SensorSample] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=f"test-{source.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for sample in self.source.samples():
            if isinstance(sample, SensorSample):  # these sources report no SourceEvent
                self.samples.put(sample)

    def take(self, n: int) -> list[SensorSample]:
        return [self.samples.get(timeout=WAIT_S) for _ in range(n)]

    def close(self) -> None:
        self.source.close()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "the source did not end after close()"


# -- serial -------------------------------------------------------------------


class PluggablePort:
    """A pty pair behind a stable symlink, which a test can unplug and plug back."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = self.slave = -1
        self.plug()

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no CR→LF translation before the reader sets its own mode
        self.link.unlink(missing_ok=True)
        self.link.symlink_to(os.ttyname(self.slave))

    def unplug(self) -> None:
        self.link.unlink()
        os.close(self.master)
        os.close(self.slave)
        self.master = self.slave = -1

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        if self.master >= 0:
            self.unplug()


@pytest.fixture
def port(tmp_path: Path) -> Iterator[PluggablePort]:
    pluggable = PluggablePort(tmp_path / "ttyRS0")
    yield pluggable
    pluggable.close()


def _serial_source(port: PluggablePort, protocol: str = "nmea") -> SerialSensorSource:
    config = SerialSensorConfig(
        name="aq0",
        port=str(port.link),
        protocol=protocol,  # type: ignore[arg-type]
        reconnect_base_s=0.05,
        reconnect_cap_s=0.2,
    )
    return SerialSensorSource(config)


def test_serial_nmea_lines_end_to_end_and_reconnect_after_unplug(port: PluggablePort) -> None:
    source = _serial_source(port)
    collector = Collector(source)
    try:
        assert wait_for(lambda: source.opens == 1)
        good = format_nmea([("pm25", 12.3, "ug/m3"), ("no2", 40.5, "ug/m3")])
        # Written in pieces, with noise between: a corrupted line and a line cut short.
        port.write(good[:9])
        port.write(good[9:] + good.replace(b"12.3", b"13.3") + good[:14] + b"\r\n")
        port.write(format_nmea([("pm25", 14.0, "ug/m3")]))
        got = collector.take(3)
        assert [(s.quantity, s.value, s.unit) for s in got] == [
            ("pm25", 12.3, "ug/m3"),
            ("no2", 40.5, "ug/m3"),
            ("pm25", 14.0, "ug/m3"),
        ]
        assert {s.sensor for s in got} == {"aq0"}
        assert abs(got[0].ts - time.time()) < WAIT_S
        assert wait_for(lambda: source.parser.rejected == {"bad_checksum": 1, "truncated": 1})

        port.unplug()
        time.sleep(0.3)  # a few failed reopen attempts against the missing link
        assert source.opens == 1
        port.plug()
        assert wait_for(lambda: source.opens == 2)
        port.write(format_nmea([("pm25", 15.5, "ug/m3")]))
        [after] = collector.take(1)
        assert (after.quantity, after.value) == ("pm25", 15.5)
        assert source.parser.accepted == 3
    finally:
        collector.close()


def test_serial_kv_lines_with_the_devices_own_time(port: PluggablePort) -> None:
    source = _serial_source(port, "kv")
    collector = Collector(source)
    try:
        assert wait_for(lambda: source.opens == 1)
        port.write(format_kv({"occupancy": 31.5, "noise": 68.25}, ts=1718000000.5))
        port.write(b"occupancy=abc\r\n")
        port.write(format_kv({"occupancy": 30.0}))
        a, b, c = collector.take(3)
        assert (a.quantity, a.value, a.unit, a.ts) == ("occupancy", 31.5, "%", 1718000000.5)
        assert (b.quantity, b.value, b.unit) == ("noise", 68.25, "dB(A)")
        assert (c.value, abs(c.ts - time.time()) < WAIT_S) == (30.0, True)
        assert source.parser.rejected == {"non_numeric": 1}
    finally:
        collector.close()


def test_serial_source_waits_for_a_port_that_is_not_there_yet(tmp_path: Path) -> None:
    link = tmp_path / "ttyRS9"
    config = SerialSensorConfig(name="aq9", port=str(link), reconnect_base_s=0.05, reconnect_cap_s=0.1)
    source = SerialSensorSource(config)
    collector = Collector(source)
    pluggable: PluggablePort | None = None
    try:
        time.sleep(0.2)
        assert source.opens == 0
        pluggable = PluggablePort(link)
        assert wait_for(lambda: source.opens == 1)
        pluggable.write(format_nmea([("noise", 55.0, "dB(A)")]))
        assert collector.take(1)[0].value == 55.0
    finally:
        collector.close()
        if pluggable is not None:
            pluggable.close()


# -- local MQTT ---------------------------------------------------------------


class LocalBroker:
    """Mosquitto on a plain loopback listener with a generated minimal config."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_loopback_port()
        self.config = workdir / "local-mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        assert wait_for(self._accepting), "mosquitto did not start listening"

    def _accepting(self) -> bool:
        import socket

        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
            return True
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(WAIT_S)
        self.process = None

    def publish(self, topic: str, payloads: list[bytes]) -> None:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex}"
        )
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        try:
            for payload in payloads:
                client.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)
        finally:
            client.disconnect()
            client.loop_stop()


@pytest.fixture
def local_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    broker = LocalBroker(tmp_path)
    broker.start()
    yield broker
    broker.stop()


def test_local_mqtt_readings_end_to_end_and_reconnect_after_a_broker_restart(
    local_broker: LocalBroker,
) -> None:
    topic_root = f"sensors/{uuid.uuid4().hex}"
    config = MqttSensorConfig(
        name="loop0",
        port=local_broker.port,
        topic=f"{topic_root}/#",
        reconnect_base_s=0.05,
        reconnect_cap_s=0.2,
    )
    source = LocalMqttSensorSource(config)
    collector = Collector(source)
    try:
        assert wait_for(lambda: source.subscribed == 1)
        local_broker.publish(
            f"{topic_root}/lane1",
            [
                b'{"quantity": "occupancy", "value": 22.5}',
                b"{oops",
                b'[{"quantity": "occupancy", "value": 23.0, "ts": 1718000000}, {"quantity": "noise", "value": 70}]',
            ],
        )
        a, b, c = collector.take(3)
        assert (a.sensor, a.quantity, a.value, a.unit) == ("loop0", "occupancy", 22.5, "%")
        assert (b.value, b.ts) == (23.0, 1718000000.0)
        assert (c.quantity, c.unit) == ("noise", "dB(A)")
        assert source.rejected == {"json": 1}

        local_broker.stop()
        time.sleep(0.3)  # the source notices and retries against a closed port
        local_broker.start()
        assert wait_for(lambda: source.subscribed == 2)
        assert source.connects == 2
        local_broker.publish(f"{topic_root}/lane1", [b'{"quantity": "occupancy", "value": 5.0}'])
        assert collector.take(1)[0].value == 5.0
        assert source.accepted == 3
    finally:
        collector.close()


def test_local_mqtt_source_starts_before_its_broker(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path)
    config = MqttSensorConfig(
        name="aq0", port=broker.port, topic="aq/#", reconnect_base_s=0.05, reconnect_cap_s=0.1
    )
    source = LocalMqttSensorSource(config)
    collector = Collector(source)
    try:
        time.sleep(0.2)
        assert source.connects == 0
        broker.start()
        assert wait_for(lambda: source.subscribed == 1)
        broker.publish("aq/x", [b'{"quantity": "pm25", "value": 9.5}'])
        assert collector.take(1)[0].value == 9.5
    finally:
        collector.close()
        broker.stop()
