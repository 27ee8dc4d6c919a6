"""Lightweight agents for :mod:`bench.soak`: the agent's own outbox and uplink, no camera.

    python -m bench.soak_fleet --dir DIR [--counts-every-s 60] [--health-every-s 30] [--events-per-hour 20]

Each ``DIR/<device>/bundle.json`` becomes one device: a real
:class:`roadside.edge.outbox.Outbox` (SQLite, WAL, ``synchronous=FULL``) and a real
:class:`roadside.edge.transport.mqtt.MqttUplink` (mutual TLS, QoS 1, sealing each
message as it sends it), fed by one traffic thread with the messages
:mod:`bench.traffic` makes. It runs as its own process so that the soak samples
its memory, files and threads apart from the harness's.

SIGTERM stops the traffic, then every uplink drains its outbox (at most
``--drain-s``) and closes, as ``roadside agent run`` does on SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import threading
import time
from pathlib import Path

from bench.traffic import TrafficClock, body
from roadside.edge.outbox import Outbox, Priority
from roadside.edge.transport.mqtt import MqttUplink, tls_scratch_dir
from roadside.shared.bundle import read_bundle

log = logging.getLogger("bench.soak_fleet")
PRIORITY = {"counts": Priority.COUNTS, "health": Priority.HEALTH, "events": Priority.EVENTS}
READY = "soak fleet started"


class LightAgent:
    """One device: an outbox, an uplink, and when it next sends what."""

    def __init__(self, root: Path, clock: TrafficClock, counts_every_s: float) -> None:
        bundle = read_bundle(root / "bundle.json")
        self.device_id = bundle.device_id
        self.outbox = Outbox(root / "outbox.db", max_bytes=64 * 1024 * 1024)
        self.uplink = MqttUplink(
            bundle,
            self.outbox,
            on_command=lambda _wire: None,  # no commands in a soak
            scratch_dir=tls_scratch_dir(root / "outbox.db"),
        )
        self.clock = clock
        self.interval_s = int(counts_every_s)
        self.started = time.monotonic()

    def send_due(self, now: float) -> int:
        sent = 0
        for kind in self.clock.due(now):
            payload = body(kind, self.clock.rng, max(1, self.interval_s), now - self.started, 0)
            self.outbox.put(kind, payload, PRIORITY[kind])
            sent += 1
        return sent


def traffic(agents: list[LightAgent], stop: threading.Event) -> None:
    """Put each device's messages when due, until ``stop``."""
    now = time.monotonic()
    for agent in agents:
        agent.clock.start(now)
    while not stop.is_set():
        now = time.monotonic()
        for agent in agents:
            agent.send_due(now)
        wake = min(a.clock.next_due() for a in agents)
        stop.wait(max(0.01, min(1.0, wake - time.monotonic())))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--counts-every-s", type=float, default=60.0)
    parser.add_argument("--health-every-s", type=float, default=30.0)
    parser.add_argument("--events-per-hour", type=float, default=20.0)
    parser.add_argument("--drain-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    roots = sorted(p.parent for p in args.dir.glob("*/bundle.json"))
    agents = [
        LightAgent(
            root,
            TrafficClock(
                args.counts_every_s, args.health_every_s, args.events_per_hour, random.Random(args.seed + i)
            ),
            args.counts_every_s,
        )
        for i, root in enumerate(roots)
    ]
    for agent in agents:
        agent.uplink.start()
    thread = threading.Thread(target=traffic, args=(agents, stop), name="soak-traffic")
    thread.start()
    log.info("%s with %d devices", READY, len(agents))
    while not stop.wait(1.0):
        pass
    thread.join()
    deadline = time.monotonic() + args.drain_s
    for agent in agents:  # each drains within what is left of the shared deadline
        agent.uplink.stop(drain_s=max(0.0, deadline - time.monotonic()))
    left = sum(a.outbox.backlog() for a in agents)
    for agent in agents:
        agent.outbox.close()
    log.info("soak fleet stopped; %d messages left queued", left)


if __name__ == "__main__":
    main()
