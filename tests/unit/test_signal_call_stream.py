"""The controller's reading of the hub's SSE call stream: calls in, bad input refused, gaps fail safe."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx

from roadside.shared.signals import SignalCall
from roadside.signalcontrol.hub import HubCallStream

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def call(seq: int, **fields: object) -> str:
    body = {
        "signal": "main-5th",
        "channel": 5,
        "phase": 2,
        "state": "on",
        "called": True,
        "event_code": 82,
        "zone_kind": "presence",
        "device": "cam-1",
        "stream": "north",
        "zone": "nb-1",
        "captured_at": datetime.fromtimestamp(NOW - 0.120, UTC),
        "hub_sent_at": datetime.fromtimestamp(NOW - 0.020, UTC),
        "seq": seq,
    } | fields
    return SignalCall.model_validate(body).model_dump_json(by_alias=True)


def sse(*events: str) -> Iterator[str]:
    yield ": connected"
    yield ""
    for data in events:
        if data.startswith(":"):
            yield data
        else:
            yield "event: call"
            yield f"data: {data}"
        yield ""


def stream(clock: Clock) -> HubCallStream:
    return HubCallStream(httpx.Client, "main-5th", clock=clock, wall=lambda: NOW, resync_s=10.0)


def test_calls_become_detector_inputs_with_their_latency() -> None:
    clock = Clock()
    s = stream(clock)
    s.consume(
        sse(
            call(1),
            call(2, state="fault", called=True, event_code=84, reason="dark"),
            call(3, zone_kind="pedestrian", event_code=90),
        )
    )
    inputs = list(s.poll())
    assert [(i.phase, i.called, i.failed, i.pedestrian) for i in inputs] == [
        (2, True, False, False),
        (2, True, True, False),
        (2, True, False, True),
    ]
    assert [round(ms, 1) for ms in s.latencies_ms] == [120.0, 120.0, 120.0]
    assert not s.feed_lost()
    assert list(s.poll()) == []  # drained


def test_malformed_or_foreign_calls_are_refused_and_counted_without_costing_the_next() -> None:
    clock = Clock()
    s = stream(clock)
    s.consume(sse('{"schema": 1, "signal": "main-5th"}', "not json", call(1, signal="other"), call(2)))
    assert s.counts["refused"] == 3
    assert [i.channel for i in s.poll()] == [5]


def test_a_channel_with_no_phase_keeps_the_sequence_and_calls_nobody() -> None:
    clock = Clock()
    s = stream(clock)
    # A count zone mapped without a phase sits between two stop-bar calls in the stream.
    s.consume(sse(call(1), call(2, channel=17, phase=None, zone_kind="count"), call(3)))
    assert [i.channel for i in s.poll()] == [5, 5]
    assert s.counts["unphased"] == 1
    assert s.counts["refused"] == 0
    assert s.counts["gaps"] == 0
    assert not s.feed_lost()  # its seq was in order: no gap, no recall of every phase


def test_a_seq_gap_or_dropped_calls_call_every_phase_for_the_resync_time() -> None:
    clock = Clock()
    s = stream(clock)
    s.consume(sse(call(1), call(2)))
    assert not s.feed_lost()
    s.consume(sse(call(7)))  # 3..6 never arrived: an "on" may be among them
    assert s.feed_lost()
    assert s.counts["gaps"] == 1
    clock.now += 10.5
    s.consume(sse(call(8)))
    assert not s.feed_lost()
    s.consume(sse(": dropped 4"))
    assert s.feed_lost()


def test_a_silent_hub_is_a_lost_feed() -> None:
    clock = Clock()
    s = stream(clock)
    assert s.feed_lost()  # never heard yet: fail safe from the start
    s.consume(sse(": heartbeat"))
    assert not s.feed_lost()
    clock.now += 21.0
    assert s.feed_lost()
