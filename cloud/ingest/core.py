"""The pure core of ingest: one MQTT message in, an ``IngestBatch`` or a ``Rejection`` out.

No sockets, no disks: the envelope opener, a site lookup and the clock are
passed in, so every rejection case is a unit test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from roadside.cloud.storage.base import IngestBatch, Origin
from roadside.shared.compact import CompactCounts, CountColumns, decode_any
from roadside.shared.envelope import Header, HubOpener
from roadside.shared.errors import IntegrityError, SchemaError
from roadside.shared.schemas import (
    AckMessage,
    CountsMessage,
    DetectorMessage,
    EventsMessage,
    HardExample,
    HealthMessage,
    MovementsMessage,
    OtaMessage,
    OtaReport,
    SamplesMessage,
    SensorsMessage,
    UplinkPayload,
)
from roadside.shared.topics import parse_uplink


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # a short, fixed label: metrics are counted by it
    detail: str
    topic: str
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class RecordTally:
    """How many records a message stored, where its records stayed in an ingest worker process."""

    counts: int
    sensors: int
    health: bool


@dataclass(frozen=True, slots=True)
class Accepted:
    """An authentic, valid message: telemetry to store, or something for a listener after the write."""

    batch: IngestBatch
    header: Header
    ack: AckMessage | None = None
    ota: OtaReport | None = None  # for the rollout controller: an ota message's, or one a heartbeat repeats
    samples: tuple[HardExample, ...] = ()  # for the dataset inbox
    tally: RecordTally | None = None  # set when ``batch`` carries no counts, sensors or health (workers)


SiteLookup = Callable[[str], str | None]


class IngestCore:
    def __init__(self, opener: HubOpener, site_of: SiteLookup) -> None:
        self.opener = opener
        self.site_of = site_of

    def accept(self, topic: str, payload: bytes, now_ms: int) -> Accepted | Rejection:
        """Check one message, cheapest checks first; never raises on bad input."""
        where = parse_uplink(topic)
        if where is None or where.kind == "status":
            return Rejection("bad_topic", "not a sealed uplink topic", topic)
        try:
            opened = self.opener.open(payload, now_ms)
        except IntegrityError as exc:
            return Rejection(exc.reason, str(exc), topic, where.device_id)
        header = opened.header
        # The broker's ACL confines a device to its topics; the envelope binds
        # device and kind too, so a message moved to another topic is caught.
        if header.device_id != where.device_id or header.kind != where.kind:
            return Rejection(
                "topic_mismatch", "envelope device or kind differs from the topic", topic, where.device_id
            )
        site = self.site_of(header.device_id)
        if site != where.site:
            return Rejection(
                "topic_mismatch", f"device is registered at site {site!r}", topic, where.device_id
            )
        try:
            message = decode_any(header.kind, opened.plaintext)
        except SchemaError as exc:
            return Rejection(exc.reason, str(exc), topic, header.device_id)
        origin = Origin(header.device_id, site, header.seq)
        return Accepted(
            _batch_of(origin, message),
            header,
            ack=message if isinstance(message, AckMessage) else None,
            ota=_ota_report_of(message),
            samples=tuple(message.records) if isinstance(message, SamplesMessage) else (),
        )


def _ota_report_of(message: UplinkPayload | CompactCounts) -> OtaReport | None:
    """An ``ota`` message's report, or the latest one a heartbeat repeats (ADR 0031): the rollout
    controller records whichever copy comes first and finds the others change nothing."""
    if isinstance(message, OtaMessage):
        return message.report
    if isinstance(message, HealthMessage):
        return message.ota
    return None


def _batch_of(origin: Origin, message: UplinkPayload | CompactCounts) -> IngestBatch:
    """The time-series records of a message; an ack, OTA report or samples carry none (listeners only)."""
    match message:
        case CompactCounts():
            batch = IngestBatch(origin, counts=message.columns)
        case CountsMessage():
            batch = IngestBatch(origin, counts=CountColumns.of(message.records))
        case EventsMessage():
            batch = IngestBatch(origin, events=message.records)
        case SensorsMessage():
            batch = IngestBatch(origin, sensors=message.records)
        case HealthMessage():
            batch = IngestBatch(origin, health=message.health)
        case DetectorMessage():
            batch = IngestBatch(origin, detector=message.records)
        case MovementsMessage():
            batch = IngestBatch(origin, movements=message.movements, zone_stats=message.zones)
        case _:
            batch = IngestBatch(origin)
    return batch
