"""The latency benchmark's figures (``bench.latency``): which sightings count, and how."""

from __future__ import annotations

from bench.latency import PATHS, Sightings, parse_ts, percentile, sse_events, summary


def test_figures_count_only_stored_events_and_name_each_path() -> None:
    sightings = Sightings()
    event = {"event_id": "e1", "ts": "2026-01-01T00:00:00Z"}
    ts = parse_ts(event["ts"])
    for offset, path in enumerate((*PATHS, "broker"), start=1):
        sightings.note(path, event, ts + offset / 10)
    sightings.note("sse", event, ts + 9)  # a second sighting is a duplicate, not a new latency
    sightings.note("event_api", {"event_id": "stray", "ts": "2026-01-01T00:00:00Z"}, ts + 1)
    figures = sightings.figures({"e1"})
    assert figures["stored"] == 1
    assert figures["event_api_p99_ms"] == 100.0
    assert figures["sse_p50_ms"] == 200.0
    assert figures["sse_duplicates"] == 1
    assert figures["webhook_max_ms"] == 300.0
    assert figures["hub_event_api_p50_ms"] == -300.0  # the tap (0.4 s) saw it after the poller here
    assert sightings.complete({"e1"})
    assert not sightings.complete({"e1", "e2"})


def test_percentiles_are_nearest_rank_and_sse_data_lines_are_events() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert summary("x", []) == {
        "x_count": 0,
        "x_p50_ms": None,
        "x_p95_ms": None,
        "x_p99_ms": None,
        "x_max_ms": None,
    }
    text = [
        "retry: 3000",
        ": connected",
        "",
        "id: a",
        'data: {"event_id": "a", "ts": "2026-01-01T00:00:00Z"}',
        "",
    ]
    assert [e["event_id"] for e in sse_events(iter(text))] == ["a"]
