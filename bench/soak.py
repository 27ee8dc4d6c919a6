"""Soak: the hub, the broker and a fleet running for an hour, sampled every minute.

    python -m bench.soak --agents 50 --minutes 60 [--real-agents 2] [--sample-s 60] [--plot PNG]

Runs on this machine: Mosquitto with mutual TLS and ACLs, ``roadside hub run``
(SQLite store), ``--real-agents`` ``roadside agent run`` processes on synthetic
cameras (ONNX detection, tracking, counting), and ``--agents`` lightweight
agents in one process (:mod:`bench.soak_fleet`: the agent's own outbox and
uplink, real TLS, real sealing, counts every ``--counts-every-s``, health every
``--health-every-s``, events as a Poisson process).

Every ``--sample-s`` it records, for the hub (with its ingest workers), the
broker, the light fleet's process and each real agent: RSS, open files and
threads; the sizes of the hub's SQLite files and their WALs and of the
outboxes (with WAL); and the ingest lag (from a message's ``created_ms`` in
its outbox to its ``stored_us`` in the hub's ``ingested`` table) of the
messages stored since the last sample, p50/p99/max. A trigger in each outbox
keeps (seq, created_ms) after the uplink deletes the acknowledged row.

Growth: after ``--warmup-min``, a least-squares line through each series;
its slope per hour as a percentage of the series' mean. What should stay flat
(memory, files, threads, WALs, outboxes, lag) must grow under
``--max-growth-pct`` per hour; the telemetry database holds the data it was
sent (retention trims it daily), so its growth is reported in bytes per hour.

At the end the fleet and agents stop cleanly (draining their outboxes) and
the books are kept by message: created (every outbox's trigger) = stored (the
hub's ``ingested``) + rejected (dead letters, by reason) + lost. The last line
is one JSON object; exit 1 if something was lost or a series grew too fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.chaos.collect import rejected_messages
from bench.chaos.stack import Child, Stack, wait_until
from roadside.cloud.home import acl_devices, enroll_device
from roadside.shared.bundle import BrokerAddress, write_bundle

log = logging.getLogger("bench.soak")

# The soak's own note of each message an outbox queued, with its creation time (kept after
# the uplink deletes the acknowledged row, so lag and books can be read at any time).
_TRIGGER = """
CREATE TABLE IF NOT EXISTS soak_created (seq INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS soak_note_created AFTER INSERT ON outbox BEGIN
  INSERT OR REPLACE INTO soak_created (seq, created_ms) VALUES (NEW.seq, NEW.created_ms);
END;
"""
# Series that must stay flat after warm-up (the rest are reported only).
FLAT = ("rss_mb", "fds", "threads", "wal_bytes", "outbox_bytes", "lag_p99_s")


def instrument(outbox: Path) -> None:
    """Create ``outbox`` as the agent would and add the soak's trigger."""
    from roadside.edge.outbox import Outbox

    Outbox(outbox).close()
    with contextlib.closing(sqlite3.connect(outbox)) as db:
        db.executescript(_TRIGGER)


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        yield db
    finally:
        db.close()


def file_bytes(*paths: Path) -> int:
    """Sizes of ``paths`` and their ``-wal`` files, those that exist."""
    total = 0
    for path in paths:
        for p in (path, path.with_name(path.name + "-wal")):
            with contextlib.suppress(OSError):
                total += p.stat().st_size
    return total


def instrument_bytes(outbox: Path) -> int:
    """Bytes the soak's own trigger table takes in ``outbox`` (not the product's)."""
    try:
        with _read_only(outbox) as db:
            row = db.execute(
                "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name = 'soak_created'"
            ).fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0])


def wal_bytes(*paths: Path) -> int:
    return sum(file_bytes(p) - file_bytes_main(p) for p in paths)


def file_bytes_main(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def process_figures(pid: int | None, children: bool = True) -> dict[str, float]:
    """RSS (MB), open files and threads of ``pid`` and (optionally) its descendants."""
    rss, fds, threads = 0, 0, 0
    if pid is None:
        return {"rss_mb": 0.0, "fds": 0, "threads": 0}
    try:
        root = psutil.Process(pid)
        processes = [root, *(root.children(recursive=True) if children else [])]
    except psutil.Error:
        return {"rss_mb": 0.0, "fds": 0, "threads": 0}
    for p in processes:
        with contextlib.suppress(psutil.Error):
            rss += p.memory_info().rss
            fds += p.num_fds()
            threads += p.num_threads()
    return {"rss_mb": round(rss / 2**20, 2), "fds": fds, "threads": threads}


@dataclass
class LagMeter:
    """Ingest lag of messages stored since the last look: created in an outbox, stored by the hub."""

    telemetry_db: Path
    outboxes: dict[str, Path]  # device -> outbox
    created: dict[tuple[str, int], int] = field(default_factory=dict)  # waiting to be stored
    stored: dict[tuple[str, int], int] = field(default_factory=dict)  # seen stored, not yet created
    _last_created: dict[str, int] = field(default_factory=dict)
    _last_stored_us: int = 0

    def sample(self) -> list[float]:
        """Lags (seconds) of the messages matched since the last call."""
        for device, outbox in self.outboxes.items():
            last = self._last_created.get(device, 0)
            with contextlib.suppress(sqlite3.Error), _read_only(outbox) as db:
                for seq, created_ms in db.execute(
                    "SELECT seq, created_ms FROM soak_created WHERE seq > ? ORDER BY seq", (last,)
                ):
                    self.created[(device, int(seq))] = int(created_ms)
                    self._last_created[device] = int(seq)
        if self.telemetry_db.exists():
            with contextlib.suppress(sqlite3.Error), _read_only(self.telemetry_db) as db:
                for device, seq, stored_us in db.execute(
                    "SELECT device_id, seq, stored_us FROM ingested WHERE stored_us > ?",
                    (self._last_stored_us,),
                ):
                    self.stored[(str(device), int(seq))] = int(stored_us)
                    self._last_stored_us = max(self._last_stored_us, int(stored_us))
        lags = []
        for key in [k for k in self.stored if k in self.created]:
            lags.append(max(0.0, self.stored.pop(key) / 1e6 - self.created.pop(key) / 1e3))
        return lags


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def growth_pct_per_h(times_s: list[float], values: list[float]) -> float | None:
    """The least-squares slope per hour as a percentage of the mean (None: too few points)."""
    if len(values) < 3:
        return None
    mean_v = statistics.fmean(values)
    if mean_v == 0:
        return 0.0
    slope = statistics.linear_regression(times_s, values).slope if len(set(times_s)) > 1 else 0.0
    return round(slope * 3600 / mean_v * 100, 2)


@dataclass
class Soak:
    args: argparse.Namespace
    root: Path
    stack: Stack = field(init=False)
    fleet: Child = field(init=False)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def build(self) -> None:
        self.stack = Stack(self.root, self.args.real_agents)
        for agent in self.stack.agents:  # a real agent at a modest frame rate: two cores are shared
            config = agent.argv[agent.argv.index("--config") + 1]
            text = Path(config).read_text().replace("fps = 8.0", f"fps = {self.args.real_fps}")
            Path(config).write_text(
                text.replace("interval_s = 1\n", f"interval_s = {self.args.real_interval_s}\n")
            )
            instrument(agent.outbox)
        fleet_dir = self.root / "fleet"
        address = BrokerAddress(host="127.0.0.1", port=self.stack.broker.port)
        for i in range(self.args.agents):
            bundle, _ = enroll_device(self.stack.home, self.stack.registry, f"soak-{i:04d}", "soak", address)
            write_bundle(bundle, fleet_dir / bundle.device_id / "bundle.json")
            instrument(fleet_dir / bundle.device_id / "outbox.db")
        self.stack.broker.reload_acl(acl_devices(self.stack.registry))  # once, for all of them
        argv = ["-m", "bench.soak_fleet", "--dir", str(fleet_dir)]
        argv += [
            "--counts-every-s",
            str(self.args.counts_every_s),
            "--health-every-s",
            str(self.args.health_every_s),
        ]
        argv += ["--events-per-hour", str(self.args.events_per_hour)]
        self.fleet = Child(argv, self.root / "fleet.log", ready_mark=b"soak fleet started")

    def outboxes(self) -> dict[str, Path]:
        found = {a.device_id: a.outbox for a in self.stack.agents}
        for bundle in sorted((self.root / "fleet").glob("*/bundle.json")):
            found[bundle.parent.name] = bundle.parent / "outbox.db"
        return found

    def sample(self, started: float, lag: LagMeter) -> dict[str, Any]:
        home = self.stack.home
        hub_dbs = [home.telemetry_db, *home.root.glob("*.db")]
        hub_dbs = list(dict.fromkeys(hub_dbs))
        lags = lag.sample()
        outboxes = list(self.outboxes().values())
        figures: dict[str, Any] = {
            "t_s": round(time.monotonic() - started, 1),
            "hub": process_figures(self.stack.hub.process.pid if self.stack.hub.process else None),
            "broker": process_figures(self.stack.broker.pid, children=False),
            "fleet": process_figures(self.fleet.process.pid if self.fleet.process else None),
            "agents": [process_figures(a.process.pid if a.process else None) for a in self.stack.agents],
            "telemetry_db_bytes": file_bytes_main(home.telemetry_db),
            "hub_wal_bytes": wal_bytes(*hub_dbs),
            "outbox_bytes": file_bytes(*outboxes) - sum(instrument_bytes(o) for o in outboxes),
            "outbox_wal_bytes": wal_bytes(*outboxes),
            "lag_n": len(lags),
            "lag_p50_s": percentile(lags, 0.5),
            "lag_p99_s": percentile(lags, 0.99),
            "lag_max_s": max(lags) if lags else None,
        }
        log.info("sample %s", json.dumps(figures))
        return figures

    def run(self) -> dict[str, Any]:
        self.build()
        self.stack.start()
        self.fleet.start()
        lag = LagMeter(self.stack.home.telemetry_db, self.outboxes())
        started = time.monotonic()
        end = started + self.args.minutes * 60
        next_sample = started
        while time.monotonic() < end:
            self.samples.append(self.sample(started, lag))
            next_sample += self.args.sample_s
            time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
        self.samples.append(self.sample(started, lag))
        return self.finish()

    def finish(self) -> dict[str, Any]:
        self.fleet.stop(timeout_s=120)
        for agent in self.stack.agents:
            agent.stop()
        outboxes = self.outboxes()
        created = self.created(outboxes)
        # Everything queued was sent before the stops returned; give the hub time to store it.
        wait_until(lambda: len(created - self.stored()) == 0, self.args.settle_s, poll_s=1.0)
        stored = self.stored()
        rejected, _ = rejected_messages(self.stack.home.dead_letters_db)
        rejected_keys = {(d, s) for d, s, _ in rejected}
        reasons: dict[str, int] = {}
        for _d, _s, reason in rejected:
            reasons[reason] = reasons.get(reason, 0) + 1
        lost = len(created - stored - rejected_keys)
        return {
            "created": len(created),
            "stored": len(created & stored),
            "rejected": reasons,
            "lost": lost,
            "unexplained": len(stored - created),
        }

    def created(self, outboxes: dict[str, Path]) -> set[tuple[str, int]]:
        found: set[tuple[str, int]] = set()
        for device, outbox in outboxes.items():
            with _read_only(outbox) as db:
                found |= {(device, int(s)) for (s,) in db.execute("SELECT seq FROM soak_created")}
        return found

    def stored(self) -> set[tuple[str, int]]:
        with _read_only(self.stack.home.telemetry_db) as db:
            return {(str(d), int(s)) for d, s in db.execute("SELECT device_id, seq FROM ingested")}


def series(samples: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """Each plotted and judged series by name: (times in seconds, values)."""
    found: dict[str, tuple[list[float], list[float]]] = {}

    def add(name: str, t: float, value: float | None) -> None:
        if value is not None:
            found.setdefault(name, ([], []))[0].append(t)
            found[name][1].append(float(value))

    for s in samples:
        t = s["t_s"]
        for who in ("hub", "broker", "fleet"):
            for metric in ("rss_mb", "fds", "threads"):
                add(f"{who}.{metric}", t, s[who][metric])
        for i, agent in enumerate(s["agents"]):
            for metric in ("rss_mb", "fds", "threads"):
                add(f"agent{i}.{metric}", t, agent[metric])
        add("hub.wal_bytes", t, s["hub_wal_bytes"])
        add("agents.outbox_wal_bytes", t, s.get("outbox_wal_bytes"))
        add("agents.outbox_bytes", t, s["outbox_bytes"])
        add("hub.telemetry_db_bytes", t, s["telemetry_db_bytes"])
        add("ingest.lag_p50_s", t, s["lag_p50_s"])
        add("ingest.lag_p99_s", t, s["lag_p99_s"])
    return found


def judge(
    samples: list[dict[str, Any]], warmup_s: float, limit_pct: float
) -> tuple[dict[str, Any], list[str]]:
    """Growth per hour after warm-up for every series; the flat ones past ``limit_pct``."""
    growth: dict[str, Any] = {}
    too_fast = []
    for name, (times, values) in series(samples).items():
        kept = [(t, v) for t, v in zip(times, values, strict=True) if t >= warmup_s]
        if len(kept) < 3:
            continue
        ts, vs = [t for t, _ in kept], [v for _, v in kept]
        if name == "hub.telemetry_db_bytes":
            slope = statistics.linear_regression(ts, vs).slope if len(set(ts)) > 1 else 0.0
            growth["hub.telemetry_db_bytes_per_h"] = round(slope * 3600)
            continue
        pct = growth_pct_per_h(ts, vs)
        growth[name] = pct
        if pct is not None and name.endswith(FLAT) and pct > limit_pct:
            too_fast.append(name)
    return growth, too_fast


def plot(samples: list[dict[str, Any]], path: Path, title: str) -> bool:
    """The series on four panels as a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (the dev extra): no plot")
        return False
    found = series(samples)
    panels = [
        ("RSS (MiB)", "rss_mb"),
        ("open files", "fds"),
        ("threads", "threads"),
        ("SQLite (MiB)", "bytes"),
        ("ingest lag (s)", "lag_"),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 13), sharex=True)
    for ax, (label, key) in zip(axes, panels, strict=True):
        for name, (times, values) in found.items():
            if key not in name:
                continue
            scale = 2**20 if key == "bytes" else 1
            ax.plot([t / 60 for t in times], [v / scale for v in values], label=name, marker=".", lw=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", ncol=3)
    axes[-1].set_xlabel("minutes")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-soak-", dir=args.workdir))
    soak = Soak(args, root)
    load_before = psutil.getloadavg()
    try:
        books = soak.run()
    finally:
        with contextlib.suppress(Exception):
            soak.fleet.kill()
        with contextlib.suppress(Exception):
            soak.stack.close()
    warmup_s = args.warmup_min * 60
    growth, too_fast = judge(soak.samples, warmup_s, args.max_growth_pct)
    samples_file = root / "samples.json"
    samples_file.write_text(json.dumps(soak.samples))
    plotted = False
    if args.plot is not None:
        title = f"bench.soak: {args.agents} light + {args.real_agents} real agents, {args.minutes:g} min"
        plotted = plot(soak.samples, args.plot, title)
    last = soak.samples[-1]
    lag99 = [s["lag_p99_s"] for s in soak.samples if s["lag_p99_s"] is not None]
    return {
        "agents": args.agents,
        "real_agents": args.real_agents,
        "minutes": args.minutes,
        "samples": len(soak.samples),
        "warmup_min": args.warmup_min,
        **books,
        "growth_pct_per_h": growth,
        "too_fast": too_fast,
        "max_growth_pct": args.max_growth_pct,
        "hub_rss_mb_end": last["hub"]["rss_mb"],
        "fleet_rss_mb_end": last["fleet"]["rss_mb"],
        "broker_rss_mb_end": last["broker"]["rss_mb"],
        "hub_fds_end": last["hub"]["fds"],
        "hub_threads_end": last["hub"]["threads"],
        "lag_p99_s_max": max(lag99) if lag99 else None,
        "messages_per_s": round(books["created"] / (args.minutes * 60), 2) if args.minutes else None,
        "loadavg_start": [round(x, 2) for x in load_before],
        "loadavg_end": [round(x, 2) for x in psutil.getloadavg()],
        "plot": str(args.plot) if plotted else None,
        "samples_file": str(samples_file),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=50, help="lightweight agents (one process)")
    p.add_argument("--real-agents", type=int, default=2, help="roadside agent run processes")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--sample-s", type=float, default=60.0)
    p.add_argument("--warmup-min", type=float, default=10.0)
    p.add_argument("--max-growth-pct", type=float, default=5.0, help="per hour, after warm-up")
    p.add_argument("--counts-every-s", type=float, default=60.0)
    p.add_argument("--health-every-s", type=float, default=30.0)
    p.add_argument("--events-per-hour", type=float, default=20.0)
    p.add_argument("--real-fps", type=float, default=2.0)
    p.add_argument("--real-interval-s", type=int, default=10)
    p.add_argument("--settle-s", type=float, default=120.0, help="for the hub to store the last messages")
    p.add_argument("--plot", type=Path, default=None, help="write the PNG here")
    p.add_argument("--workdir", type=Path, default=None, help="where the run's directory is made")
    return p


def main() -> None:
    args = parser().parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # finally-blocks stop what was started
    result = run(args)
    print(json.dumps(result))
    sys.exit(1 if result["lost"] or result["too_fast"] else 0)


if __name__ == "__main__":
    main()
