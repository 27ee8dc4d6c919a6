"""Commands on the device: each type, idempotency by id, refusals with a reason, key rotation."""

from __future__ import annotations

import json
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from roadside.cloud.fleet.command_sender import CommandSender
from roadside.edge.control.handler import CommandHandler, Outcome
from roadside.edge.control.journal import AckJournal
from roadside.edge.control.keys import KeyState, KeyStore
from roadside.edge.control.reload import plan_reload
from roadside.edge.control.verifier import CommandVerifier, InvalidCommandError
from roadside.edge.settings import AgentSettings, SourceConfig, load_agent_settings
from roadside.shared.envelope import HubCommandSealer
from roadside.shared.errors import ConfigError, ReplayError, TransportError, UnknownKeyError
from roadside.shared.keys import KeyPair, PublicKeys, b64, unb64
from roadside.shared.schemas import AckMessage, Command, CommandType, encode

HUB = KeyPair.generate()
ENROLLED = KeyPair.generate()
NOW_MS = 1_800_000_000_000


def synthetic(name: str, seed: int = 0) -> dict[str, Any]:
    return {"type": "synthetic", "name": name, "seed": seed}


class FakeAgent:
    """The agent surface, recording what commands did to it."""

    def __init__(self, sources: list[dict[str, Any]] | None = None) -> None:
        self.settings = AgentSettings(sources=sources if sources is not None else [synthetic("cam0")])
        self.running: dict[str, SourceConfig] = {s.name: s for s in self.settings.sources}
        self.calls: list[tuple[str, object]] = []
        self.keys: KeyState | None = None

    def stream_configs(self) -> dict[str, SourceConfig]:
        return dict(self.running)

    def add_stream(self, config: SourceConfig) -> None:
        if config.name == "broken":
            raise TransportError(f"cannot open video source 'broken' at {getattr(config, 'uri', '')!r}")
        self.calls.append(("add", config.name))
        self.running[config.name] = config

    def remove_stream(self, name: str) -> None:
        self.calls.append(("remove", name))
        del self.running[name]

    def apply_live_settings(self, settings: AgentSettings, reset_analytics: bool) -> None:
        self.calls.append(("settings", reset_analytics))
        self.settings = settings

    def use_keys(self, keys: KeyState) -> None:
        self.calls.append(("keys", keys.current.kid))
        self.keys = keys


@pytest.fixture
def agent() -> FakeAgent:
    return FakeAgent()


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "bundle.keys.json", "dev-1", ENROLLED)


@pytest.fixture
def handler(agent: FakeAgent, store: KeyStore) -> CommandHandler:
    return CommandHandler(agent, store, store.load())


def command(kind: CommandType, **args: Any) -> Command:
    return Command(type=kind, args=args)


# ping, ota ----------------------------------------------------------------------------


def test_ping_answers_pong(handler: CommandHandler) -> None:
    cmd = command("ping")
    assert handler.handle(cmd) == AckMessage(command_id=cmd.command_id, ok=True, detail="pong")


def test_unexpected_arguments_are_refused_with_the_field_named(handler: CommandHandler) -> None:
    ack = handler.handle(command("ping", loud=True))
    assert not ack.ok
    assert ack.detail.startswith("bad arguments for ping: loud:")


def test_ota_is_a_hook_that_answers_not_installed_until_registered(handler: CommandHandler) -> None:
    ack = handler.handle(command("ota", model="detector", version="2"))
    assert not ack.ok
    assert "not installed" in ack.detail
    handler.register("ota", lambda c: Outcome(True, f"installing {c.args['version']}"))
    assert handler.handle(command("ota", version="2")).detail == "installing 2"


def test_a_failing_handler_becomes_a_nack_not_a_dead_thread(handler: CommandHandler) -> None:
    def boom(_c: Command) -> Outcome:
        raise RuntimeError("bug")

    handler.register("ota", boom)
    ack = handler.handle(command("ota"))
    assert (ack.ok, ack.detail) == (False, "internal error: RuntimeError")


# add_stream, remove_stream --------------------------------------------------------------


def test_add_stream_starts_it_once_even_when_the_command_is_redelivered(
    handler: CommandHandler, agent: FakeAgent
) -> None:
    cmd = command("add_stream", source=synthetic("cam1"))
    first = handler.handle(cmd)
    again = handler.handle(cmd)
    assert first.ok
    assert first.detail == "stream cam1 started"
    assert again == first
    assert agent.calls == [("add", "cam1")]
    assert handler.results[("add_stream", "duplicate")] == 1


def test_add_stream_of_a_running_stream(handler: CommandHandler, agent: FakeAgent) -> None:
    same = handler.handle(command("add_stream", source=synthetic("cam0")))
    assert (same.ok, same.detail) == (True, "stream cam0 is already running")
    other = handler.handle(command("add_stream", source=synthetic("cam0", seed=9)))
    assert not other.ok
    assert "exists with other settings" in other.detail
    assert agent.calls == []


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({}, "source: Field required"),
        ({"source": {"type": "thermal", "name": "x"}}, "source: Input tag 'thermal'"),
        ({"source": {"type": "video", "name": "cam1"}}, "source.video.uri: Field required"),
        ({"source": synthetic("cam 1")}, "stream name 'cam 1' is not allowed"),
        (
            {"source": {"type": "video", "name": "broken", "uri": "rtsp://admin:s3cret@10.0.0.5/s"}},
            "cannot open video source 'broken' at 'rtsp://admin:***@10.0.0.5/s'",
        ),
    ],
)
def test_add_stream_with_bad_arguments_is_refused_with_a_reason(
    handler: CommandHandler, args: dict[str, Any], reason: str
) -> None:
    ack = handler.handle(Command(type="add_stream", args=args))
    assert not ack.ok
    assert reason in ack.detail


def test_remove_stream(handler: CommandHandler, agent: FakeAgent) -> None:
    ack = handler.handle(command("remove_stream", name="cam0"))
    assert (ack.ok, ack.detail) == (True, "stream cam0 stopped")
    missing = handler.handle(command("remove_stream", name="cam7"))
    assert (missing.ok, missing.detail) == (False, "no stream named 'cam7' (running: none)")
    assert agent.calls == [("remove", "cam0")]


# reload_config -------------------------------------------------------------------------------


def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def test_reload_applies_streams_lines_and_heartbeat_and_names_what_needs_a_restart(
    tmp_path: Path, agent: FakeAgent, store: KeyStore
) -> None:
    config = write_config(
        tmp_path / "agent.toml",
        """
heartbeat_s = 10
[model]
conf_threshold = 0.5
[[sources]]
type = "synthetic"
name = "cam1"
[[lines]]
name = "stop"
start = [0, 10]
end = [100, 10]
""",
    )
    handler = CommandHandler(agent, store, store.load(), lambda: load_agent_settings(config))
    ack = handler.handle(command("reload_config"))
    assert ack.ok, ack.detail
    assert ack.detail == (
        "stopped cam0; analytics reset; heartbeat 10 s; started cam1; needs a restart to apply: model"
    )
    assert agent.calls == [("remove", "cam0"), ("settings", True), ("add", "cam1")]
    assert agent.settings.heartbeat_s == 10
    assert agent.settings.model.conf_threshold == AgentSettings().model.conf_threshold  # not live


def test_reload_of_an_invalid_file_changes_nothing(tmp_path: Path, agent: FakeAgent, store: KeyStore) -> None:
    config = write_config(tmp_path / "agent.toml", "heartbeat_s = 0.1\n")
    handler = CommandHandler(agent, store, store.load(), lambda: load_agent_settings(config))
    ack = handler.handle(command("reload_config"))
    assert not ack.ok
    assert "heartbeat_s" in ack.detail
    assert agent.calls == []


def test_reload_without_a_config_file(handler: CommandHandler) -> None:
    ack = handler.handle(command("reload_config"))
    assert (ack.ok, ack.detail) == (False, "the agent was started without a config file: nothing to reload")


def test_reload_reports_a_stream_that_failed_to_start(
    tmp_path: Path, agent: FakeAgent, store: KeyStore
) -> None:
    config = write_config(
        tmp_path / "agent.toml",
        '[[sources]]\ntype = "synthetic"\nname = "cam0"\n'
        '[[sources]]\ntype = "video"\nname = "broken"\nuri = "rtsp://nowhere"\n',
    )
    handler = CommandHandler(agent, store, store.load(), lambda: load_agent_settings(config))
    ack = handler.handle(command("reload_config"))
    assert not ack.ok
    assert (
        ack.detail == "nothing changed; failed: broken: cannot open video source 'broken' at 'rtsp://nowhere'"
    )


def test_plan_reload_restarts_changed_streams_and_stops_ones_added_at_run_time() -> None:
    current = AgentSettings(sources=[synthetic("cam0"), synthetic("cam1")])
    running = {s.name: s for s in current.sources} | {
        "extra": AgentSettings(sources=[synthetic("extra")]).sources[0]
    }
    new = AgentSettings(sources=[synthetic("cam0"), synthetic("cam1", seed=5)], frame_queue=4)
    plan = plan_reload(running, current, new)
    assert plan.remove == ("extra", "cam1")
    assert [s.name for s in plan.start] == ["cam1"]
    assert plan.changed == ("cam1",)
    assert not plan.analytics_changed
    assert not plan.heartbeat_changed
    assert plan.needs_restart == ("frame_queue",)
    assert plan_reload({s.name: s for s in current.sources}, current, current).empty


# rotate_keys ---------------------------------------------------------------------------------------


def offer_of(ack: AckMessage) -> dict[str, str]:
    offer: dict[str, str] = json.loads(ack.detail)
    return offer


def test_rotation_offers_one_persisted_key_and_switches_only_when_confirmed(
    handler: CommandHandler, agent: FakeAgent, store: KeyStore
) -> None:
    begin = command("rotate_keys")
    ack = handler.handle(begin)
    assert ack.ok
    offer = offer_of(ack)
    public = PublicKeys(unb64(offer["x25519"]), unb64(offer["ed25519"]))
    assert offer["rotate"] == "pending"
    assert public.kid == offer["kid"] != ENROLLED.kid
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.load().pending is not None
    assert store.load().current == ENROLLED
    assert agent.keys is not None
    assert agent.keys.current == ENROLLED
    assert ENROLLED.to_json()["x25519"] not in ack.detail

    assert handler.handle(begin) == ack  # redelivered: same ack
    assert offer_of(handler.handle(command("rotate_keys")))["kid"] == offer["kid"]  # asked again: same key

    wrong = handler.handle(command("rotate_keys", confirm="0123456789abcdef"))
    assert not wrong.ok
    assert "no pending key 0123456789abcdef" in wrong.detail
    done = handler.handle(command("rotate_keys", confirm=offer["kid"]))
    assert done.ok
    assert offer_of(done) == {"rotate": "active", "kid": offer["kid"]}
    assert agent.keys.current.kid == offer["kid"]
    assert agent.keys.pending is None
    reloaded = store.load()
    assert reloaded.current.kid == offer["kid"]
    assert reloaded.pending is None
    assert handler.handle(command("rotate_keys", confirm=offer["kid"])).ok  # confirmed twice: still fine


def test_confirm_with_a_malformed_key_id_is_refused(handler: CommandHandler) -> None:
    ack = handler.handle(command("rotate_keys", confirm="../../etc/passwd"))
    assert not ack.ok
    assert ack.detail.startswith("bad arguments for rotate_keys: confirm:")


def test_a_keys_file_from_an_earlier_enrollment_is_ignored(tmp_path: Path) -> None:
    old = KeyStore(tmp_path / "k.json", "dev-1", KeyPair.generate())
    old.save(KeyState(KeyPair.generate()))
    assert KeyStore(tmp_path / "k.json", "dev-1", ENROLLED).load() == KeyState(ENROLLED)


# Idempotency across restarts -------------------------------------------------------------------------


def test_the_journal_answers_a_command_seen_before_a_restart(
    tmp_path: Path, agent: FakeAgent, store: KeyStore
) -> None:
    journal = tmp_path / "outbox.commands.json"
    cmd = command("add_stream", source=synthetic("cam1"))
    first = CommandHandler(agent, store, store.load(), journal=AckJournal(journal)).handle(cmd)
    restarted = CommandHandler(FakeAgent(), store, store.load(), journal=AckJournal(journal))
    assert restarted.handle(cmd) == first
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600


def test_the_journal_keeps_the_latest(tmp_path: Path) -> None:
    journal = AckJournal(None, size=2)
    acks = [AckMessage(command_id=uuid.uuid4(), ok=True) for _ in range(3)]
    for ack in acks:
        journal.record(ack)
    assert journal.get(acks[0].command_id) is None
    assert journal.get(acks[2].command_id) == acks[2]


# Verification --------------------------------------------------------------------------------------------


def seal_for(device: KeyPair, cmd: Command | bytes, seq: int) -> bytes:
    body = cmd if isinstance(cmd, bytes) else encode(cmd)
    return HubCommandSealer(HUB).seal("dev-1", device.public(), seq, body, NOW_MS)


def test_verifier_accepts_current_and_pending_keys_and_refuses_replays() -> None:
    pending = KeyPair.generate()
    verifier = CommandVerifier("dev-1", HUB.public(), [ENROLLED])
    ping = command("ping")
    assert verifier.open(seal_for(ENROLLED, ping, 1), NOW_MS) == ping
    with pytest.raises(UnknownKeyError):
        verifier.open(seal_for(pending, ping, 2), NOW_MS)
    verifier.set_keys([ENROLLED, pending])
    assert verifier.open(seal_for(pending, ping, 3), NOW_MS) == ping
    with pytest.raises(ReplayError):  # one window for all keys
        verifier.open(seal_for(ENROLLED, ping, 3), NOW_MS)


def test_an_authentic_but_invalid_command_is_nacked_by_its_id(handler: CommandHandler) -> None:
    command_id = uuid.uuid4()
    body = json.dumps(
        {"schema": 1, "command_id": str(command_id), "type": "reboot", "issued_at": "2027-01-01T00:00:00Z"}
    )
    verifier = CommandVerifier("dev-1", HUB.public(), [ENROLLED])
    with pytest.raises(InvalidCommandError) as caught:
        verifier.open(seal_for(ENROLLED, body.encode(), 1), NOW_MS)
    assert (caught.value.command_id, caught.value.command_type) == (command_id, "reboot")
    ack = handler.invalid(caught.value)
    assert ack is not None
    assert not ack.ok
    assert ack.command_id == command_id
    assert ack.detail.startswith("invalid command: type:")


# The hub's sender ------------------------------------------------------------------------------------------


class FakeRegistry:
    def __init__(self) -> None:
        self.keys: dict[str, list[PublicKeys]] = {"dev-1": [ENROLLED.public()]}

    def active_keys(self, device_id: str) -> list[PublicKeys]:
        return list(self.keys.get(device_id, []))

    def key(self, device_id: str, kid: str) -> tuple[str, PublicKeys] | None:
        found = [k for k in self.keys.get(device_id, []) if k.kid == kid]
        return ("site", found[0]) if found else None

    def add_key(self, device_id: str, keys: PublicKeys, *, actor: str = "x") -> None:
        self.keys[device_id].append(keys)


class FakeBroker:
    class Sent:
        rc = 0

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int]] = []

    def publish(self, topic: str, payload: bytes, qos: int) -> FakeBroker.Sent:
        self.published.append((topic, payload, qos))
        return FakeBroker.Sent()


def test_sender_seals_for_the_device_with_increasing_sequence_numbers() -> None:
    broker, device = FakeBroker(), CommandVerifier("dev-1", HUB.public(), [ENROLLED])
    sender = CommandSender(HUB, FakeRegistry(), broker, clock_ms=lambda: NOW_MS)  # a clock that stands still
    first = sender.send("dev-1", "ping")
    sender.send("dev-1", "remove_stream", {"name": "cam0"})
    assert [(t, q) for t, _p, q in broker.published] == [("roadside/v1/cmd/dev-1", 1)] * 2
    assert device.open(broker.published[0][1], NOW_MS) == first.command
    assert device.open(broker.published[1][1], NOW_MS).type == "remove_stream"  # not a replay
    assert sender.resend_unacked(older_than_s=0) == 2
    assert device.open(broker.published[2][1], NOW_MS) == first.command  # same id, sealed anew
    assert first.attempts == 2
    with pytest.raises(ConfigError, match="no active key"):
        sender.send("dev-9", "ping")


def test_sender_matches_acks_and_ignores_strays() -> None:
    sender = CommandSender(HUB, FakeRegistry(), FakeBroker())
    sent = sender.send("dev-1", "ping")
    assert sender.on_ack("dev-2", AckMessage(command_id=sent.command.command_id, ok=True)) is None
    assert sender.on_ack("dev-1", AckMessage(command_id=uuid.uuid4(), ok=True)) is None
    assert sender.on_ack("dev-1", AckMessage(command_id=sent.command.command_id, ok=True, detail="pong"))
    assert sender.wait(sent.command.command_id, 0) == AckMessage(
        command_id=sent.command.command_id, ok=True, detail="pong"
    )
    assert sent.as_dict()["state"] == "ok"
    assert sender.unanswered() == []


def test_sender_registers_an_offered_key_and_confirms_it(handler: CommandHandler) -> None:
    registry, broker = FakeRegistry(), FakeBroker()
    sender = CommandSender(HUB, registry, broker)
    device = CommandVerifier("dev-1", HUB.public(), [ENROLLED])
    begin = sender.send("dev-1", "rotate_keys")
    ack = handler.handle(device.open(broker.published[-1][1], int(time.time() * 1000)))
    sender.on_ack("dev-1", ack, kid=ENROLLED.kid)
    new_kid = json.loads(ack.detail)["kid"]
    assert registry.key("dev-1", new_kid) is not None
    confirm = device.open(broker.published[-1][1], int(time.time() * 1000))
    assert (confirm.type, confirm.args) == ("rotate_keys", {"confirm": new_kid})
    sender.on_ack("dev-1", handler.handle(confirm), kid=new_kid)
    assert sender.key_in_use("dev-1") == new_kid
    assert begin.state == "ok"


def test_a_forged_key_offer_is_not_registered() -> None:
    registry, broker = FakeRegistry(), FakeBroker()
    sender = CommandSender(HUB, registry, broker)
    begin = sender.send("dev-1", "rotate_keys")
    other = KeyPair.generate().public()
    offer = {
        "rotate": "pending",
        "kid": ENROLLED.kid,
        "x25519": b64(other.x25519),
        "ed25519": b64(other.ed25519),
    }
    sender.on_ack("dev-1", AckMessage(command_id=begin.command.command_id, ok=True, detail=json.dumps(offer)))
    assert registry.active_keys("dev-1") == [ENROLLED.public()]
    assert len(broker.published) == 1  # no confirm sent
