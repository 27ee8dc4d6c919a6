"""``python -m bench.chaos.skewed_agent --bundle B --config C --offset-file F``: the agent, its clock off.

The agent as ``roadside agent run`` builds it, except that its clock edge (the
clock its command intake reads and the uplink stamps envelopes with) is the
wall clock plus the seconds written in ``--offset-file``, read again whenever
the file changes: the harness makes a device 10 minutes fast, slow, or jump,
without touching this machine's clock.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path

from roadside.edge.agent import Agent
from roadside.edge.assembly import CommandSink, UplinkFactory, build_agent
from roadside.edge.outbox import Outbox
from roadside.edge.settings import AgentSettings, load_agent_settings
from roadside.edge.transport.delivery import uplink_status_path
from roadside.edge.transport.mqtt import MqttUplink, tls_scratch_dir
from roadside.shared.bundle import EnrollmentBundle, read_bundle
from roadside.shared.logs import setup_logging


class FileOffsetClock:
    """Wall-clock seconds plus the offset in ``path`` (0 while the file is missing or unreadable)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: float | None = None
        self._offset_s = 0.0

    def offset_s(self) -> float:
        try:
            changed = self.path.stat().st_mtime
            if changed != self._seen:
                self._offset_s, self._seen = float(self.path.read_text().strip() or 0), changed
        except (OSError, ValueError):
            return self._offset_s
        return self._offset_s

    def __call__(self) -> float:
        return time.time() + self.offset_s()

    def ms(self) -> int:
        return int(self() * 1000)


def skewed_uplink(settings: AgentSettings, clock: FileOffsetClock) -> UplinkFactory:
    def make(bundle: EnrollmentBundle, outbox: Outbox, on_command: CommandSink) -> MqttUplink:
        return MqttUplink(
            bundle,
            outbox,
            on_command,
            settings.outbox.max_inflight,
            clock_ms=clock.ms,
            scratch_dir=tls_scratch_dir(settings.outbox.path),
            status_file=uplink_status_path(settings.outbox.path),
        )

    return make


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos.skewed_agent")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--offset-file", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = load_agent_settings(args.config, bundle=args.bundle)
    enrollment = read_bundle(settings.bundle)
    setup_logging("INFO", device_id=enrollment.device_id)
    clock = FileOffsetClock(args.offset_file)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent: Agent = build_agent(
        settings, enrollment, clock=clock, config_path=args.config, uplink=skewed_uplink(settings, clock)
    )
    agent.run_forever(stop)


if __name__ == "__main__":
    main()
