"""Each phase's current interval from a controller's ATSPM events (roadside.cloud.signals.phases)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from roadside.cloud.signals.phases import PhaseState, phase_states
from roadside.cloud.storage.signals import ControllerEvent

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def at(seconds: float, code: int, param: int) -> ControllerEvent:
    return ControllerEvent(T0 + timedelta(seconds=seconds), code, param)


def test_the_newest_interval_of_each_phase_whatever_the_order_of_the_events() -> None:
    events = [
        at(30, 8, 2), at(0, 1, 2), at(34, 10, 2),  # phase 2: green, yellow, red clearance
        at(36, 11, 6), at(10, 1, 6), at(20, 8, 6),  # phase 6: ... red
        at(40, 1, 4), at(5, 43, 4), at(41, 44, 4), at(42, 43, 4),  # phase 4: green, call dropped then again
        at(12, 82, 3),  # a detector event: not a phase interval
    ]  # fmt: skip
    assert phase_states(reversed(events)) == [
        PhaseState(2, "red clearance", T0 + timedelta(seconds=34), called=False),
        PhaseState(4, "green", T0 + timedelta(seconds=40), called=True),
        PhaseState(6, "red", T0 + timedelta(seconds=36), called=False),
    ]


def test_no_phase_events_no_phases() -> None:
    assert phase_states([]) == []
    assert phase_states([at(0, 43, 2)]) == []  # a call alone says nothing about the interval


def test_the_signal_stream_sends_phases_when_they_change_and_a_heartbeat_while_quiet() -> None:
    import asyncio

    from roadside.cloud.console.live import signal_messages
    from roadside.cloud.signals.calls import CallFeed

    readings = iter(
        [None, [PhaseState(2, "green", T0, called=False)], [PhaseState(2, "green", T0, called=False)]]
    )

    async def run() -> list[str]:
        feed = CallFeed()
        subscription = feed.subscribe("sig-1")
        stream = signal_messages(subscription, lambda: next(readings, []), heartbeat_s=0.0, max_duration_s=30,
                                 poll_s=0.05)  # fmt: skip
        messages = []
        async for message in stream:  # bounded by the count, not by the clock
            messages.append(message)
            if len(messages) == 5:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        assert feed.subscribers() == 0  # closing the stream closed its subscription
        return messages

    messages = asyncio.run(run())
    assert messages[0].startswith("retry: 3000")
    # Unreadable (None): nothing; then the phases; unchanged: a heartbeat; then none at all ([]).
    assert messages[1] == ": heartbeat\n\n"
    assert messages[2].startswith('event: phases\ndata: [{"phase":2,"interval":"green"')
    assert messages[3] == ": heartbeat\n\n"
    assert messages[4] == "event: phases\ndata: []\n\n"
