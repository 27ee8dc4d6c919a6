"""Sensors that publish JSON readings to a broker on the device itself.

Many roadside controllers and sensor hubs publish to a local Mosquitto on a
plain loopback listener. A payload is one reading or a JSON array of them::

    {"quantity": "pm25", "value": 12.3, "unit": "ug/m3", "ts": 1718000000.5, "sensor": "aq1"}

``unit`` defaults from the config by quantity, ``ts`` (epoch seconds or an
ISO 8601 time with a zone) to the time of receipt, ``sensor`` to the source
name. :func:`parse_payload` is pure; :class:`LocalMqttSensorSource` is the
adapter (an MQTT 3.1.1 :class:`roadside.mqttlink.MqttSession`, imported only when such
a sensor is configured), and reconnects with jittered backoff whenever the
local broker goes away.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from roadside.edge.sensors.base import SensorSample
from roadside.edge.sensors.config import MqttSensorConfig
from roadside.shared.backoff import Backoff
from roadside.shared.errors import TransportError

if TYPE_CHECKING:
    from roadside.mqttlink import ConnAck, Message, MqttSession, SubAck

log = logging.getLogger(__name__)

Reason = Literal["json", "fields"]
MAX_PAYLOAD: Final = 64 * 1024
_PENDING_MAX: Final = 10_000  # samples received but not yet taken by the pipeline

_Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class _Reading(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    quantity: _Name
    value: float = Field(allow_inf_nan=False)
    unit: Annotated[str, Field(max_length=16)] | None = None
    ts: float | AwareDatetime | None = None
    sensor: _Name | None = None


_PAYLOAD: Final[TypeAdapter[_Reading | list[_Reading]]] = TypeAdapter(
    _Reading | Annotated[list[_Reading], Field(min_length=1, max_length=1000)]
)


class PayloadError(ValueError):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason


def parse_payload(
    raw: bytes, default_sensor: str, units: Mapping[str, str], received: float
) -> list[SensorSample]:
    """The samples of one message; :class:`PayloadError` if it is not valid readings JSON."""
    if len(raw) > MAX_PAYLOAD:
        raise PayloadError("fields", f"{len(raw)} bytes")
    try:
        parsed = _PAYLOAD.validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        reason: Reason = "json" if first["type"] == "json_invalid" else "fields"
        raise PayloadError(reason, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from exc
    readings = parsed if isinstance(parsed, list) else [parsed]
    return [
        SensorSample(
            _epoch(r.ts, received),
            r.sensor or default_sensor,
            r.quantity,
            r.value,
            r.unit if r.unit is not None else units.get(r.quantity, ""),
        )
        for r in readings
    ]


def _epoch(ts: float | datetime | None, received: float) -> float:
    if ts is None:
        return received
    return ts.timestamp() if isinstance(ts, datetime) else float(ts)


class LocalMqttSensorSource:
    """Subscribes to ``config.topic`` on the local broker; drives its own network loop in :meth:`samples`."""

    def __init__(self, config: MqttSensorConfig, clock: Callable[[], float] = time.time) -> None:
        self.name = config.name
        self.config = config
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.connects = 0  # CONNACKs accepted: 1 + reconnects
        self.subscribed = 0  # SUBACKs: readings flow from here on
        self._clock = clock
        self._pending: deque[SensorSample] = deque(maxlen=_PENDING_MAX)
        self._linked = False
        self._stop = threading.Event()
        self._backoff = Backoff(config.reconnect_base_s, config.reconnect_cap_s)

    def samples(self) -> Iterator[SensorSample]:
        from roadside.mqttlink import MqttSession, SessionConfig

        config = SessionConfig(
            self.config.host,
            self.config.port,
            self.config.client_id or f"roadside-sensors-{self.name}",
            mqtt5=False,
            # A persistent session: the broker keeps QoS 1 readings while the agent restarts.
            persistent=True,
            keepalive_s=self.config.keepalive_s,
        )
        session = MqttSession(
            config,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            on_message=self._on_message,
            on_subscribe=self._on_subscribe,
        )
        try:
            while not self._stop.is_set():
                if not self._linked and not self._connect(session):
                    self._stop.wait(self._backoff.next_delay())
                    continue
                if not session.loop(0.2):
                    self._linked = False
                while self._pending:
                    yield self._pending.popleft()
                if not self._linked:  # dropped, or refused in on_connect
                    log.warning("sensor %s: lost the local broker", self.name)
                    self._stop.wait(self._backoff.next_delay())
        finally:
            session.disconnect()
            session.loop(0.1)

    def _connect(self, session: MqttSession) -> bool:
        try:
            session.connect()
        except TransportError as exc:
            log.warning(
                "sensor %s: no broker at %s:%d: %s",
                self.name,
                self.config.host,
                self.config.port,
                exc.__cause__,
            )
            return False
        self._linked = True  # the TCP link; on_connect clears it if the broker refuses us
        return True

    # Session callbacks: they run inside session.loop(), on this source's thread.

    def _on_connect(self, session: MqttSession, ack: ConnAck) -> None:
        if not ack.ok:
            log.warning("sensor %s: local broker refused the connection: %s", self.name, ack.reason)
            self._linked = False
            return
        self.connects += 1
        self._backoff.reset()
        session.subscribe(self.config.topic, qos=1)
        log.info("sensor %s: subscribed to %s", self.name, self.config.topic)

    def _on_subscribe(self, ack: SubAck) -> None:
        if not ack.ok:
            log.warning(
                "sensor %s: the local broker refused the subscription to %s", self.name, self.config.topic
            )
            return
        self.subscribed += 1

    def _on_disconnect(self, _reason: str) -> None:
        self._linked = False

    def _on_message(self, message: Message) -> None:
        try:
            found = parse_payload(message.payload, self.name, self.config.units, self._clock())
        except PayloadError as exc:
            self.rejected[exc.reason] += 1
            log.debug("sensor %s: rejected a message on %s: %s", self.name, message.topic, exc)
            return
        self.accepted += 1
        self._pending.extend(found)

    def close(self) -> None:
        self._stop.set()
