"""A city-sized fleet against one broker and one hub on this machine.

    python -m bench.city --devices 10000 [--minutes 5] [--procs 2] [--canary 10] [--waves 10,50,100]

Set-up: a hub home with a TUF repository and a published model, Mosquitto with
mutual TLS and the generated ACL, and one ``roadside hub run`` (SQLite store).
Devices are enrolled through a fast path of the hub's own enrollment: one CA
load for all, a fresh P-256 client certificate and fresh envelope keys per
device, each registered with ``registry.devices.enroll`` (the ACL's patterns
admit every certificate name, so the broker is not reloaded). ``--procs``
processes of :mod:`bench.city_fleet` hold the devices: a real TLS session each,
real sealed messages, counts every 60 s, health every 30 s, events as a Poisson
process (``--events-per-hour``), and real hub commands opened and answered.

Phases: connect (until every device holds a session, or ``--connect-timeout-s``),
steady traffic for ``--minutes`` (hub and broker CPU and memory sampled every
10 s), a rollout to all of them (``create_rollout`` on the registry, which the
hub's controller runs: canary, then waves; no shadow gate, as these devices run
no inference; timed until the controller says ``completed``), then the fleet
stops, waiting for its last PUBACKs, and the books are kept: every message a
device made (device, seq) is in the hub's ``ingested`` table, or lost.

Ingest lag is a message's creation on the device to its row in ``ingested``
(``stored_us``), over every message made in the steady phase.

The last line is one JSON object (``devices``, ``connected``, ``lag_p99_s``,
``lost``, ``rollout_seconds`` and the rest); exit 1 if anything was lost or
the rollout did not complete.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.chaos.stack import Child, wait_until
from bench.rollout import SHIPPED_MODEL, init_repository
from bench.soak import percentile
from roadside.cloud.broker.mosquitto import LOG_FILE, MosquittoBroker
from roadside.cloud.home import HubHome, init_home
from roadside.cloud.registry import Registry
from roadside.cloud.release.controller import create_rollout, rollout_status
from roadside.cloud.release.repository import release_model
from roadside.cloud.release.rollouts import FINAL_STATES, GateThresholds, RolloutSpec, parse_waves
from roadside.shared.bundle import BrokerAddress, EnrollmentBundle
from roadside.shared.keys import KeyPair

log = logging.getLogger("bench.city")
MODEL = "detector"
NEW_VERSION = "2.0.0"
DISTRICT = 100  # devices per site


def raise_fd_limit() -> tuple[int, int]:
    """The soft open-files limit up to the hard one (children inherit it: the broker holds a
    socket per device); as root, both up to what the kernel allows a process."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        ceiling = hard
    for wanted in (min(ceiling, 1 << 20), hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
            break
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def enroll_city(home: HubHome, registry: Registry, count: int, port: int, out: Path) -> None:
    """``issue_enrollment`` for ``count`` devices with the CA loaded once; bundles into ``out``."""
    ca = home.ca()
    ca_pem = home.ca_file.read_text()
    hub_keys = home.hub_keys().public().to_json()
    broker = BrokerAddress(host="127.0.0.1", port=port)
    out.mkdir(parents=True, exist_ok=True)
    home.device_certs.mkdir(mode=0o700, parents=True, exist_ok=True)
    started = time.monotonic()
    for i in range(count):
        device_id = f"c{i:05d}"
        site = f"district-{i // DISTRICT:03d}"
        keys = KeyPair.generate()
        issued = ca.issue_client(device_id)
        registry.devices.enroll(device_id, site, keys.public(), actor="bench-city")
        (home.device_certs / f"{device_id}.cert.pem").write_bytes(issued.cert_pem)
        bundle = EnrollmentBundle(
            device_id=device_id,
            site=site,
            broker=broker,
            ca_cert_pem=ca_pem,
            client_cert_pem=issued.cert_pem.decode(),
            client_key_pem=issued.key_pem.decode(),
            device_keys=keys.to_json(),
            hub_keys=hub_keys,
        )
        path = out / f"{device_id}.json"
        path.write_text(bundle.model_dump_json())
        path.chmod(0o600)
        if (i + 1) % 1000 == 0:
            log.info("enrolled %d devices (%.0f/s)", i + 1, (i + 1) / (time.monotonic() - started))


def publish_model(home: HubHome, registry: Registry, workdir: Path) -> None:
    repository = init_repository(home, workdir / "offline")
    for version in ("1.0.0", NEW_VERSION):
        path = workdir / "build" / version / f"{MODEL}.onnx"
        path.parent.mkdir(parents=True)
        shutil.copyfile(SHIPPED_MODEL, path)
        release_model(repository, registry, path, name=MODEL, min_agent_version="0.1.0", version=version)


@dataclass
class Sampler:
    """CPU (cores busy) and memory of the hub (with its workers) and the broker, every call."""

    pids: dict[str, int]
    rows: list[dict[str, Any]] = field(default_factory=list)
    _last: dict[str, tuple[float, float]] = field(default_factory=dict)

    def sample(self) -> None:
        row: dict[str, Any] = {"t": time.monotonic()}
        for name, pid in self.pids.items():
            cpu, rss, fds = 0.0, 0, 0
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(pid)
                for p in [parent, *parent.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        times = p.cpu_times()
                        cpu += times.user + times.system
                        rss += p.memory_info().rss
                        fds += p.num_fds()
            last = self._last.get(name)
            self._last[name] = (row["t"], cpu)
            row[name] = {
                "cpu_cores": round((cpu - last[1]) / (row["t"] - last[0]), 3) if last else None,
                "rss_mb": round(rss / 2**20, 1),
                "fds": fds,
            }
        self.rows.append(row)

    def summary(self, name: str) -> dict[str, Any]:
        cores = [r[name]["cpu_cores"] for r in self.rows if r[name]["cpu_cores"] is not None]
        return {
            "cpu_cores_mean": round(sum(cores) / len(cores), 3) if cores else None,
            "cpu_cores_max": max(cores) if cores else None,
            "rss_mb_max": max(r[name]["rss_mb"] for r in self.rows) if self.rows else None,
            "fds_max": max(r[name]["fds"] for r in self.rows) if self.rows else None,
        }


class CpuQuota:
    """A CPU cgroup holding its processes to a share of one core (root; cgroup v1's ``cpu``
    controller, else v2's ``cpu.max``), removed on exit once its processes have ended."""

    PERIOD_US = 100_000

    def __init__(self, name: str, cores: float) -> None:
        if not 0.001 <= cores <= 64:
            raise SystemExit(f"--hub-cpu {cores}: a share of one core, 0.001 to 64")
        quota = max(1000, int(cores * self.PERIOD_US))
        v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
        try:
            if (v1 / "cpu.cfs_quota_us").exists():
                self.path = v1 / name
                self.path.mkdir(exist_ok=True)
                (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                self.path = v2 / name
                self.path.mkdir(exist_ok=True)
                (self.path / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        except OSError as exc:
            raise SystemExit(f"--hub-cpu needs root and a CPU cgroup controller: {exc}") from exc

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def __enter__(self) -> CpuQuota:
        return self

    def __exit__(self, *exc: object) -> None:
        for _ in range(50):  # the processes have been stopped; the kernel drops them shortly
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        log.warning("could not remove the cgroup %s", self.path)


class City:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.home = init_home(workdir / "hub", ["localhost"], ["127.0.0.1"])
        self.registry = Registry(self.home.registry_url)
        self.broker = MosquittoBroker(
            self.home.broker_dir,
            ca_cert_pem=self.home.ca_file.read_bytes(),
            server=self.home.broker_server_cert(),
        )
        self.hub: Child | None = None
        self.fleet: list[Child] = []

    def status(self) -> list[dict[str, Any]]:
        found = []
        for i in range(len(self.fleet)):
            with contextlib.suppress(OSError, ValueError):
                found.append(json.loads((self.workdir / f"fleet-{i}.status.json").read_text()))
        return found

    def total(self, key: str) -> int:
        return sum(int(s.get(key) or 0) for s in self.status())

    def start(self) -> float:
        started = time.monotonic()
        publish_model(self.home, self.registry, self.workdir)
        self.broker.start()
        enroll_city(self.home, self.registry, self.args.devices, self.broker.port, self.workdir / "bundles")
        enroll_s = time.monotonic() - started
        config = self.workdir / "hub.json"
        # The devices here do not download (bench.rollout measures that): the repository on any port.
        settings = {"broker_port": self.broker.port, "api_port": 0, "repo_port": 0, "client_id": "hub-city"}
        settings.update({k: json.loads(v) for k, v in (s.split("=", 1) for s in self.args.hub_setting)})
        config.write_text(json.dumps(settings))
        argv = ["-c", "from roadside.cli import main; main()", "hub", "run"]
        argv += ["--home", str(self.home.root), "--config", str(config)]
        self.hub = Child(argv, self.workdir / "hub.log", ready_mark=b"hub subscribed")
        self.hub.start()
        per = -(-self.args.devices // self.args.procs)
        for i in range(self.args.procs):
            first, count = i * per, min(per, self.args.devices - i * per)
            if count <= 0:
                break
            argv = ["-m", "bench.city_fleet", "--dir", str(self.workdir), "--first", str(first)]
            argv += ["--count", str(count), "--port", str(self.broker.port)]
            argv += ["--status", str(self.workdir / f"fleet-{i}.status.json")]
            argv += ["--created", str(self.workdir / f"fleet-{i}.created.tsv")]
            argv += [
                "--events-per-hour",
                str(self.args.events_per_hour),
                "--handshakes",
                str(self.args.handshakes),
            ]
            argv += [
                "--counts-every-s",
                str(self.args.counts_every_s),
                "--health-every-s",
                str(self.args.health_every_s),
            ]
            child = Child(argv, self.workdir / f"fleet-{i}.log", ready_mark=b"city fleet started")
            child.start(ready_s=600)
            self.fleet.append(child)
        return enroll_s

    def wait_connected(self) -> tuple[int, float]:
        started = time.monotonic()
        last_log = 0.0

        def all_in() -> bool:
            nonlocal last_log
            connected = self.total("connected")
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                log.info("connected %d of %d", connected, self.args.devices)
            return connected >= int(self.args.devices)

        wait_until(all_in, self.args.connect_timeout_s, poll_s=1.0)
        return self.total("connected"), time.monotonic() - started

    def rollout(self) -> dict[str, Any]:
        spec = RolloutSpec(
            model_name=MODEL,
            model_version=NEW_VERSION,
            target="all",
            canary=self.args.canary,
            waves=parse_waves(self.args.waves),
            soak_s=0.0,
            min_frames=0,
            gates=GateThresholds(require_shadow=False, install_timeout_s=self.args.rollout_timeout_s),
        )
        started = time.monotonic()
        record = create_rollout(self.registry, spec, actor="bench-city")
        status = rollout_status(self.registry, record.id)
        deadline = started + self.args.rollout_timeout_s
        while status.state not in FINAL_STATES and time.monotonic() < deadline:
            time.sleep(1.0)
            status = rollout_status(self.registry, record.id)
        return {
            "rollout_state": status.state,
            "rollout_seconds": round(time.monotonic() - started, 1) if status.state == "completed" else None,
            "rollout_devices": status.counts(),
        }

    def stop_fleet(self) -> list[tuple[str, int, int]]:
        for child in self.fleet:
            if child.process is not None:
                child.process.terminate()
        for child in self.fleet:
            if child.process is not None:
                child.process.wait(timeout=self.args.drain_s + 120)
        created = []
        for i in range(len(self.fleet)):
            for line in (self.workdir / f"fleet-{i}.created.tsv").read_text().splitlines():
                device, seq, created_ms = line.split("\t")
                created.append((device, int(seq), int(created_ms)))
        return created

    def stored(self) -> dict[tuple[str, int], int]:
        db = sqlite3.connect(f"file:{self.home.telemetry_db}?mode=ro", uri=True, timeout=30)
        try:
            return {
                (str(d), int(s)): int(us)
                for d, s, us in db.execute("SELECT device_id, seq, stored_us FROM ingested")
            }
        finally:
            db.close()

    def hub_disconnects(self) -> int:
        """How often the hub lost its broker connection (its log), and why the broker says it did."""
        with contextlib.suppress(OSError):
            return (self.workdir / "hub.log").read_bytes().count(b"hub disconnected from broker")
        return 0

    def broker_timeouts(self) -> int:
        """Keepalive timeouts the broker logged for the hub's client."""
        with contextlib.suppress(OSError):
            log_text = (self.home.broker_dir / LOG_FILE).read_bytes()
            return log_text.count(b"Client hub-city has exceeded timeout")
        return 0

    def close(self) -> None:
        for child in self.fleet:
            child.kill()
        if self.hub is not None:
            self.hub.stop()
        self.broker.stop()
        self.registry.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="bench-city-", dir=args.workdir))
    city = City(args, workdir)
    load_start = psutil.getloadavg()
    stack = contextlib.ExitStack()
    try:
        enroll_s = city.start()
        connected, connect_s = city.wait_connected()
        log.info("%d of %d devices connected in %.0f s", connected, args.devices, connect_s)
        assert city.hub is not None
        assert city.hub.process is not None
        if args.hub_cpu is not None:  # a hub starved of CPU, as on a loaded machine, from here on
            quota = stack.enter_context(CpuQuota("bench-city-hub", args.hub_cpu))
            quota.add(city.hub.process.pid)
            log.info("hub limited to %.0f %% of one core", 100 * args.hub_cpu)
        pids = {"hub": city.hub.process.pid, "broker": city.broker.pid or 0}
        pids.update({f"fleet{i}": c.process.pid for i, c in enumerate(city.fleet) if c.process})
        sampler = Sampler(pids)
        steady_start_ms = int(time.time() * 1000)
        acked_before, t0 = city.total("acked"), time.monotonic()
        end = t0 + args.minutes * 60
        while time.monotonic() < end:
            sampler.sample()
            time.sleep(min(10.0, max(0.0, end - time.monotonic())))
        sampler.sample()
        steady_s = time.monotonic() - t0
        acked_steady = city.total("acked") - acked_before
        held = city.total("connected")
        broker_fds = sampler.rows[-1]["broker"]["fds"]
        steady_end_ms = int(time.time() * 1000)
        rollout = city.rollout() if args.rollout else {"rollout_state": "skipped", "rollout_seconds": None}
        log.info("rollout: %s", rollout)
        sampler.sample()
        statuses = city.status()
        created = city.stop_fleet()
        final = city.status()
        keys = {(d, s) for d, s, _ in created}
        wait_until(lambda: len(keys - city.stored().keys()) == 0, args.settle_s, poll_s=2.0)
        stored = city.stored()
        hub_disconnects = city.hub_disconnects()
        broker_timeouts = city.broker_timeouts()
    finally:
        city.close()
        stack.close()
    lags = [
        stored[(d, s)] / 1e6 - c / 1e3
        for d, s, c in created
        if steady_start_ms <= c <= steady_end_ms and (d, s) in stored
    ]
    lost = len(keys - stored.keys())
    result = {
        "devices": args.devices,
        "procs": args.procs,
        "connected": held,
        "connect_seconds": round(connect_s, 1),
        "enroll_seconds": round(enroll_s, 1),
        "broker_fds": broker_fds,
        "steady_minutes": round(steady_s / 60, 2),
        "messages_per_s": round(acked_steady / steady_s, 1) if steady_s else None,
        "lag_p50_s": round(p, 3) if (p := percentile(lags, 0.5)) is not None else None,
        "lag_p99_s": round(p, 3) if (p := percentile(lags, 0.99)) is not None else None,
        "lag_max_s": round(max(lags), 3) if lags else None,
        "created": len(keys),
        "stored": len(keys & stored.keys()),
        "lost": lost,
        "unacked_at_end": sum(int(s.get("unacked") or 0) for s in final),
        "reconnects": sum(int(s.get("connects") or 0) for s in statuses) - held,
        "connect_failures": sum(int(s.get("connect_failures") or 0) for s in statuses),
        "refused": sum(int(s.get("refused") or 0) for s in final),
        "hub_cpu_limit": args.hub_cpu,
        "hub_disconnects": hub_disconnects,
        "hub_keepalive_timeouts": broker_timeouts,
        **rollout,
        "hub": sampler.summary("hub"),
        "broker": sampler.summary("broker"),
        "fleet": [sampler.summary(f"fleet{i}") for i in range(len(city.fleet))],
        "nofile": list(nofile),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in psutil.getloadavg()],
        "workdir": str(workdir),
    }
    if not args.keep:
        shutil.rmtree(workdir / "bundles", ignore_errors=True)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=10000)
    p.add_argument("--procs", type=int, default=2, help="device processes")
    p.add_argument("--minutes", type=float, default=5.0, help="steady traffic before the rollout")
    p.add_argument("--counts-every-s", type=float, default=60.0)
    p.add_argument("--health-every-s", type=float, default=30.0)
    p.add_argument("--events-per-hour", type=float, default=20.0)
    p.add_argument("--handshakes", type=int, default=64, help="TLS handshakes at once per process")
    p.add_argument("--connect-timeout-s", type=float, default=900.0)
    p.add_argument("--canary", type=int, default=10)
    p.add_argument("--waves", default="10,50,100")
    p.add_argument("--no-rollout", dest="rollout", action="store_false")
    p.add_argument("--rollout-timeout-s", type=float, default=900.0)
    p.add_argument("--drain-s", type=float, default=120.0)
    p.add_argument("--settle-s", type=float, default=300.0, help="for the hub to store the last messages")
    p.add_argument("--hub-setting", action="append", default=[], metavar="KEY=JSON",
                   help="an extra hub setting, e.g. ingest_mqtt_client='\"paho\"' (repeat)")  # fmt: skip
    p.add_argument("--hub-cpu", type=float, default=None, metavar="CORES",
                   help="once the fleet is connected, hold the hub to this share of one core "
                        "(a CPU cgroup; root): a hub on a loaded machine, falling behind")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the devices' bundles (private keys) afterwards")
    p.add_argument("--workdir", type=Path, default=None, help="where the run's directory is made")
    return p


def main() -> None:
    args = parser().parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # finally-blocks stop what was started
    for noisy in ("roadside", "alembic", "tuf"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = run(args)
    print(json.dumps(result))
    sys.exit(1 if result["lost"] or result["rollout_state"] not in ("completed", "skipped") else 0)


if __name__ == "__main__":
    main()
