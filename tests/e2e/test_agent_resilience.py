"""The agent under bad conditions, end to end: real video files, kill -9, a broker outage.

Each test runs a real agent (in process, or as ``roadside agent run`` for
kill -9) against the ``loop`` fixture's Mosquitto and hub.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from roadside.edge.agent import Agent
from roadside.edge.analytics.lines import CountingLine
from roadside.edge.outbox.sqlite import EPOCH_SHIFT
from roadside.edge.settings import load_agent_settings
from roadside.edge.transport.mqtt import RECONNECT_CAP_S
from roadside.shared.bundle import EnrollmentBundle, write_bundle
from roadside.sim.camera import synthetic_scene_analytics
from roadside.sim.synthetic import RoadScene, SceneConfig
from tests.e2e.conftest import Loop, open_loop
from tests.e2e.test_loop import api_totals, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCENE_FPS = 10.0
Truth = Counter[tuple[str, str]]


def render(path: Path, scene: RoadScene, frames: int, labels: list[str]) -> Truth:
    """Write ``frames`` of ``scene`` as MJPG/AVI; the ground-truth crossings by (class, direction)."""
    line = CountingLine("truth", *scene.count_line())
    writer = cv2.VideoWriter(
        str(path),
        cv2.VideoWriter_fourcc(*"MJPG"),
        scene.config.fps,
        (scene.config.width, scene.config.height),
    )
    last: dict[int, tuple[float, float]] = {}
    truth: Truth = Counter()
    for _ in range(frames):
        frame = scene.step()
        writer.write(frame.image)
        for obj in frame.objects:
            centre = ((obj.box[0] + obj.box[2]) / 2, (obj.box[1] + obj.box[3]) / 2)
            if obj.track_id in last and (
                hit := line.check(obj.track_id, obj.cls, 1.0, last[obj.track_id], centre)
            ):
                truth[(labels[obj.cls], hit.direction)] += 1
            last[obj.track_id] = centre
    writer.release()
    return truth


def video_agent(tmp_path: Path, bundle: EnrollmentBundle, scene: RoadScene, uris: dict[str, str]) -> Agent:
    settings = load_agent_settings(
        None,
        bundle=tmp_path / "unused.json",
        sources=[
            {"type": "video", "name": n, "uri": u, "fps_cap": scene.config.fps} for n, u in uris.items()
        ],
        analytics=synthetic_scene_analytics(scene).model_dump(mode="json"),
        interval_s=60,
        outbox={"path": str(tmp_path / f"{bundle.device_id}-outbox.db")},
    )
    return Agent.from_settings(settings, bundle)


def by_class_direction(counted: Counter[tuple[str, str, str]]) -> Truth:
    out: Truth = Counter()
    for (_line, cls, direction), n in counted.items():
        out[(cls, direction)] += n
    return out


@pytest.mark.timeout(150)
def test_counts_on_a_synthetic_video_are_within_5_percent_of_its_ground_truth(
    loop: Loop, tmp_path: Path
) -> None:
    bundle = loop.enroll("dev-video")
    scene = RoadScene(SceneConfig(seed=3, fps=SCENE_FPS))
    agent = video_agent(tmp_path, bundle, scene, {"cam0": str(tmp_path / "road.avi")})
    truth = render(
        tmp_path / "road.avi", RoadScene(SceneConfig(seed=3, fps=SCENE_FPS)), 300, agent.detector.info.labels
    )
    agent.start()
    assert agent.sources_done(timeout=100)
    agent.stop(drain_s=15)
    assert agent.streams == {} or all(s.frames == 300 for s in agent.streams.values())
    counted = by_class_direction(agent.counted)
    total = sum(truth.values())
    assert total >= 10
    error = sum(abs(counted[k] - truth[k]) for k in truth | counted)
    assert error <= max(1, 0.05 * total), (sorted(truth.items()), sorted(counted.items()))
    produced = +agent.counted
    assert wait_for(lambda: api_totals(loop, "dev-video") == produced), (
        api_totals(loop, "dev-video"),
        produced,
    )


@pytest.mark.timeout(150)
def test_a_truncated_and_a_corrupt_file_are_read_as_far_as_they_go(loop: Loop, tmp_path: Path) -> None:
    bundle = loop.enroll("dev-broken")
    scene = RoadScene(SceneConfig(seed=11, fps=SCENE_FPS))
    agent_probe = RoadScene(SceneConfig(seed=11, fps=SCENE_FPS))
    good = tmp_path / "good.avi"
    render(good, agent_probe, 120, ["car", "truck", "pedestrian", "cyclist"])
    data = good.read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) * 2 // 3])
    garbled = bytearray(data)
    rng = np.random.default_rng(1)
    for offset in np.linspace(len(data) * 0.2, len(data) * 0.9, 4).astype(int):
        garbled[offset : offset + 500] = rng.integers(0, 256, 500, dtype=np.uint8).tobytes()
    (tmp_path / "garbled.avi").write_bytes(bytes(garbled))
    agent = video_agent(
        tmp_path, bundle, scene, {"cut": str(tmp_path / "cut.avi"), "garbled": str(tmp_path / "garbled.avi")}
    )
    agent.start()
    assert agent.sources_done(timeout=60)
    assert agent.supervisor.errors == {}  # ended, not failed
    assert agent.pipeline.alive  # the agent keeps running
    frames = {name: state.frames for name, state in agent.streams.items()}
    agent.stop(drain_s=15)
    assert 70 <= frames["cut"] < 120, frames
    assert 80 <= frames["garbled"] <= 120, frames
    produced = +agent.counted
    assert sum(produced.values()) > 0, "both streams saw traffic"
    assert wait_for(lambda: api_totals(loop, "dev-broken") == produced), (
        api_totals(loop, "dev-broken"),
        produced,
    )


# kill -9 ---------------------------------------------------------------------------------


def queued_at_least(path: Path, n: int) -> bool:
    """Polled while the agent starts: its outbox file may exist before its tables do."""
    try:
        return path.exists() and outbox_rows(path)[0] >= n
    except sqlite3.OperationalError:
        return False


def outbox_rows(path: Path) -> tuple[int, dict[int, tuple[str, bytes]]]:
    """The highest sequence number ever assigned, and the rows still queued."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (last,) = db.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'outbox'"
        ).fetchone()
        rows = {seq: (kind, bytes(p)) for seq, kind, p in db.execute("SELECT seq, kind, payload FROM outbox")}
    finally:
        db.close()
    return int(last), rows


def stored(loop: Loop, device: str) -> tuple[list[int], dict[int, int]]:
    """Every envelope seq the hub stored for ``device`` (with repeats, if any) and count rows per seq."""
    db = sqlite3.connect(f"file:{loop.home.telemetry_db}?mode=ro", uri=True)
    try:
        seqs = [
            s for (s,) in db.execute("SELECT seq FROM ingested WHERE device_id = ? ORDER BY seq", (device,))
        ]
        per_seq = dict(
            db.execute("SELECT seq, COUNT(*) FROM counts WHERE device_id = ? GROUP BY seq", (device,))
        )
    finally:
        db.close()
    return seqs, per_seq


def start_agent(bundle: Path, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from roadside.cli import main; main()",
                "agent",
                "run",
                "--bundle",
                str(bundle),
                "--config",
                str(config),
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )


@pytest.mark.timeout(180)
def test_kill_9_mid_stream_then_restart_delivers_every_queued_record_exactly_once(
    loop: Loop, tmp_path: Path
) -> None:
    """The outbox is the agent's promise: a row in it is a message the pipeline handed over.

    After ``kill -9`` the outbox file tells exactly what was promised: sequence
    numbers ``1..last`` were assigned (AUTOINCREMENT never reuses one); rows still
    there were not acknowledged by the broker and must be sent by the restarted
    agent; rows gone were acknowledged and so are already on their way to the
    hub. Some of the still-queued rows may have reached the broker before the kill
    (PUBACK lost with the process), so the restart sends them twice: the hub must
    keep one. The exact check, once the second run has stopped cleanly with an
    empty outbox: the hub's ``ingested`` table holds every seq from 1 to the
    final ``last`` exactly once, and each count message queued at the kill is
    stored with exactly the records it carried.
    """
    bundle = loop.enroll("dev-kill")
    bundle_path = tmp_path / "bundle.json"
    write_bundle(bundle, bundle_path)
    outbox = tmp_path / "outbox.db"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'interval_s = 1\nheartbeat_s = 2.0\n[outbox]\npath = "{outbox}"\nrecords_per_message = 5\n'
        '[[sources]]\ntype = "synthetic"\nname = "cam0"\nseed = 3\nrealtime = false\nmax_frames = 250\n'
    )
    log = tmp_path / "agent.log"
    first = start_agent(bundle_path, config, log)
    assert wait_for(lambda: queued_at_least(outbox, 6), 90), log.read_text()[-3000:]
    assert first.poll() is None, "killed mid-stream, not after the end"
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    last_at_kill, queued_at_kill = outbox_rows(outbox)

    second = start_agent(bundle_path, config, log)
    try:
        assert wait_for(lambda: not (set(outbox_rows(outbox)[1]) & set(queued_at_kill)), 60), log.read_text()[
            -3000:
        ]
        assert wait_for(lambda: outbox_rows(outbox)[0] > last_at_kill + 3, 60)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    last, queued = outbox_rows(outbox)
    assert queued == {}, "the clean stop drained the outbox"
    # A new outbox numbers from its sequence epoch (created_ms << EPOCH_SHIFT), so the first
    # number it ever assigned is the epoch's + 1.
    first = (last >> EPOCH_SHIFT << EPOCH_SHIFT) + 1
    assert wait_for(lambda: len(stored(loop, "dev-kill")[0]) >= last - first + 1, 30)
    seqs, per_seq = stored(loop, "dev-kill")
    assert seqs == list(range(first, last + 1))  # each promised message once: none lost, none twice
    for seq, (kind, payload) in queued_at_kill.items():
        if kind == "counts":
            assert per_seq.get(seq, 0) == len(json.loads(payload)["records"]), seq
    # A message the hub stored whose PUBACK the killed agent never saw is sent again after the
    # restart; the hub cannot tell that from a replay, refuses it as one and keeps the copy it
    # already had (docs/protocol.md). Nothing else may be refused.
    assert loop.hub.dead_letters.count() == loop.hub.dead_letters.count("replay")


# A broker outage ---------------------------------------------------------------------------


def start_live_agent(tmp_path: Path, bundle: EnrollmentBundle, **settings: Any) -> Agent:
    """An in-process agent on one real-time synthetic camera (5 fps), counting every second."""
    agent = Agent.from_settings(
        load_agent_settings(
            None,
            bundle=tmp_path / "unused.json",
            sources=[{"type": "synthetic", "name": "cam0", "seed": 3, "fps": 5.0, "realtime": True}],
            interval_s=1,
            outbox={"path": str(tmp_path / "outbox.db")},
            **settings,
        ),
        bundle,
    )
    agent.start()
    return agent


@pytest.mark.timeout(300)
def test_a_broker_away_for_30_s_loses_nothing_and_duplicates_nothing(loop: Loop, tmp_path: Path) -> None:
    bundle = loop.enroll("dev-outage")
    agent = start_live_agent(tmp_path, bundle)
    try:
        assert wait_for(lambda: loop.hub.ingest.stored_messages >= 1, 20)
        loop.broker.stop()
        assert wait_for(lambda: not agent.uplink.connected, 10)
        time.sleep(30)  # the outage: the pipeline keeps counting into the outbox
        assert agent.outbox.backlog() > 0
        stored_before = loop.hub.ingest.stored_messages
        loop.broker.start()  # same port
        # The uplink's backoff has grown through the outage: its next try is up to the cap away.
        assert wait_for(lambda: agent.uplink.connected, RECONNECT_CAP_S + 15)
        # The hub's own session comes back too (paho retries with a delay capped at 30 s):
        # what was queued during the outage is stored.
        assert wait_for(lambda: loop.hub.ingest.stored_messages > stored_before, 45)
        # The hub lost its broker too, and counted it (what an operator would alert on).
        assert loop.hub.ingest.disconnects >= 1
        assert loop.hub.metrics_registry.get_sample_value("roadside_ingest_broker_disconnects_total") >= 1
        time.sleep(2)
    finally:
        agent.stop(drain_s=40)
    uplink = agent.uplink
    assert agent.outbox_backlog_at_stop == 0, (
        uplink.connects,
        uplink.published,
        uplink.acked,
        uplink.unrouted,
    )
    produced = +agent.counted
    assert sum(produced.values()) > 0
    assert wait_for(lambda: api_totals(loop, "dev-outage") == produced, 30), (
        api_totals(loop, "dev-outage"),
        produced,
    )
    seqs, _ = stored(loop, "dev-outage")
    assert len(seqs) == len(set(seqs))


def _behind_and_connected(
    tmp_path: Path,
    device: str,
    write_s: float,
    watch_s: float,
    during: Callable[[Loop], None],
    **settings: Any,
) -> None:
    """Every write takes ``write_s`` while an agent sends each second, with a 2 s keepalive (the
    broker drops a client silent for 3 s): for ``watch_s`` the hub falls behind (``during`` checks
    how), stays connected, then drains the backlog and stores every record once."""
    with open_loop(tmp_path / "loop", ingest_keepalive_s=2, batch_size=2, **settings) as slow:
        store = slow.hub.store
        write = store.write
        slowed = threading.Event()
        slowed.set()

        def slow_write(batches: Any) -> Any:
            if slowed.is_set():
                time.sleep(write_s)
            return write(batches)

        store.write = slow_write  # type: ignore[method-assign]
        bundle = slow.enroll(device)
        agent = start_live_agent(tmp_path, bundle, heartbeat_s=1.0)
        try:
            time.sleep(watch_s)
            during(slow)
            assert slow.hub.ingest.disconnects == 0, slow.broker.log_tail()
        finally:
            agent.stop(drain_s=20)
        slowed.clear()  # the store is fast again: the backlog drains
        produced = +agent.counted
        assert sum(produced.values()) > 0
        assert wait_for(lambda: api_totals(slow, device) == produced, 60), (
            api_totals(slow, device),
            produced,
        )
        assert slow.hub.ingest.disconnects == 0, slow.broker.log_tail()
        assert "exceeded timeout" not in slow.broker.log_tail(10_000)
        seqs, _ = stored(slow, device)
        assert len(seqs) == len(set(seqs))


@pytest.mark.timeout(120)
def test_a_hub_whose_queue_is_full_stops_reading_but_keeps_acking_and_pinging(tmp_path: Path) -> None:
    """Issue 14, found by ``bench.city --hub-cpu 0.03``: the ingest queue filled (Mosquitto 2.0.11
    sends past the hub's Receive Maximum) and the network thread blocked on it, sending nothing,
    not even the acks of what was written, until the broker dropped the hub for keepalive timeout.
    A one-message queue and 5 s writes, each longer than the broker's 3 s: the session must stop
    reading instead, and still send the acks and pings."""

    def queue_full(slow: Loop) -> None:
        assert slow.hub.ingest.queue.maxsize == 1
        assert slow.hub.ingest.queue.qsize() == 1  # full: the session was holding messages back

    # 14 s: two slow writes and more.
    _behind_and_connected(tmp_path, "dev-full", 5.0, 14.0, queue_full, ingest_queue_size=1)


@pytest.mark.timeout(180)
def test_a_hub_far_behind_its_devices_keeps_its_broker_connection_and_loses_nothing(tmp_path: Path) -> None:
    """Issue 14: a hub behind its backlog lost its broker connection (keepalive timeout), and the
    redelivered copies then cost it more. 3 s writes and 2-message batches (4 unacknowledged at
    most): the broker holds the backlog, the hub works through it for many keepalive intervals."""

    def behind(slow: Loop) -> None:
        assert slow.hub.ingest.behind_s() > 5.0  # behind by more than the broker's 3 s

    # 20 s: 7 writes' time (14 messages); the agent makes about twice that.
    _behind_and_connected(tmp_path, "dev-behind", 3.0, 20.0, behind)
