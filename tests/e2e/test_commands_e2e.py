"""Commands over the real broker and hub: the hub sends, a running agent acts, acks come back sealed."""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from roadside.cloud.ingest.core import Accepted, Rejection
from roadside.edge.agent import Agent
from roadside.edge.control.keys import KeyStore, default_keys_path
from roadside.edge.settings import load_agent_settings
from roadside.shared.bundle import EnrollmentBundle
from tests.e2e.conftest import Loop

pytestmark = [pytest.mark.slow, pytest.mark.timeout(30)]


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


class HubSide:
    """The hub's own command path (``Hub.commands``, acks settled by ingest after durable
    writes), plus a tap recording the key id of every accepted message."""

    def __init__(self, loop: Loop, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sender = loop.hub.commands
        self.kids: list[tuple[str, str, str]] = []  # (device, kind, kid) of accepted messages
        core = loop.hub.ingest.core
        accept = core.accept

        def tapped(topic: str, payload: bytes, now_ms: int) -> Accepted | Rejection:
            result = accept(topic, payload, now_ms)
            if isinstance(result, Accepted):
                header = result.header
                self.kids.append((header.device_id, header.kind, header.kid))
            return result

        monkeypatch.setattr(core, "accept", tapped)

    def close(self) -> None:
        """Nothing to close: the hub owns the connection."""


@pytest.fixture
def hub(loop: Loop, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubSide]:
    side = HubSide(loop, monkeypatch)
    try:
        yield side
    finally:
        side.close()


def camera(name: str, seed: int = 0) -> dict[str, object]:
    # Real-time and small: two cores are shared by the broker, the hub and the agent.
    return {"type": "synthetic", "name": name, "seed": seed, "width": 320, "height": 240, "fps": 6}


def running_agent(tmp_path: Path, bundle: EnrollmentBundle, **overrides: object) -> Agent:
    settings = load_agent_settings(
        None,
        bundle=tmp_path / f"{bundle.device_id}.json",
        sources=[camera("cam0")],
        outbox={"path": str(tmp_path / f"{bundle.device_id}-outbox.db")},
        **overrides,
    )
    agent = Agent.from_settings(settings, bundle)
    agent.start()
    assert wait_for(lambda: agent.uplink.connected)
    return agent


def processed(agent: Agent, stream: str) -> int:
    for sample in agent.health_report().streams:
        if sample.name == stream:
            return sample.frames_processed
    return -1


def test_ping_add_and_remove_stream_at_run_time(loop: Loop, hub: HubSide, tmp_path: Path) -> None:
    bundle = loop.enroll("dev-cmd")
    agent = running_agent(tmp_path, bundle)
    try:
        ping = hub.sender.send("dev-cmd", "ping")
        ack = hub.sender.wait(ping.command.command_id, 10)
        assert ack is not None, "no ack for ping"
        assert (ack.ok, ack.detail) == (True, "pong")

        added = hub.sender.send("dev-cmd", "add_stream", {"source": camera("cam1", seed=4)})
        ack = hub.sender.wait(added.command.command_id, 15)
        assert ack is not None
        assert (ack.ok, ack.detail) == (True, "stream cam1 started")
        assert wait_for(lambda: processed(agent, "cam1") >= 5), agent.health_report()
        assert any(t.name == "source-cam1" and t.is_alive() for t in threading.enumerate())

        bad = hub.sender.send("dev-cmd", "add_stream", {"source": {"type": "video", "name": "cam2"}})
        ack = hub.sender.wait(bad.command.command_id, 10)
        assert ack is not None
        assert not ack.ok
        assert "source.video.uri: Field required" in ack.detail

        removed = hub.sender.send("dev-cmd", "remove_stream", {"name": "cam1"})
        ack = hub.sender.wait(removed.command.command_id, 15)
        assert ack is not None
        assert (ack.ok, ack.detail) == (True, "stream cam1 stopped")
        assert processed(agent, "cam1") == -1  # gone from health
        assert "cam1" not in agent.streams  # its pipeline state retired
        assert not any(t.name == "source-cam1" for t in threading.enumerate())
        before = processed(agent, "cam0")
        assert wait_for(lambda: processed(agent, "cam0") > before + 3)  # the other stream runs on
        assert "cam1" not in agent.streams
        assert hub.sender.unanswered("dev-cmd") == []
    finally:
        agent.stop(drain_s=2)
    assert loop.hub.ingest.rejected_messages == 0


def test_rotate_keys_round_trip(loop: Loop, hub: HubSide, tmp_path: Path) -> None:
    bundle = loop.enroll("dev-rot")
    old_kid = bundle.keypair().kid
    agent = running_agent(tmp_path, bundle, heartbeat_s=1.0)
    try:
        rotate = hub.sender.send("dev-rot", "rotate_keys")
        ack = hub.sender.wait(rotate.command.command_id, 10)
        assert ack is not None
        assert ack.ok, ack.detail
        offer = json.loads(ack.detail)
        new_kid = offer["kid"]
        assert offer["rotate"] == "pending"
        assert new_kid != old_kid
        # The sender registers the new key and confirms it; the device's ack of that says it switched.
        assert wait_for(lambda: hub.sender.key_in_use("dev-rot") == new_kid), hub.sender.unanswered()
        assert loop.registry.devices.key("dev-rot", new_kid) is not None
        assert ("dev-rot", "ack", old_kid) in hub.kids  # the offer came under the old key

        seen = len(hub.kids)
        agent.heartbeat()
        assert wait_for(lambda: ("dev-rot", "health", new_kid) in hub.kids[seen:])
        ping = hub.sender.send("dev-rot", "ping")  # sealed to the new key now
        ack = hub.sender.wait(ping.command.command_id, 10)
        assert ack is not None
        assert ack.ok
        assert all(kid == new_kid for dev, _kind, kid in hub.kids[seen:] if dev == "dev-rot")
    finally:
        agent.stop(drain_s=2)
    assert loop.hub.ingest.rejected_messages == 0
    store = KeyStore(default_keys_path(agent.settings), "dev-rot", bundle.keypair())
    assert store.load().current.kid == new_kid  # a restarted agent comes back with the new key
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_reload_config_applies_lines_and_heartbeat_live_and_names_what_needs_a_restart(
    loop: Loop, hub: HubSide, tmp_path: Path
) -> None:
    bundle = loop.enroll("dev-cfg")
    config = tmp_path / "agent.toml"
    outbox = tmp_path / "dev-cfg-outbox.db"
    head = f'bundle = "{tmp_path / "dev-cfg.json"}"\n[outbox]\npath = "{outbox}"\n'
    cam0 = '[[sources]]\ntype = "synthetic"\nname = "cam0"\nwidth = 320\nheight = 240\nfps = 6\n'
    config.write_text(head + cam0)
    agent = Agent.from_settings(
        load_agent_settings(config, bundle=tmp_path / "dev-cfg.json"), bundle, config_path=config
    )
    agent.start()
    try:
        assert wait_for(lambda: agent.uplink.connected and "cam0" in agent.streams)
        before = agent.streams["cam0"]
        config.write_text(
            "heartbeat_s = 5\n"
            + head
            + "[model]\nconf_threshold = 0.6\n"
            + cam0
            + '[[lines]]\nname = "stop"\nstart = [0, 120]\nend = [320, 120]\n'
        )
        reload = hub.sender.send("dev-cfg", "reload_config")
        ack = hub.sender.wait(reload.command.command_id, 15)
        assert ack is not None
        assert ack.ok, ack.detail
        assert ack.detail == "analytics reset; heartbeat 5 s; needs a restart to apply: model"
        assert agent.settings.heartbeat_s == 5
        assert agent.settings.model.conf_threshold != 0.6  # the detector was not rebuilt
        assert agent.settings.lines[0].name == "stop"

        def rebuilt_with_the_new_line() -> bool:
            state = agent.streams.get("cam0")
            return state is not None and state is not before and "stop" in str(state.analytics.config.lines)

        assert wait_for(rebuilt_with_the_new_line)
    finally:
        agent.stop(drain_s=2)
