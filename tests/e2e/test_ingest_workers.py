"""Ingest worker processes (``ingest_workers``): every record stored exactly once, even when a
worker or the hub is SIGKILLed mid-batch; bad messages are still rejected and dead-lettered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench.fleet import SimulatedDevice, counts_body
from roadside.cloud.hub import Hub
from roadside.cloud.ingest.workers import shard_of
from roadside.cloud.settings import HubSettings
from roadside.cloud.storage.sqlite import SqliteStore
from tests.e2e.rig import Rig
from tests.e2e.test_hub_resilience import RECORDS, publish, stored, wait_until

pytestmark = pytest.mark.slow


def test_bad_messages_are_dead_lettered_by_way_of_a_worker_and_cost_no_other(rig: Rig) -> None:
    (bundle,) = rig.fleet(1)
    hub = _started_hub(rig, "hub-w-bad", ingest_workers=1)
    try:
        assert hub.wait_ready(30)
        device = SimulatedDevice(bundle)
        device.connect("127.0.0.1", rig.broker.port)
        now = int(time.time() * 1000)
        good = [device.sealer.seal("counts", n, counts_body(0, n, RECORDS), now) for n in (1, 2, 3)]
        tampered = bytearray(device.sealer.seal("counts", 4, counts_body(0, 4, RECORDS), now))
        tampered[-1] ^= 1
        malformed = device.sealer.seal("counts", 5, b'{"schema": 1, "kind": "counts", "records": []}', now)
        for payload in (good[0], bytes(tampered), good[1], malformed, good[2]):
            device.publish(payload)
        assert wait_until(lambda: hub.ingest.stored_messages == 3 and hub.ingest.rejected_messages == 2, 30)
        device.publish(good[0])  # once stored and committed: a replay
        assert device.wait_acked(6, 10)
        device.close()
        assert wait_until(lambda: hub.ingest.rejected_messages == 3, 30)
        assert stored(hub.store) == 3 * RECORDS
        assert hub.ingest.stored_messages == 3
        assert [hub.dead_letters.count(r) for r in ("bad_tag", "schema", "replay")] == [1, 1, 1]
    finally:
        hub.stop()


def test_a_killed_worker_then_the_killed_hub_lose_nothing_and_store_nothing_twice(
    rig: Rig, tmp_path: Path
) -> None:
    """SIGKILL of a worker mid-batch (the hub restarts it and retries), then of the hub itself
    (its workers exit with it; the broker redelivers to the next hub): every record once."""
    bundles = rig.fleet(3)
    per_device = 150
    expected = len(bundles) * per_device * RECORDS
    config = tmp_path / "hub.json"
    config.write_text(
        json.dumps(
            {
                "broker_port": rig.broker.port,
                "api_port": -1,
                "client_id": "hub-killable-w",
                "batch_size": 40,
                "ingest_workers": 2,
            }
        )
    )
    log = tmp_path / "hub.log"
    hub = _hub_process(rig, config, log)
    store = SqliteStore(rig.home.telemetry_db)
    try:
        workers = psutil.Process(hub.pid).children(recursive=True)
        assert len(workers) >= 2
        publisher = threading.Thread(target=publish, args=(bundles, rig.broker.port, per_device, 0.003))
        publisher.start()
        assert wait_until(lambda: stored(store) > expected // 5, 60), log.read_text()[-3000:]
        for worker in workers:  # mid-batch, or between two; each that owns a device is started again
            os.kill(worker.pid, signal.SIGKILL)
        assert wait_until(lambda: stored(store) > expected // 2, 60), log.read_text()[-3000:]
        workers = psutil.Process(hub.pid).children(recursive=True)  # with the one started again
        os.kill(hub.pid, signal.SIGKILL)  # mid-ingest: batches written but not acknowledged
        hub.wait()
        assert wait_until(lambda: not any(w.is_running() and w.status() != "zombie" for w in workers), 30)
        publisher.join()
        hub = _hub_process(rig, config, log)
        assert wait_until(lambda: stored(store) >= expected, 90), (stored(store), expected)
        time.sleep(1.0)  # any late redelivery would land now
        assert stored(store) == expected
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(timeout=60)
        store.close()


def test_a_killed_workers_devices_are_taken_over_by_the_spare_already_running(rig: Rig) -> None:
    """ADR 0032: the batch after a worker's SIGKILL is written by the spare that was started and
    imported before the kill, not by a process started after it (one start-up of waiting);
    another spare is started meanwhile, and every record is stored once."""
    (bundle,) = rig.fleet(1)
    hub = _started_hub(rig, "hub-w-spare", ingest_workers=1)
    device = SimulatedDevice(bundle)
    try:
        assert hub.wait_ready(30)
        workers = hub.ingest.workers
        assert workers is not None
        started = _worker_processes()  # the worker, and its warm spare where there is one
        (owner,) = workers.pids
        assert owner is not None
        device.connect("127.0.0.1", rig.broker.port)
        _send_counts(device, range(1, 6))
        assert wait_until(lambda: hub.ingest.stored_messages == 5, 30)
        os.kill(owner, signal.SIGKILL)  # idle: the next batch finds it gone
        _send_counts(device, range(6, 11))
        assert wait_until(lambda: hub.ingest.stored_messages == 10, 60)
        taken_over_by = workers.pids[0]
        assert taken_over_by != owner
        assert taken_over_by in started, "the batch waited for a worker started after the kill"
        assert wait_until(lambda: len(_worker_processes() - started) == 1, 120)  # the next spare
        assert stored(hub.store) == 10 * RECORDS
        assert hub.ingest.rejected_messages == 0
    finally:
        device.close()
        hub.stop()


def test_a_worker_found_dead_mid_send_leaves_no_other_worker_a_reply_behind(rig: Rig) -> None:
    """A batch for two workers whose second is found dead when the first already has its part:
    the first's reply is collected before the retry, so later replies match their batches (they
    were read one batch late, and outcomes of one batch acknowledged messages of the next)."""
    bundles = rig.fleet(6)
    first = next(b for b in bundles if shard_of(b.device_id, 2) == 0)
    second = next(b for b in bundles if shard_of(b.device_id, 2) == 1)
    # batch_wait_s: the messages below, published together, make one batch.
    hub = _started_hub(rig, "hub-w-two", ingest_workers=2, batch_wait_s=1.0)
    devices = [SimulatedDevice(first), SimulatedDevice(second)]
    try:
        assert hub.wait_ready(30)
        assert hub.ingest.workers is not None
        for device in devices:
            device.connect("127.0.0.1", rig.broker.port)
        victim = hub.ingest.workers.pids[1]
        assert victim is not None
        os.kill(victim, signal.SIGKILL)  # the second in the send order
        _send_counts(devices[0], [1])
        _send_counts(devices[1], [1])
        assert wait_until(lambda: hub.ingest.stored_messages == 2, 60)
        _send_counts(devices[0], [2, 3, 4])  # the first worker's part only
        assert wait_until(lambda: hub.ingest.stored_messages == 5, 60), hub.ingest.stored_messages
        assert stored(hub.store) == 5 * RECORDS
        assert hub.ingest.rejected_messages == 0
    finally:
        for device in devices:
            device.close()
        hub.stop()


def _started_hub(rig: Rig, client_id: str, **settings: Any) -> Hub:
    """An in-process hub on the rig's home and broker, no API, started."""
    hub = Hub(
        HubSettings(
            home=rig.home.root, broker_port=rig.broker.port, api_port=-1, client_id=client_id, **settings
        )
    )
    hub.start()
    return hub


def _send_counts(device: SimulatedDevice, seqs: Iterable[int]) -> None:
    now = int(time.time() * 1000)
    for seq in seqs:
        device.publish(device.sealer.seal("counts", seq, counts_body(0, seq, RECORDS), now))


def _worker_processes() -> set[int]:
    """This test process's ingest workers and spares (multiprocessing's spawned children)."""
    return {
        child.pid
        for child in psutil.Process().children()
        if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline())
    }


def _hub_process(rig: Rig, config: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "from roadside.cli import main; main()", "hub", "run"]
    command += ["--home", str(rig.home.root), "--config", str(config)]
    offset = log.stat().st_size if log.exists() else 0
    process = subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    assert wait_until(lambda: b"hub subscribed" in log.read_bytes()[offset:], 60), log.read_text()[-3000:]
    return process
