"""Running a verified command against the agent and answering it with an ``AckMessage``.

:class:`CommandHandler` is idempotent by ``command_id``: a redelivered command
gets the ack it got the first time (from :class:`~roadside.edge.control.journal.AckJournal`,
which survives a restart), never a second action.

Key rotation takes two commands, so the device never uses a key the hub has
not registered::

    hub: rotate_keys {}                 device: make (or reuse) a pending key, persist it,
                                                ack {"rotate": "pending", "kid", "x25519", "ed25519"}
    hub: registry.add_key(public half)
    hub: rotate_keys {"confirm": kid}   device: make it current, persist, seal with it from now on,
                                                ack {"rotate": "active", "kid"}
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from roadside.edge.control.journal import AckJournal
from roadside.edge.control.keys import KeyState, KeyStore
from roadside.edge.control.redaction import redact
from roadside.edge.control.reload import live_part, plan_reload
from roadside.edge.control.streams import check_new_stream
from roadside.edge.control.verifier import InvalidCommandError
from roadside.edge.settings import AgentSettings, SourceConfig
from roadside.shared.errors import RoadsideError
from roadside.shared.keys import KeyPair, b64
from roadside.shared.schemas import AckMessage, Command, CommandType

log = logging.getLogger(__name__)

MAX_DETAIL: Final = 1024  # AckMessage.detail


class AgentSurface(Protocol):
    """What commands may do to a running agent (``roadside.edge.agent.Agent``)."""

    @property
    def settings(self) -> AgentSettings: ...

    def stream_configs(self) -> dict[str, SourceConfig]: ...

    def add_stream(self, config: SourceConfig) -> None: ...

    def remove_stream(self, name: str) -> None: ...

    def apply_live_settings(self, settings: AgentSettings, reset_analytics: bool) -> None: ...

    def use_keys(self, keys: KeyState) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    detail: str


CommandFn = Callable[[Command], Outcome]


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _NoArgs(_Args):
    pass


class _AddStreamArgs(_Args):
    source: SourceConfig


class _RemoveStreamArgs(_Args):
    name: str = Field(min_length=1, max_length=64)


class _RotateKeysArgs(_Args):
    confirm: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")


class CommandHandler:
    """Dispatches verified commands to the agent; one thread calls :meth:`handle` at a time."""

    def __init__(
        self,
        agent: AgentSurface,
        keys: KeyStore,
        key_state: KeyState,
        load_settings: Callable[[], AgentSettings] | None = None,
        journal: AckJournal | None = None,
    ) -> None:
        self.agent = agent
        self.keys = keys
        self.key_state = key_state
        self.load_settings = load_settings
        self.journal = journal or AckJournal()
        self.results: Counter[tuple[str, str]] = Counter()  # (type, "ok"/"failed"/"duplicate")
        self._handlers: dict[str, CommandFn] = {
            "ping": self._ping,
            "reload_config": self._reload_config,
            "add_stream": self._add_stream,
            "remove_stream": self._remove_stream,
            "rotate_keys": self._rotate_keys,
            "ota": _not_installed,
        }

    def register(self, command_type: CommandType, fn: CommandFn) -> None:
        """Install the handler of ``command_type``: the OTA code registers ``ota`` here."""
        self._handlers[command_type] = fn

    def handle(self, command: Command) -> AckMessage:
        """Run ``command`` once; a command seen before gets its first ack again."""
        earlier = self.journal.get(command.command_id)
        if earlier is not None:
            self.results[(command.type, "duplicate")] += 1
            log.info("command %s (%s) seen before: repeating its ack", command.command_id, command.type)
            return earlier
        try:
            outcome = self._handlers[command.type](command)
        except ValidationError as exc:
            outcome = Outcome(False, f"bad arguments for {command.type}: {_summary(exc)}")
        except RoadsideError as exc:
            outcome = Outcome(False, redact(str(exc)))
        except Exception as exc:  # a bug must not kill the command thread; the hub sees a nack
            log.exception("command %s (%s) failed", command.command_id, command.type)
            outcome = Outcome(False, f"internal error: {type(exc).__name__}")
        ack = self.nack_or_ack(command.command_id, outcome)
        self.journal.record(ack)
        self.results[(command.type, "ok" if outcome.ok else "failed")] += 1
        log.info("command %s (%s): %s", command.command_id, command.type, "ok" if outcome.ok else "refused")
        return ack

    def invalid(self, error: InvalidCommandError) -> AckMessage | None:
        """The nack of an authentic but malformed command, when it has an id to answer."""
        if error.command_id is None:
            return None
        earlier = self.journal.get(error.command_id)
        if earlier is not None:
            return earlier
        kind = error.command_type or "unknown"
        self.results[(kind if kind in self._handlers else "unknown", "failed")] += 1
        ack = self.nack_or_ack(error.command_id, Outcome(False, f"invalid command: {error}"))
        self.journal.record(ack)
        return ack

    @staticmethod
    def nack_or_ack(command_id: uuid.UUID, outcome: Outcome) -> AckMessage:
        # One line of printable text, as the wire requires (a config error spans several lines).
        text = "".join(c for c in " ".join(outcome.detail.split()) if c.isprintable())
        detail = text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"
        return AckMessage(command_id=command_id, ok=outcome.ok, detail=detail)

    # The commands ---------------------------------------------------------------

    def _ping(self, command: Command) -> Outcome:
        _NoArgs.model_validate(command.args)
        return Outcome(True, "pong")

    def _add_stream(self, command: Command) -> Outcome:
        config = _AddStreamArgs.model_validate(command.args).source
        running = self.agent.stream_configs()
        if config.name in running:
            if running[config.name] == config:
                return Outcome(True, f"stream {config.name} is already running")
            return Outcome(False, f"stream {config.name} exists with other settings; remove it first")
        check_new_stream(config, running)
        self.agent.add_stream(config)
        return Outcome(True, f"stream {config.name} started")

    def _remove_stream(self, command: Command) -> Outcome:
        name = _RemoveStreamArgs.model_validate(command.args).name
        running = self.agent.stream_configs()
        if name not in running:
            listed = ", ".join(sorted(running)) or "none"
            return Outcome(False, f"no stream named {name!r} (running: {listed})")
        self.agent.remove_stream(name)
        return Outcome(True, f"stream {name} stopped")

    def _reload_config(self, command: Command) -> Outcome:
        _NoArgs.model_validate(command.args)
        if self.load_settings is None:
            return Outcome(False, "the agent was started without a config file: nothing to reload")
        new = self.load_settings()  # ConfigError says what is wrong in the file; nothing is applied
        for config in new.sources:
            check_new_stream(config, {})
        current = self.agent.settings
        plan = plan_reload(self.agent.stream_configs(), current, new)
        done, failed = [], []
        for name in plan.remove:
            self.agent.remove_stream(name)
            if name not in plan.changed:
                done.append(f"stopped {name}")
        if plan.analytics_changed or plan.heartbeat_changed:
            self.agent.apply_live_settings(live_part(current, new), reset_analytics=plan.analytics_changed)
            done += ["analytics reset"] if plan.analytics_changed else []
            done += [f"heartbeat {new.heartbeat_s:g} s"] if plan.heartbeat_changed else []
        for config in plan.start:
            try:
                self.agent.add_stream(config)
            except RoadsideError as exc:
                failed.append(f"{config.name}: {redact(str(exc))}")
                continue
            done.append(f"{'restarted' if config.name in plan.changed else 'started'} {config.name}")
        parts = ["; ".join(done) or "nothing changed"]
        if failed:
            parts.append("failed: " + "; ".join(failed))
        if plan.needs_restart:
            parts.append("needs a restart to apply: " + ", ".join(plan.needs_restart))
        return Outcome(not failed, "; ".join(parts))

    def _rotate_keys(self, command: Command) -> Outcome:
        confirm = _RotateKeysArgs.model_validate(command.args).confirm
        state = self.key_state
        if confirm is None:
            pending = state.pending or KeyPair.generate()  # a repeated request offers the same key
            if state.pending is None:
                state = KeyState(state.current, pending)
                self.keys.save(state)  # before the ack: the hub must never learn a key we could lose
                self.key_state = state
                self.agent.use_keys(state)
            public = pending.public()
            offer = {
                "rotate": "pending",
                "kid": pending.kid,
                "x25519": b64(public.x25519),
                "ed25519": b64(public.ed25519),
            }
            return Outcome(True, json.dumps(offer, separators=(",", ":")))
        if state.pending is None and state.current.kid == confirm:
            return Outcome(True, json.dumps({"rotate": "active", "kid": confirm}, separators=(",", ":")))
        if state.pending is None or state.pending.kid != confirm:
            return Outcome(False, f"no pending key {confirm}: send rotate_keys without arguments first")
        state = KeyState(state.pending)
        self.keys.save(state)
        self.key_state = state
        self.agent.use_keys(state)
        log.info("envelope key rotated to %s", confirm)
        return Outcome(True, json.dumps({"rotate": "active", "kid": confirm}, separators=(",", ":")))


def _not_installed(command: Command) -> Outcome:
    return Outcome(False, f"{command.type} is not installed on this agent; update the agent to use it")


def _summary(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}" for e in exc.errors()[:3]]
    return "; ".join(parts)
