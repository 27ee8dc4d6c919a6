"""The signal page's one live stream: the signal's detector calls as the hub sends them, and its
phases whenever they change (read from the controller's stored ATSPM events once a second).

Server-Sent Events, as ``/v1/signals/<signal>/calls`` sends them (``event: call``, ``id`` its
``seq``, ``: dropped N``), plus ``event: phases`` with every phase's interval as JSON. A page
needs one connection for both (a browser keeps at most six per host over HTTP/1.1).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Final

from roadside.cloud.signals.calls import CallSubscription
from roadside.cloud.signals.phases import PhaseState

PHASE_POLL_S: Final = 1.0

PhaseReader = Callable[[], list[PhaseState] | None]
"""The signal's phases now (a store read, called in a worker thread); ``None``: unreadable just now."""


def phases_message(phases: list[PhaseState]) -> str:
    body = [{"phase": p.phase, "interval": p.interval, "since": p.since.isoformat(), "called": p.called}
            for p in phases]  # fmt: skip
    return f"event: phases\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"


async def signal_messages(
    subscription: CallSubscription,
    phases: PhaseReader,
    heartbeat_s: float,
    max_duration_s: float,
    poll_s: float = PHASE_POLL_S,
) -> AsyncIterator[str]:
    """Calls as they come, phases when they differ from the last sent, a heartbeat while quiet."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_duration_s
    last_phases: list[PhaseState] | None = None
    last_sent = loop.time()
    try:
        yield "retry: 3000\n: connected\n\n"
        while (remaining := deadline - loop.time()) > 0:
            batch, dropped = await subscription.next_batch(min(poll_s, remaining))
            out = [f": dropped {dropped}\n\n"] if dropped else []
            out += [f"id: {c.seq}\nevent: call\ndata: {c.model_dump_json(by_alias=True)}\n\n" for c in batch]
            current = await asyncio.to_thread(phases)
            if current is not None and current != last_phases:
                out.append(phases_message(current))
                last_phases = current
            if not out and loop.time() - last_sent >= heartbeat_s:
                out.append(": heartbeat\n\n")
            if out:
                last_sent = loop.time()
                yield "".join(out)
        yield ": stream ends; reconnect\n\n"
    finally:
        subscription.close()
