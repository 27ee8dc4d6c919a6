"""``hub run --workers 1``: a killed ingest-only process is started again (found by bench.chaos).

Each ingest-only hub process has a persistent MQTT session in the hubs' shared
group. Mosquitto keeps routing a share of the uplink to that session while the
process is dead and holds it there for that client id. ``hub run`` did not start
a dead worker again, so those messages waited for good: the chaos run's
``hub-process-kill`` left 4 of 14 records unstored. Now ``hub run`` restarts it
and the new process collects what was queued.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos.stack import child_pids, command_line, wait_until
from roadside.cloud.storage.sqlite import SqliteStore
from tests.e2e.rig import Rig
from tests.e2e.test_hub_resilience import RECORDS, publish, stored

pytestmark = pytest.mark.slow


@pytest.mark.timeout(180)
def test_a_killed_ingest_worker_is_restarted_and_collects_its_share(rig: Rig, tmp_path: Path) -> None:
    bundles = rig.fleet(2)
    per_device = 15
    expected = len(bundles) * per_device * RECORDS
    log = tmp_path / "hub.log"
    config = tmp_path / "hub.json"
    config.write_text(json.dumps({"broker_port": rig.broker.port, "api_port": 0, "client_id": "hub-main"}))
    command = [sys.executable, "-c", "from roadside.cli import main; main()", "hub", "run", "--workers", "1"]
    command += ["--home", str(rig.home.root), "--config", str(config)]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    store = SqliteStore(rig.home.telemetry_db)
    try:
        assert wait_until(lambda: log.read_bytes().count(b"hub subscribed") >= 4, 60), log.read_text()[-3000:]
        (worker,) = [p for p in child_pids(process.pid) if "--client-id" in command_line(p)]
        os.kill(worker, signal.SIGKILL)
        publish(bundles, rig.broker.port, per_device)  # part of it routed to the dead worker's session
        assert wait_until(lambda: b"starting it again" in log.read_bytes(), 30), log.read_text()[-3000:]
        assert wait_until(lambda: stored(store) >= expected, 60), (stored(store), expected)
        assert stored(store) == expected
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        store.close()


@pytest.mark.timeout(120)
def test_ingest_workers_stop_when_their_hub_is_killed(rig: Rig, tmp_path: Path) -> None:
    """SIGKILL of ``hub run --workers`` sends nothing on: the workers notice their parent is gone and stop."""
    log = tmp_path / "hub.log"
    config = tmp_path / "hub.json"
    config.write_text(json.dumps({"broker_port": rig.broker.port, "api_port": 0, "client_id": "hub-main"}))
    command = [sys.executable, "-c", "from roadside.cli import main; main()", "hub", "run", "--workers", "2"]
    command += ["--home", str(rig.home.root), "--config", str(config)]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: log.read_bytes().count(b"hub subscribed") >= 3, 60), log.read_text()[-3000:]
        workers = [p for p in child_pids(process.pid) if "--client-id" in command_line(p)]
        assert len(workers) == 2
        process.kill()
        process.wait(timeout=10)
        assert wait_until(lambda: not any(_alive(p) for p in workers), 30), log.read_text()[-3000:]
        assert log.read_bytes().count(b"the hub that started this ingest worker is gone") == 2
    finally:
        for pid in child_pids(process.pid) if process.poll() is None else []:
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
