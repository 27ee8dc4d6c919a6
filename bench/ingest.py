"""Ingest throughput: the hub against a bare subscriber and a naive ingester, same broker, same load.

    python -m bench.ingest --devices 50 --seconds 20 [--store sqlite|influx] [--hubs 1|2] [--ingest-workers N]
                           [--encoding compact|json]

Method. Simulated devices (real certificates, real sealed envelopes, QoS 1)
publish for ``--seconds`` through a real Mosquitto while every consumer is
offline with a persistent session, so the broker queues the same backlog for
each. Then each consumer connects alone and drains it; its rate is messages
over the time from connecting to the last message handled (for the hub: the
last message durably stored and acknowledged). This measures the consumers,
not the publishers, on a machine where both would otherwise share two cores.

- bare: a paho subscriber that only receives (the ceiling).
- naive: on_message → unseal → json.loads → one synchronous write per
  message (an INSERT + commit on SQLite, one HTTP /write on InfluxDB).
- hub: ``roadside hub run`` processes (micro-batches, manual acks after
  durable writes). They start and subscribe first, are frozen with SIGSTOP
  while the load is published, and are timed from SIGCONT until the store
  holds every record. With ``--hubs N`` they share one MQTT 5 shared
  subscription.

lost = records expected minus records in the store; duplicated = the excess.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.fleet import EPOCH, SimulatedDevice, counts_body, enroll_fleet
from roadside.cloud.broker.mosquitto import MosquittoBroker
from roadside.cloud.home import HubHome, acl_devices, hub_identity, init_home
from roadside.cloud.registry import Registry
from roadside.cloud.settings import InfluxV1StoreConfig, SqliteStoreConfig, StoreConfig
from roadside.cloud.storage.base import CountQuery, TimeSeriesStore
from roadside.mqttlink import ConnAck, Message, MqttSession, SessionConfig, SubAck, TlsFiles
from roadside.shared.compact import decode_counts, is_compact
from roadside.shared.envelope import HubOpener
from roadside.shared.keys import PublicKeys

log = logging.getLogger("bench.ingest")
PLAIN = "roadside/v1/+/+/+"
MAX_BACKLOG = 95_000  # Mosquitto queues at most 100,000 messages per offline client here


def _consumer(
    home: HubHome,
    port: int,
    client_id: str,
    *,
    on_connect: Callable[[MqttSession, ConnAck], None] | None = None,
    on_subscribe: Callable[[SubAck], None] | None = None,
    on_message: Callable[[Message], None] | None = None,
) -> MqttSession:
    """A consumer with a persistent session (the broker keeps its backlog for an hour)."""
    # The broker takes each client id from the certificate's name: every consumer is a hub
    # identity of its own (``hub-bench-bare``...), issued by the home's CA on first use.
    registry = Registry(home.registry_url)
    try:
        files = hub_identity(home, registry, f"hub-bench-{client_id}")  # made already: no reload here
    finally:
        registry.close()
    config = SessionConfig(
        "127.0.0.1",
        port,
        f"hub-bench-{client_id}",
        persistent=True,
        session_expiry_s=3600,
        tls=TlsFiles(home.ca_file, files.cert, files.key),
    )
    return MqttSession(config, on_connect=on_connect, on_subscribe=on_subscribe, on_message=on_message)


def register_session(home: HubHome, port: int, client_id: str, topic: str) -> None:
    """Connect once with a persistent session and subscribe, so the broker queues for us."""
    done = threading.Event()
    client = _consumer(
        home,
        port,
        client_id,
        on_connect=lambda session, _ack: session.subscribe(topic, qos=1),
        on_subscribe=lambda _ack: done.set(),
    )
    client.connect()
    client.loop_start()
    assert done.wait(10), f"{client_id} could not subscribe"
    client.disconnect()
    client.loop_stop()


def drain(
    home: HubHome, port: int, client_id: str, total: int, handle: Callable[[bytes], None]
) -> tuple[float, float]:
    """Connect a consumer to its queued backlog; seconds until ``total`` messages were handled,
    and the CPU seconds this process spent meanwhile (the consumer is all it runs then)."""
    received = 0
    finished = threading.Event()

    def on_message(message: Message) -> None:
        nonlocal received
        handle(message.payload)
        received += 1
        if received >= total:
            finished.set()

    client = _consumer(home, port, client_id, on_message=on_message)
    started, cpu_started = time.perf_counter(), time.process_time()
    client.connect()
    client.loop_start()
    finished.wait(600)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    client.disconnect()
    client.loop_stop()
    if received < total:
        log.warning("%s received %d of %d", client_id, received, total)
    return elapsed, cpu


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds of these processes and their children (ingest workers)."""
    total = 0.0
    for pid in pids:
        parent = psutil.Process(pid)
        for process in [parent, *parent.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a child that ended meanwhile
                times = process.cpu_times()
                total += times.user + times.system
    return total


def publish_load(
    bundles: list[Any], port: int, seconds: float, records: int, encoding: str
) -> tuple[int, float]:
    """Every device publishes as fast as QoS 1 allows for ``seconds`` (or up to the backlog cap)."""
    per_device_cap = MAX_BACKLOG // len(bundles)
    devices = [SimulatedDevice(b) for b in bundles]
    for device in devices:
        device.connect("127.0.0.1", port)
    counts = [0] * len(devices)
    deadline = time.monotonic() + seconds
    started = time.perf_counter()

    def run(i: int) -> None:
        device = devices[i]
        while time.monotonic() < deadline and counts[i] < per_device_cap:
            # Stay within the in-flight window so nothing waits in paho's own queue.
            if counts[i] - device.acked - device.refused >= 100:
                time.sleep(0.001)
                continue
            seq = counts[i] + 1
            now_ms = int(time.time() * 1000)
            device.publish(
                device.sealer.seal("counts", seq, counts_body(i, counts[i], records, encoding), now_ms)
            )
            counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,), name=f"pub-{i}") for i in range(len(devices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for device, n in zip(devices, counts, strict=True):
        device.wait_acked(n, 60)
    elapsed = time.perf_counter() - started
    refused = sum(d.refused for d in devices)
    for device in devices:
        device.close()
    if refused:
        log.warning("%d publishes were refused by the broker", refused)
    return sum(counts), elapsed


def stored_records(store: TimeSeriesStore, messages: int) -> int:
    end = EPOCH + timedelta(minutes=messages + 1)
    buckets = store.count_buckets(CountQuery(start=EPOCH, end=end + timedelta(days=1), bucket_s=86400 * 30))
    return sum(b.count for b in buckets)


class NaiveIngester:
    """What a first script would do: unseal, parse, one synchronous write per message."""

    def __init__(self, home: HubHome, registry: Registry, store_kind: str, target: str) -> None:
        def lookup(device_id: str, kid: str) -> PublicKeys | None:
            found = registry.devices.key(device_id, kid)
            return found[1] if found else None

        self.opener = HubOpener([home.hub_keys()], lookup, max_age_s=3600)
        self.kind = store_kind
        if store_kind == "sqlite":
            self.db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute(
                "CREATE TABLE counts (device TEXT, ts TEXT, line TEXT, cls TEXT, dir TEXT, n INTEGER)"
            )
        else:
            self.http = httpx.Client(base_url=target, timeout=10)
            self.http.post("/query", params={"q": "CREATE DATABASE naive"})

    def handle(self, payload: bytes) -> None:
        opened = self.opener.open(payload, int(time.time() * 1000))
        device = opened.header.device_id
        if is_compact(opened.plaintext):
            c = decode_counts(opened.plaintext)
            records = [
                {"interval_start": start, "line": line, "cls": cls, "direction": direction, "count": count}
                for start, line, cls, direction, count in zip(
                    c.interval_start_us, c.line, c.cls, c.direction, c.count, strict=True
                )
            ]
        else:
            records = json.loads(opened.plaintext)["records"]
        if self.kind == "sqlite":
            self.db.execute("BEGIN")
            for r in records:
                self.db.execute(
                    "INSERT INTO counts VALUES (?, ?, ?, ?, ?, ?)",
                    (device, r["interval_start"], r["line"], r["cls"], r["direction"], r["count"]),
                )
            self.db.execute("COMMIT")
        else:
            lines = "\n".join(
                f"counts,device={device},line={r['line']},cls={r['cls']},direction={r['direction']} count={r['count']}i"
                for r in records
            )
            self.http.post("/write", params={"db": "naive"}, content=lines).raise_for_status()


def start_hub_process(
    home: HubHome, port: int, index: int, store: StoreConfig, log_dir: Path, ingest_workers: int = 0
) -> subprocess.Popen[bytes]:
    """One hub as its own process (own GIL), subscribed and ready when this returns."""
    config = log_dir / f"hub-{index}.json"
    group = "" if index < 0 else None  # -1: the single hub, plain subscription; else the shared group
    settings: dict[str, Any] = {
        "broker_port": port,
        "api_port": 0,
        "client_id": "hub-single" if index < 0 else f"hub-{index}",
        "group": group,
        "store": store.model_dump(mode="json", exclude_none=True),
    }
    if ingest_workers:  # only then: a hub from before ingest workers refuses the key
        settings["ingest_workers"] = ingest_workers
    config.write_text(json.dumps(settings))
    log_file = log_dir / f"hub-{index}.log"
    command = [sys.executable, "-c", "from roadside.cli import main; main()", "hub", "run"]
    command += ["--home", str(home.root), "--config", str(config), "--log-level", "INFO"]
    process = subprocess.Popen(command, stdout=log_file.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while b"hub subscribed" not in log_file.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"hub {index} did not start: {log_file.read_text()[-2000:]}")
        time.sleep(0.05)
    return process


def open_bench_store(config: StoreConfig, home: HubHome) -> TimeSeriesStore:
    from roadside.cloud.storage.adapters import open_store

    return open_store(config, home)


def hub_drain(
    home: HubHome,
    port: int,
    hubs: int,
    records: int,
    store_config: StoreConfig,
    workdir: Path,
    load: Callable[[], tuple[int, float]],
    ingest_workers: int = 0,
) -> tuple[int, float, float, int, float]:
    """Start the hubs, freeze them (SIGSTOP) while the load is published, thaw them and time the drain.

    Returns (messages, publish seconds, drain seconds, records stored, the hubs' CPU seconds
    while draining: less sensitive than the rate to what else the machine runs).
    """
    indices = [-1] if hubs == 1 else list(range(hubs))
    processes = [start_hub_process(home, port, i, store_config, workdir, ingest_workers) for i in indices]
    store = open_bench_store(store_config, home)
    try:
        for p in processes:
            p.send_signal(signal.SIGSTOP)
        messages, publish_s = load()
        expected = messages * records
        pids = [p.pid for p in processes]
        cpu_started = cpu_seconds(pids)
        started = time.perf_counter()
        for p in processes:
            p.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 600
        stored = 0
        while time.monotonic() < deadline:
            stored = stored_records(store, messages)
            if stored >= expected:
                break
            time.sleep(0.05)
        drain_s = time.perf_counter() - started
        cpu = cpu_seconds(pids) - cpu_started
        time.sleep(1.0)  # late redeliveries, if any, would show up as duplicates now
        stored = stored_records(store, messages)
        return messages, publish_s, drain_s, stored, cpu
    finally:
        for p in processes:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
        for p in processes:
            p.wait(timeout=60)
        store.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    home = init_home(workdir / "hub", ["localhost"], ["127.0.0.1"])
    influx = None
    if args.store == "influx":
        from tests.component.influxd import InfluxServer

        influx = InfluxServer(workdir / "influx").__enter__()
    store_config: StoreConfig = (
        InfluxV1StoreConfig(url=influx.url, database="roadside") if influx else SqliteStoreConfig()
    )
    broker = MosquittoBroker(
        home.broker_dir, ca_cert_pem=home.ca_file.read_bytes(), server=home.broker_server_cert()
    )
    registry = Registry(home.registry_url)
    try:
        broker.start()
        bundles = enroll_fleet(home, registry, args.devices, broker.port)
        broker.reload_acl(acl_devices(registry))
        # Every identity first: Mosquitto 2.0 drops the offline persistent sessions of
        # certificate-named clients on each reload, so none may happen once ours exist.
        hubs = ["hub-single"] if args.hubs == 1 else [f"hub-{i}" for i in range(args.hubs)]
        for name in ["hub-bench-bare", "hub-bench-naive", *hubs]:
            hub_identity(home, registry, name)
        register_session(home, broker.port, "bare", PLAIN)
        register_session(home, broker.port, "naive", PLAIN)

        def load() -> tuple[int, float]:
            return publish_load(bundles, broker.port, args.seconds, args.records, args.encoding)

        messages, publish_s, hub_s, stored, hub_cpu = hub_drain(
            home, broker.port, args.hubs, args.records, store_config, workdir, load, args.ingest_workers
        )
        log.info("published %d messages in %.1f s; hub(s) drained them in %.1f s", messages, publish_s, hub_s)
        bare_s, bare_cpu = drain(home, broker.port, "bare", messages, lambda _p: None)
        naive = NaiveIngester(
            home, registry, args.store, str(workdir / "naive.db") if not influx else influx.url
        )
        naive_s, naive_cpu = drain(home, broker.port, "naive", messages, naive.handle)
        expected = messages * args.records
        return {
            "devices": args.devices,
            "store": args.store,
            "hubs": args.hubs,
            "ingest_workers": args.ingest_workers,
            "messages": messages,
            "records_per_message": args.records,
            "encoding": args.encoding,
            "hub_msgs_s": round(messages / hub_s, 1),
            "hub_records_s": round(expected / hub_s, 1),
            "bare_sub_msgs_s": round(messages / bare_s, 1),
            "naive_msgs_s": round(messages / naive_s, 1),
            "hub_vs_bare": round(bare_s / hub_s, 3),
            "hub_vs_naive": round(naive_s / hub_s, 2),
            "publish_msgs_s": round(messages / publish_s, 1),
            # CPU per message (user + system, all of a consumer's processes): a busy machine
            # slows every rate above, much less these.
            "hub_cpu_us_per_msg": round(hub_cpu / messages * 1e6, 1),
            "bare_cpu_us_per_msg": round(bare_cpu / messages * 1e6, 1),
            "naive_cpu_us_per_msg": round(naive_cpu / messages * 1e6, 1),
            "hub_vs_bare_cpu": round(bare_cpu / hub_cpu, 3),
            "lost": max(0, expected - stored),
            "duplicated": max(0, stored - expected),
        }
    finally:
        registry.close()
        broker.stop()
        if influx is not None:
            influx.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--records", type=int, default=10, help="records per message")
    parser.add_argument(
        "--encoding",
        choices=["compact", "json"],
        default="compact",
        help="how the devices send counts: compact (an agent's default, ADR 0033) or JSON (older agents)",
    )
    parser.add_argument("--store", choices=["sqlite", "influx"], default="sqlite")
    parser.add_argument("--hubs", type=int, default=1)
    parser.add_argument(
        "--ingest-workers",
        type=int,
        default=0,
        help="worker processes per hub that unseal, validate and write",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("roadside.cloud").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
