"""Ingest worker processes (``ingest_workers``): every record stored exactly once, even when a
worker is SIGKILLed mid-batch; bad messages are still rejected and dead-lettered, costing no other."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from bench.fleet import SimulatedDevice, counts_body
from roadside.cloud.hub import Hub
from roadside.cloud.ingest.workers import shard_of
from roadside.cloud.settings import HubSettings
from tests.e2e.rig import Rig
from tests.e2e.test_hub_resilience import RECORDS, publish, stored, wait_until

pytestmark = pytest.mark.slow


def test_a_worker_killed_mid_ingest_loses_nothing_and_stores_nothing_twice(rig: Rig) -> None:
    bundles = rig.fleet(4)
    per_device = 100
    expected = len(bundles) * per_device * RECORDS
    settings = HubSettings(
        home=rig.home.root,
        broker_port=rig.broker.port,
        api_port=-1,
        client_id="hub-workers",
        batch_size=40,
        ingest_workers=2,
    )
    hub = Hub(settings)
    hub.start()
    try:
        assert hub.wait_ready(30)
        workers = hub.ingest.workers
        assert workers is not None
        owners = sorted({shard_of(b.device_id, 2) for b in bundles})
        killed = [workers.pids[w] for w in owners]
        publisher = threading.Thread(target=publish, args=(bundles, rig.broker.port, per_device, 0.003))
        publisher.start()
        assert wait_until(lambda: stored(hub.store) > expected // 5, 60)
        for pid in killed:  # every worker that owns a device, while batches are in flight
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        publisher.join()
        assert wait_until(lambda: stored(hub.store) >= expected, 90), (stored(hub.store), expected)
        time.sleep(1.0)  # a late duplicate would land now
        assert stored(hub.store) == expected
        assert all(workers.pids[w] not in killed for w in owners)  # each was started again
        assert hub.ingest.paused is None
    finally:
        hub.stop()


def test_bad_messages_are_dead_lettered_by_way_of_a_worker_and_cost_no_other(rig: Rig) -> None:
    (bundle,) = rig.fleet(1)
    settings = HubSettings(
        home=rig.home.root, broker_port=rig.broker.port, api_port=-1, client_id="hub-w-bad", ingest_workers=1
    )
    hub = Hub(settings)
    hub.start()
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
