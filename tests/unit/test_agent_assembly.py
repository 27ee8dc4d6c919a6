"""The agent assembled from its parts with an in-memory uplink: no broker, no sockets.

Frames from a scripted source run through the real pipeline (the shipped
detector on CPU, analytics, the outbox); a command sealed by the hub's key
comes in through the uplink and its ack goes out; a start that fails half-way
unwinds what it started, and ``stop`` after it does nothing.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from roadside.edge.agent import Agent
from roadside.edge.assembly import build_agent
from roadside.edge.outbox import Outbox
from roadside.edge.settings import AgentSettings, SourceConfig, load_agent_settings
from roadside.edge.sources import Frame, FrameSource
from roadside.edge.transport.delivery import LinkState, UplinkStatus
from roadside.shared.bundle import BrokerAddress, EnrollmentBundle
from roadside.shared.envelope import HubCommandSealer
from roadside.shared.errors import ConfigError, TransportError
from roadside.shared.keys import KeyPair
from roadside.shared.queues import Overflow
from roadside.shared.schemas import Command, encode

pytestmark = pytest.mark.timeout(60)

HUB = KeyPair.generate()
FRAMES = 12


class InMemoryUplink:
    """Takes what the outbox holds, as the broker would acknowledge it; commands are handed in."""

    def __init__(self, outbox: Outbox, on_command: Callable[[bytes], None], fail_start: bool = False) -> None:
        self.outbox = outbox
        self.on_command = on_command
        self.sent: list[tuple[str, bytes]] = []
        self.fail_start = fail_start
        self.started = self.stopped = False
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        return self.started and not self.stopped

    def start(self) -> None:
        if self.fail_start:
            raise TransportError("no link")
        self.started = True

    def stop(self, drain_s: float = 0.0) -> None:
        self.drain()
        self.stopped = True

    def status(self) -> UplinkStatus:
        from datetime import UTC, datetime

        return UplinkStatus(LinkState.PUBLISHING, datetime.now(UTC))

    def use_keys(self, own: KeyPair) -> None:
        """Sealing is not this uplink's business."""

    def drain(self) -> list[str]:
        """Send (here: keep) everything the outbox holds; the kinds sent."""
        with self._lock:
            items = self.outbox.pending(1000)
            for item in items:
                self.sent.append((item.kind, item.payload))
                self.outbox.ack(item.seq)
            return [item.kind for item in items]


class ScriptedCamera:
    """``FRAMES`` grey frames, then the stream ends."""

    reconnects = 0

    def __init__(self, name: str) -> None:
        self.name = name
        self._closed = threading.Event()

    def frames(self) -> Iterator[Frame]:
        for index in range(FRAMES):
            if self._closed.is_set():
                return
            yield Frame(self.name, index, time.time(), np.full((240, 320, 3), 90, dtype=np.uint8))

    def close(self) -> None:
        self._closed.set()


def _bundle() -> EnrollmentBundle:
    return EnrollmentBundle(
        device_id="dev-mem",
        site="lab",
        broker=BrokerAddress(host="127.0.0.1", port=1),
        ca_cert_pem="unused",
        client_cert_pem="unused",
        client_key_pem="unused",
        device_keys=KeyPair.generate().to_json(),
        hub_keys=HUB.public().to_json(),
    )


def _settings(tmp_path: Path, metrics_port: int = 0) -> AgentSettings:
    return load_agent_settings(
        None,
        bundle=tmp_path / "bundle.json",
        sources=[{"type": "video", "name": "cam0", "uri": "scripted"}],
        outbox={"path": str(tmp_path / "outbox.db")},
        metrics_port=metrics_port,
    )


def _agent(
    tmp_path: Path, metrics_port: int = 0, fail_start: bool = False
) -> tuple[Agent, list[InMemoryUplink]]:
    links: list[InMemoryUplink] = []

    def uplink(
        _bundle: EnrollmentBundle, outbox: Outbox, on_command: Callable[[bytes], None]
    ) -> InMemoryUplink:
        links.append(InMemoryUplink(outbox, on_command, fail_start))
        return links[-1]

    def cameras(config: SourceConfig) -> FrameSource:
        return ScriptedCamera(config.name)

    agent = build_agent(
        _settings(tmp_path, metrics_port),
        _bundle(),
        uplink=uplink,
        sources=cameras,
        frame_overflow=Overflow.BLOCK,  # every scripted frame is processed, none dropped
    )
    return agent, links


def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_frames_run_through_the_pipeline_and_commands_are_answered_without_a_broker(tmp_path: Path) -> None:
    agent, (link,) = _agent(tmp_path)
    agent.start()
    try:
        assert agent.sources_done(20)
        assert _wait(lambda: "cam0" in agent.streams and agent.streams["cam0"].frames == FRAMES), (
            agent.frames.dropped,
            {name: state.frames for name, state in agent.streams.items()},
        )
        assert agent.health_report().streams[0].frames_processed == FRAMES
        agent.heartbeat()
        command = Command(command_id=uuid.uuid4(), type="ping", args={})
        device = agent.bundle.keypair().public()
        wire = HubCommandSealer(HUB).seal("dev-mem", device, 1, encode(command), int(time.time() * 1000))
        link.on_command(wire)  # as the broker would deliver it
        assert _wait(lambda: "ack" in [kind for kind, _ in link.sent] or "ack" in link.drain())
    finally:
        agent.stop(drain_s=0.0)
    kinds = [kind for kind, _ in link.sent]
    assert {"health", "ack"} <= set(kinds)
    assert agent.commands is not None
    assert agent.commands.results[("ping", "ok")] == 1
    assert link.stopped
    assert agent.outbox_backlog_at_stop == 0


def test_a_start_that_fails_unwinds_and_stop_after_it_does_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        agent, (link,) = _agent(tmp_path, metrics_port=taken.getsockname()[1])
        with pytest.raises(ConfigError, match="metrics"):
            agent.start()
    agent.stop()  # used to fail on the command thread that was never started
    assert not link.started
    assert agent.outbox_backlog_at_stop == 0  # the outbox was closed on the way out


def test_a_part_failing_later_in_start_stops_those_started_before_it(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    agent, _ = _agent(tmp_path, metrics_port=port, fail_start=True)
    with pytest.raises(TransportError):
        agent.start()  # /metrics came up first, then the uplink failed
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # /metrics let its port go
    agent.stop()
