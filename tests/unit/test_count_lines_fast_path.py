"""Counts-only envelopes are written without a point object per record: the lines are exactly the
object path's (``LinePoint.to_line`` of ``batch_points``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from roadside.cloud.storage.base import IngestBatch, Origin
from roadside.cloud.storage.influx.line_protocol import batch_lines, batch_points
from roadside.shared.schemas import CountRecord
from tests.support.strategies import count_records

T0 = datetime(2026, 12, 5, 7, 0, tzinfo=UTC)
names = st.sampled_from(["north", "l0", "car", "bus", "det-1.0", "a:b", "x_y.z", "v2"])
records = count_records(
    st.integers(0, 3).map(lambda m: T0 + timedelta(minutes=m)), st.sampled_from([60, 900]), names
)


@given(
    st.lists(records, min_size=1, max_size=30),  # repeated keys too: they are summed
    st.sampled_from(["pole-1", "sim-0001", "cam_2"]),
    st.sampled_from(["main-st", "bench"]),
    st.integers(0, 2**40),
)
def test_the_fast_path_writes_what_the_point_objects_write(
    counts: list[CountRecord], device: str, site: str, seq: int
) -> None:
    batch = IngestBatch(Origin(device, site, seq), counts=counts)
    assert batch_lines([batch]) == [p.to_line() for p in batch_points(batch, now_ns=0)]


def test_mixed_envelopes_keep_the_object_path_and_the_order() -> None:
    from roadside.shared.schemas import Health

    count = CountRecord(
        interval_start=T0, interval_s=60, line="n", cls="car", direction="in", count=2, model_version="m"
    )
    health = Health(ts=T0, uptime_s=1.0, model_version="m", provider="cpu", outbox_backlog=0)
    batches = [
        IngestBatch(Origin("d", "s", 1), counts=[count]),
        IngestBatch(Origin("d", "s", 2), counts=[count], health=health),
        IngestBatch(Origin("d", "s", 3), counts=[count, count]),
    ]
    expected = [p.to_line() for b in batches for p in batch_points(b, now_ns=0)]
    assert batch_lines(batches) == expected
