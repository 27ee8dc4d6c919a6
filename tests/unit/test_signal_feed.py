"""The hub's signal cores, pure (issue 11, item 3): channel maps, ATSPM rows and paging, movements, calls."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from roadside.cloud.signals import atspm
from roadside.cloud.signals.calls import CallDispatcher, CallFeed, CallMetrics
from roadside.cloud.signals.channel_map import ChannelMap, parse_channel_map
from roadside.cloud.signals.movements import movement_of, rebin, wide_rows
from roadside.cloud.storage.base import IngestBatch, Origin
from roadside.cloud.storage.signals import ControllerEvent, StoredDetectorChange
from roadside.shared.errors import ConfigError
from roadside.shared.schemas import DetectorChange, DetectorFault, DetectorState, DetectorZoneKind
from roadside.shared.signals import detector_event_code, is_called

T0 = datetime(2026, 12, 5, 7, 30, tzinfo=UTC)
MAP = parse_channel_map(
    [
        {"channel": 5, "device": "cam-1", "stream": "north", "zone": "stop-1", "phase": 2},
        {"channel": 2, "kind": "pedestrian", "device": "cam-1", "stream": "north", "zone": "ped", "phase": 4},
    ]
)


def stored(second: float, zone: str, state: DetectorState, kind: DetectorZoneKind = "presence",
           reason: DetectorFault | None = None) -> StoredDetectorChange:  # fmt: skip
    change = DetectorChange(ts=T0 + timedelta(seconds=second), stream="north", zone=zone, zone_kind=kind,
                            state=state, reason=reason)  # fmt: skip
    return StoredDetectorChange("cam-1", "main-st", change)


def test_indiana_codes_for_every_detector_state() -> None:
    assert [detector_event_code("presence", s, None) for s in ("on", "off", "restored")] == [82, 81, 83]
    assert detector_event_code("count", "fault", "lost") == 85  # watchdog: the camera stopped sending
    assert {detector_event_code("presence", "fault", r) for r in ("frozen", "dark", "obscured")} == {84}
    assert [detector_event_code("pedestrian", s, None) for s in ("on", "off", "fault", "restored")] == [
        90,
        89,
        91,
        92,
    ]
    assert [is_called(s) for s in ("on", "off", "fault", "restored")] == [True, False, True, False]


def test_malformed_maps_are_refused_with_the_reason() -> None:
    for data, reason in (
        ("[", "not JSON"),
        ([{"channel": 0, "device": "d", "stream": "s", "zone": "z"}], "channels.0.channel"),
        ([{"channel": 40, "kind": "pedestrian", "device": "d", "stream": "s", "zone": "z"}], "above 32"),
        ([{"channel": 1, "device": "d", "stream": "s", "zone": "z", "colour": "red"}], "colour"),
        ([{"channel": 1, "device": "d/x", "stream": "s", "zone": "z"}], "device"),
    ):
        with pytest.raises(ConfigError, match=reason):
            parse_channel_map(data)
    with pytest.raises(ConfigError, match="unknown pedestrian detector channel 3; this signal has \\[2\\]"):
        MAP.without(3, "pedestrian")
    assert MAP.without(2, "pedestrian").channels == MAP.channels[:1]
    # a vehicle and a pedestrian channel may share a number: they are different detectors
    both = MAP.with_channel(MAP.channels[1].model_copy(update={"kind": "vehicle", "zone": "adv"}))
    assert sorted((c.kind, c.channel) for c in both.channels) == [
        ("pedestrian", 2),
        ("vehicle", 2),
        ("vehicle", 5),
    ]


def test_atspm_rows_through_the_map_at_a_tenth_of_a_second() -> None:
    changes = [stored(0.19, "stop-1", "on"), stored(0.2, "elsewhere", "on"), stored(1.0, "ped", "on", "pedestrian"),
               stored(2.0, "stop-1", "fault", reason="dark"), stored(2.0, "ped", "fault", "pedestrian", "dark")]  # fmt: skip
    rows = atspm.detector_rows(changes, MAP)
    assert [(atspm.timestamp_text(r), r.code, r.param) for r in rows] == [
        ("2026-12-05 07:30:00.1", 82, 5),  # truncated, never moved later
        ("2026-12-05 07:30:01.0", 90, 2),
        ("2026-12-05 07:30:02.0", 84, 5),
        ("2026-12-05 07:30:02.0", 91, 2),
    ]
    text = atspm.csv_text("main-5th", rows[:1])
    assert text == "SignalID,Timestamp,EventCode,EventParam\r\nmain-5th,2026-12-05 07:30:00.1,82,5\r\n"
    assert atspm.csv_text("main-5th", []) == "SignalID,Timestamp,EventCode,EventParam\r\n"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.sampled_from([1, 8, 10, 11, 82, 81]), st.integers(1, 8)), max_size=60
    ),
    st.integers(1, 7),
)
def test_pages_after_a_cursor_cover_every_row_once_in_order(
    raw: list[tuple[int, int, int]], limit: int
) -> None:
    rows = [atspm.AtspmRow(t * 100_000, code, param) for t, code, param in raw]
    events = [ControllerEvent(T0, 1, 1)]
    everything = sorted(set(rows) | set(atspm.controller_rows(events)))
    pages: list[atspm.AtspmRow] = []
    after = None
    while True:
        page = atspm.merge(rows, atspm.controller_rows(events), after=after, limit=limit)
        pages += page
        if len(page) < limit:
            break
        after = page[-1]
    assert pages == everything


def test_movements_from_compass_legs_and_the_wide_layout() -> None:
    assert [movement_of("north", x) for x in ("south", "east", "west", "north")] == [
        "through",
        "left",
        "right",
        "u_turn",
    ]
    assert movement_of("E", "n") == "right"  # from the east leg (heading west), north is to the right
    assert movement_of("nb-main", "east") == "unclassified"
    counts = rebin(
        [(T0, 300, "north", "south", "car", 3), (T0 + timedelta(minutes=5), 300, "north", "south", "car", 4),
         (T0 + timedelta(minutes=10), 300, "nb-main", "x", "car", 1), (T0 + timedelta(minutes=15), 300, "west", "north", "bus", 2)],
        900,
    )  # fmt: skip
    columns, rows = wide_rows(counts)
    assert columns[:2] == ["interval_start", "interval_minutes"]
    assert columns[-1] == "total"
    assert "nb-main_car_to_x" in columns
    assert [(r["interval_start"], r["north_car_through"], r["west_bus_left"], r["total"]) for r in rows] == [
        ("2026-12-05T07:30:00Z", 7, 0, 8),
        ("2026-12-05T07:45:00Z", 0, 2, 2),
    ]


def test_dispatcher_sends_mapped_changes_in_order_with_a_sequence_and_survives_a_broken_publisher() -> None:
    class Broken:
        def publish(self, topic: str, payload: bytes, qos: int = 1) -> object:
            raise OSError("broker gone")

    maps: list[tuple[str, ChannelMap]] = [("main-5th", MAP)]
    loads = 0

    def source() -> list[tuple[str, ChannelMap]]:
        nonlocal loads
        loads += 1
        return maps

    registry = CollectorRegistry()
    dispatcher = CallDispatcher(source, Broken(), CallFeed(), CallMetrics(registry), map_ttl_s=3600)
    batch = IngestBatch(Origin("cam-1", "main-st", 1),
                        detector=[stored(0, "stop-1", "on").change, stored(1, "zzz", "on").change,
                                  stored(2, "ped", "fault", "pedestrian", "lost").change])  # fmt: skip
    assert dispatcher.dispatch([batch]) == 2
    assert dispatcher.dispatch([IngestBatch(Origin("cam-1", "main-st", 2))]) == 0
    assert registry.get_sample_value("roadside_signal_call_publish_errors_total", {"signal": "main-5th"}) == 2
    assert (
        registry.get_sample_value("roadside_signal_calls_total", {"signal": "main-5th", "state": "fault"})
        == 1
    )
    assert loads == 1  # cached
    maps.clear()
    dispatcher.invalidate()
    assert dispatcher.dispatch([batch]) == 0  # the map is gone: nobody is called
    assert loads == 2
