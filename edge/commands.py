"""Commands from the hub: verify, dispatch to the agent, answer with an ``AckMessage``.

The pieces, from the wire inwards:

- :class:`CommandVerifier` opens a sealed command with whichever of the
  device's keys it is addressed to (the current one, and during a rotation
  the pending one), checks the hub's signature, freshness and replay, then
  the schema.
- :class:`CommandHandler` runs a verified :class:`~shared.schemas.Command`
  against an :class:`AgentSurface` and returns the ack. It is idempotent by
  ``command_id``: a redelivered command gets the ack it got the first time
  (from :class:`AckJournal`, which survives a restart), never a second action.
- :func:`plan_reload` is the pure diff behind ``reload_config``: which
  streams to stop and start, whether analytics or the heartbeat change, and
  which settings only a restart can apply.
- :class:`KeyStore` keeps keys made by ``rotate_keys`` (0600, written
  atomically), so a restarted agent comes back with the key the hub knows.

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
import os
import re
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.settings import AgentSettings, SourceConfig
from edge.sources.uri import mask_credentials
from shared.envelope import DeviceCommandOpener, ReplayWindow, parse
from shared.errors import ConfigError, RoadsideError, SchemaError, UnknownKeyError
from shared.keys import KeyPair, PublicKeys, b64
from shared.schemas import AckMessage, Command, CommandType, decode_command

log = logging.getLogger(__name__)

MAX_STREAMS: Final = 64  # what a health report can carry
MAX_DETAIL: Final = 1024  # AckMessage.detail
STREAM_NAME: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")  # shared.schemas.Name
# reload_config applies these without a restart; any other changed setting is reported.
ANALYTICS_SETTINGS: Final = frozenset(
    {"lines", "analytics", "interval_s"}
)  # read when a stream's state is made
LIVE_SETTINGS: Final = ANALYTICS_SETTINGS | {"sources", "heartbeat_s"}


# Verification ---------------------------------------------------------------------


class InvalidCommandError(SchemaError):
    """Authentic (the hub signed it) but not a valid command; nack it when it has an id."""

    def __init__(self, message: str, command_id: uuid.UUID | None, command_type: str | None) -> None:
        super().__init__(message)
        self.command_id = command_id
        self.command_type = command_type


class CommandVerifier:
    """Opens commands sealed to any of the device's current keys; one replay window for all."""

    def __init__(
        self, device_id: str, hub: PublicKeys, keys: Iterable[KeyPair], max_age_s: float = 900.0
    ) -> None:
        self.device_id = device_id
        self._hub = hub
        self._max_age_s = max_age_s
        self._window = ReplayWindow()
        self._openers: dict[str, DeviceCommandOpener] = {}
        self.set_keys(keys)

    def set_keys(self, keys: Iterable[KeyPair]) -> None:
        openers = {}
        for pair in keys:
            opener = DeviceCommandOpener(self.device_id, pair, self._hub, self._max_age_s)
            opener.window = self._window  # a sequence number is used once, whichever key it was sealed to
            openers[pair.kid] = opener
        self._openers = openers  # swapped whole: the network thread may be reading the old dict

    def open(self, wire: bytes, now_ms: int) -> Command:
        """The verified command; ``IntegrityError`` if not authentic, ``InvalidCommandError`` if malformed."""
        opener = self._openers.get(parse(wire).header.rkid)
        if opener is None:
            raise UnknownKeyError("command is sealed to a key this device does not hold")
        plaintext = opener.open(wire, now_ms).plaintext
        try:
            return decode_command(plaintext)
        except SchemaError as exc:
            command_id, command_type = _identify(plaintext)
            raise InvalidCommandError(str(exc), command_id, command_type) from exc


def _identify(plaintext: bytes) -> tuple[uuid.UUID | None, str | None]:
    """The id and type of a command that failed validation, if they can be read."""
    try:
        raw = json.loads(plaintext)
        kind = raw.get("type")
        return uuid.UUID(str(raw["command_id"])), kind if isinstance(kind, str) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, None


# Keys ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyState:
    current: KeyPair
    pending: KeyPair | None = None

    def all(self) -> list[KeyPair]:
        return [self.current] if self.pending is None else [self.current, self.pending]


def default_keys_path(settings: AgentSettings) -> Path:
    """``keys_path``, else ``<bundle>.keys.json`` beside the bundle."""
    return settings.keys_path or settings.bundle.with_name(f"{settings.bundle.stem}.keys.json")


def default_journal_path(settings: AgentSettings) -> Path:
    """Acks of recent commands, beside the outbox (the agent's writable state)."""
    return settings.outbox.path.with_name(f"{settings.outbox.path.stem}.commands.json")


class KeyStore:
    """Envelope keys made on the device by ``rotate_keys``, persisted beside the bundle.

    The file names the enrollment key it descends from; a file left over from
    an earlier enrollment (the device was re-enrolled with a new bundle) is
    ignored rather than overriding the new bundle's keys.
    """

    def __init__(self, path: Path, device_id: str, enrolled: KeyPair) -> None:
        self.path = path
        self.device_id = device_id
        self.enrolled = enrolled

    def load(self) -> KeyState:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return KeyState(self.enrolled)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot read rotated keys {self.path}: {exc}; restore it or re-enroll"
            ) from exc
        if raw.get("device_id") != self.device_id or raw.get("enrolled_kid") != self.enrolled.kid:
            log.warning("%s belongs to an earlier enrollment: using the bundle's keys", self.path)
            return KeyState(self.enrolled)
        pending = raw.get("pending")
        return KeyState(
            KeyPair.from_json(raw["current"]), KeyPair.from_json(pending) if pending is not None else None
        )

    def save(self, state: KeyState) -> None:
        """Replace the file atomically (temp file, fsync, rename), readable by the owner only."""
        document = {
            "format": 1,
            "device_id": self.device_id,
            "enrolled_kid": self.enrolled.kid,
            "current": state.current.to_json(),
            "pending": state.pending.to_json() if state.pending is not None else None,
        }
        try:
            write_private_atomic(self.path, json.dumps(document, indent=2).encode())
        except OSError as exc:
            raise ConfigError(
                f"cannot save keys to {self.path}: {exc.strerror}; make its directory writable by the agent"
            ) from exc


def write_private_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 so that a crash leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives power loss
    finally:
        os.close(directory)


# Idempotency ----------------------------------------------------------------------


class AckJournal:
    """The acks of the last ``size`` commands, by id; persisted when ``path`` is given."""

    def __init__(self, path: Path | None = None, size: int = 256) -> None:
        self.path = path
        self.size = size
        self._acks: OrderedDict[uuid.UUID, AckMessage] = OrderedDict()
        if path is not None and path.is_file():
            try:
                for item in json.loads(path.read_text()):
                    ack = AckMessage.model_validate(item)
                    self._acks[ack.command_id] = ack
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable command journal %s: %s", path, exc)

    def get(self, command_id: uuid.UUID) -> AckMessage | None:
        return self._acks.get(command_id)

    def record(self, ack: AckMessage) -> None:
        self._acks[ack.command_id] = ack
        while len(self._acks) > self.size:
            self._acks.popitem(last=False)
        if self.path is None:
            return
        body = json.dumps([a.model_dump(mode="json", by_alias=True) for a in self._acks.values()])
        try:
            write_private_atomic(self.path, body.encode())
        except OSError as exc:
            log.warning("cannot persist the command journal %s: %s", self.path, exc)


# reload_config ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    remove: tuple[str, ...]  # stopped (gone, or changed: they are started again from ``start``)
    start: tuple[SourceConfig, ...]
    changed: tuple[str, ...]
    analytics_changed: bool
    heartbeat_changed: bool
    needs_restart: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.remove or self.start or self.analytics_changed or self.heartbeat_changed)


def plan_reload(
    running: Mapping[str, SourceConfig], current: AgentSettings, new: AgentSettings
) -> ReloadPlan:
    """What applying ``new`` over ``current`` means, with ``running`` the streams up now.

    Streams follow the file: a stream added at run time and absent from the
    file is stopped. A stream whose settings changed is restarted.
    """
    wanted = {s.name: s for s in new.sources}
    changed = tuple(n for n, s in wanted.items() if n in running and running[n] != s)
    gone = tuple(n for n in running if n not in wanted)
    start = tuple(s for n, s in wanted.items() if n not in running or n in changed)
    differs = {name for name in type(new).model_fields if getattr(current, name) != getattr(new, name)}
    return ReloadPlan(
        remove=gone + changed,
        start=start,
        changed=changed,
        analytics_changed=bool(differs & ANALYTICS_SETTINGS),
        heartbeat_changed="heartbeat_s" in differs,
        needs_restart=tuple(sorted(differs - LIVE_SETTINGS)),
    )


def live_part(current: AgentSettings, new: AgentSettings) -> AgentSettings:
    """``current`` with the settings that change live taken from ``new``."""
    live = LIVE_SETTINGS & set(type(new).model_fields)
    return current.model_copy(update={name: getattr(new, name) for name in live})


# The handler --------------------------------------------------------------------------


class AgentSurface(Protocol):
    """What commands may do to a running agent (``edge.agent.Agent``)."""

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


def check_new_stream(config: SourceConfig, running: Mapping[str, SourceConfig]) -> None:
    """``ConfigError`` unless ``config`` may join ``running``."""
    if not STREAM_NAME.fullmatch(config.name):
        raise ConfigError(f"stream name {config.name!r} is not allowed: use 1-64 of A-Z a-z 0-9 _ . : -")
    if len(running) >= MAX_STREAMS:
        raise ConfigError(f"this agent already runs {len(running)} streams, the most it reports on")


def redact(text: str) -> str:
    """``rtsp://user:secret@host`` → ``rtsp://user:***@host``: camera passwords stay out of acks and logs."""
    return mask_credentials(text)


def _not_installed(command: Command) -> Outcome:
    return Outcome(False, f"{command.type} is not installed on this agent; update the agent to use it")


def _summary(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}" for e in exc.errors()[:3]]
    return "; ".join(parts)
