"""The ingest core: every rejection has its reason; good messages become batches."""

from __future__ import annotations

from datetime import UTC, datetime

from roadside.cloud.ingest.core import Accepted, IngestCore, Rejection
from roadside.shared.compact import encode_counts
from roadside.shared.envelope import DeviceSealer, HubOpener
from roadside.shared.keys import KeyPair, PublicKeys
from roadside.shared.schemas import CountRecord, CountsMessage, encode

HUB = KeyPair.generate()
DEV = KeyPair.generate()
NOW = int(datetime(2026, 11, 23, 10, tzinfo=UTC).timestamp() * 1000)
TOPIC = "roadside/v1/main-st/dev-1/counts"


def core() -> IngestCore:
    def lookup(device_id: str, kid: str) -> PublicKeys | None:
        return DEV.public() if device_id == "dev-1" and kid == DEV.kid else None

    return IngestCore(HubOpener([HUB], lookup), lambda d: "main-st" if d == "dev-1" else None)


def counts(n: int = 2) -> bytes:
    record = CountRecord(
        interval_start=datetime(2026, 11, 23, 10, tzinfo=UTC),
        interval_s=60,
        line="l",
        cls="car",
        direction="in",
        count=n,
        model_version="v1",
    )
    return encode(CountsMessage(records=[record]))


def seal(seq: int = 1, kind: str = "counts", body: bytes | None = None, device: str = "dev-1") -> bytes:
    return DeviceSealer(device, DEV, HUB.public()).seal(kind, seq, counts() if body is None else body, NOW)


def test_accepts_and_tags_origin() -> None:
    result = core().accept(TOPIC, seal(seq=42), NOW)
    assert isinstance(result, Accepted)
    assert (result.batch.origin.device_id, result.batch.origin.site, result.batch.origin.seq) == (
        "dev-1",
        "main-st",
        42,
    )
    assert result.batch.counts.count[0] == 2


def test_compact_counts_give_the_batch_json_gives() -> None:
    (record,) = CountsMessage.model_validate_json(counts(5)).records
    compact = core().accept(TOPIC, seal(seq=7, body=encode_counts([record])), NOW)
    json = core().accept(TOPIC, seal(seq=7, body=counts(5)), NOW)
    assert isinstance(compact, Accepted)
    assert isinstance(json, Accepted)
    assert compact.batch == json.batch
    assert compact.batch.counts.count == (5,)


def test_compact_bytes_under_another_kind_or_broken_are_refused_as_schema() -> None:
    (record,) = CountsMessage.model_validate_json(counts()).records
    events = "roadside/v1/main-st/dev-1/events"
    assert reason(events, seal(kind="events", body=encode_counts([record]))) == "schema"
    assert reason(TOPIC, seal(body=encode_counts([record])[:-1])) == "schema"


def reason(topic: str, payload: bytes, c: IngestCore | None = None) -> str:
    result = (c or core()).accept(topic, payload, NOW)
    assert isinstance(result, Rejection)
    return result.reason


def test_rejections_by_reason() -> None:
    assert reason("some/other/topic", seal()) == "bad_topic"
    assert reason(TOPIC, b"garbage") == "bad_tag"
    assert reason(TOPIC, seal()[:-1] + b"\x00") == "bad_tag"
    assert reason(TOPIC, b"x" * 300_000) == "oversize"
    assert (
        reason(
            TOPIC, DeviceSealer("dev-1", KeyPair.generate(), HUB.public()).seal("counts", 1, counts(), NOW)
        )
        == "unknown_key"
    )
    assert reason(TOPIC, seal(body=b'{"kind":"counts"}')) == "schema"
    # Moved to another device's topic, or another kind's topic: the envelope says otherwise.
    assert reason("roadside/v1/main-st/dev-2/counts", seal()) == "topic_mismatch"
    assert reason("roadside/v1/main-st/dev-1/events", seal()) == "topic_mismatch"
    assert reason("roadside/v1/oak-ave/dev-1/counts", seal()) == "topic_mismatch"


def test_replay_after_commit() -> None:
    c = core()
    wire = seal(seq=9)
    first = c.accept(TOPIC, wire, NOW)
    assert isinstance(first, Accepted)
    c.opener.commit(first.header)
    assert reason(TOPIC, wire, c) == "replay"


def test_stale_message() -> None:
    wire = DeviceSealer("dev-1", DEV, HUB.public()).seal("counts", 1, counts(), NOW - 3_600_000)
    assert reason(TOPIC, wire) == "stale"
