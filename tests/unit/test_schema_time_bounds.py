"""Wire times are bounded by pydantic-core, to exactly what shared.limits says every store holds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadside.shared.errors import SchemaError
from roadside.shared.limits import check_storable_time
from roadside.shared.schemas import CountsMessage, decode_uplink


def counts_at(when: str) -> bytes:
    record = {
        "interval_start": when,
        "interval_s": 60,
        "line": "l1",
        "cls": "car",
        "direction": "in",
        "count": 1,
        "model_version": "v1",
    }
    return json.dumps({"schema": 1, "kind": "counts", "records": [record]}).encode()


def storable(when: datetime) -> bool:
    try:
        check_storable_time(when)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    ("when", "accepted"),
    [
        ("1970-01-01T00:00:00Z", True),
        ("1969-12-31T23:59:59.999999Z", False),
        ("1969-12-31T23:30:00-01:00", True),  # 00:30 UTC: the offset is applied before comparing
        ("1970-01-01T00:30:00+01:00", False),  # 23:30 UTC the day before
        ("2261-12-31T23:59:59.999999Z", True),
        ("2262-01-01T00:00:00Z", False),
        ("2262-01-01T00:30:00+01:00", True),  # 23:30 UTC the day before
    ],
)
def test_bounds_hold_in_utc(when: str, accepted: bool) -> None:
    if accepted:
        message = decode_uplink("counts", counts_at(when))
        assert isinstance(message, CountsMessage)
        assert message.records[0].interval_start == datetime.fromisoformat(when)
    else:
        with pytest.raises(SchemaError, match="interval_start"):
            decode_uplink("counts", counts_at(when))


@given(  # naive times near each bound; the zone is drawn beside them
    st.datetimes(
        min_value=datetime(1969, 12, 30),
        max_value=datetime(1970, 1, 2),
    )
    | st.datetimes(min_value=datetime(2261, 12, 30), max_value=datetime(2262, 1, 2)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_decoding_agrees_with_the_store_limits(naive: datetime, offset_min: int) -> None:
    when = naive.replace(tzinfo=timezone(timedelta(minutes=offset_min)))
    try:
        decode_uplink("counts", counts_at(when.isoformat()))
        decoded = True
    except SchemaError:
        decoded = False
    assert decoded == storable(when.astimezone(UTC))
