"""``roadside signal relay`` as a function: the hub's detector calls into a cabinet over NTCIP 1202.

:func:`run_relay` reads the hub's call stream for one signal, ticks a
:class:`~roadside.signalcontrol.ntcip.CallRelay` every 0.1 s of wall clock
(the cabinet keeps its own time; the relay only keeps up with it), and posts
the phase events it reads back to the hub's ATSPM log, until ``stop`` is set
or ``max_ticks`` pass.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from roadside.shared.errors import ConfigError
from roadside.signalcontrol.hub import HubCallStream, HubEventPoster, hub_clients
from roadside.signalcontrol.ntcip import CallRelay, RelaySummary, SnmpV2cClient

TICK_S = 0.1


@dataclass(frozen=True)
class RelaySettings:
    """Everything ``roadside signal relay`` needs, built once from the command line."""

    signal: str
    hub_url: str
    token: str
    cabinet_host: str
    cabinet_port: int = 161
    community: str = "public"
    write_community: str = "private"
    max_phases: int | None = None  # None: ask the cabinet (maxPhases)
    refresh_s: float = 1.0
    snmp_timeout_s: float = 0.3
    ca_file: Path | None = None
    stale_after_s: float = 20.0
    max_ticks: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.cabinet_port < 65_536:
            raise ConfigError(f"cabinet port {self.cabinet_port} is not a UDP port")
        if self.refresh_s <= 0 or self.snmp_timeout_s <= 0:
            raise ConfigError("refresh_s and snmp_timeout_s must be positive")


def run_relay(settings: RelaySettings, stop: threading.Event | None = None) -> RelaySummary:
    """Relay until ``stop`` or ``max_ticks``; the summary counts writes, reads, events and errors."""
    stop = stop or threading.Event()

    client = hub_clients(settings.hub_url, settings.token, settings.ca_file)

    link = SnmpV2cClient(
        settings.cabinet_host,
        settings.cabinet_port,
        settings.community,
        write_community=settings.write_community,
        timeout_s=settings.snmp_timeout_s,
    )
    stream = HubCallStream(client, settings.signal, stale_after_s=settings.stale_after_s).start()
    poster = HubEventPoster(client, settings.signal).start()
    try:
        relay = CallRelay(link, stream, poster, max_phases=settings.max_phases, refresh_s=settings.refresh_s)
        next_tick = time.monotonic()
        while not stop.is_set():
            if settings.max_ticks is not None and relay.summary.ticks >= settings.max_ticks:
                break
            relay.tick()
            next_tick += TICK_S
            delay = next_tick - time.monotonic()
            if delay < -1.0:  # fell a second behind (a long SNMP outage): do not try to catch up
                next_tick = time.monotonic()
            elif delay > 0:
                stop.wait(delay)
        return relay.summary
    finally:
        stream.stop()
        poster.stop()
        link.close()
