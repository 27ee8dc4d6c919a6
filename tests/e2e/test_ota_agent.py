"""Model updates end to end: the hub sends ``ota``, a running agent stages through TUF, shadows, switches.

A real Mosquitto (mTLS, ACLs), the hub, a TUF repository served over HTTP on
loopback, and an in-process agent on a synthetic camera.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

from roadside.cloud.home import model_repo_anchor
from roadside.cloud.release import keys
from roadside.cloud.release.repository import ModelRepository
from tests.e2e.conftest import Loop
from tests.e2e.ota_rig import SHIPPED_VERSION, OtaRig, agent_with_ota, ota_rig, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def rig(loop: Loop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OtaRig]:
    with ota_rig(loop, tmp_path / "release", monkeypatch) as rig:
        yield rig


def test_install_shadow_switch_then_an_instant_rollback(loop: Loop, rig: OtaRig, tmp_path: Path) -> None:
    bundle = rig.with_anchor(loop.enroll("dev-ota"))
    rig.publish("1.1.0")
    agent = agent_with_ota(tmp_path, bundle)
    try:
        assert agent.ota is not None
        shipped = agent.detector
        assert shipped.info.version == SHIPPED_VERSION
        assert wait_for(lambda: rig.counted_with("dev-ota", SHIPPED_VERSION) > 0, 40), "no counts before"

        ok, detail = rig.send(
            "dev-ota",
            action="install",
            name="detector",
            version="1.1.0",
            rollout_id=5,
            shadow_s=1.0,
            min_frames=8,
        )
        assert (ok, detail) == (True, "accepted")
        active = rig.wait_state("dev-ota", "active", 60)
        assert rig.states("dev-ota") == ["staging", "shadow", "active"]
        assert (active.rollout_id, active.version, active.running_version) == (5, "1.1.0", "1.1.0")
        stats = active.shadow
        assert stats is not None
        assert stats.frames >= 8
        # The candidate has the running model's weights: it finds exactly what the running one finds.
        assert (stats.agreement, stats.novel) == (1.0, 0.0)
        assert stats.confidence_candidate == stats.confidence_running
        assert sum(stats.confidence_running) == pytest.approx(1.0)
        assert stats.latency_p95_ms_running > 0
        assert stats.latency_p95_ms_candidate > 0

        candidate = agent.detector
        assert candidate.info.version == "1.1.0"
        assert agent.ota.previous is shipped  # still loaded
        assert wait_for(lambda: rig.counted_with("dev-ota", "1.1.0") > 0, 40), (
            "counts did not follow the switch"
        )
        agent.heartbeat()  # in process there is no heartbeat loop: send one, it names the new model
        assert wait_for(lambda: rig.health_with("dev-ota", "1.1.0") > 0, 10)
        loads = agent.ota.loads
        assert loads == 1  # the candidate, once

        ok, detail = rig.send("dev-ota", action="rollback", rollout_id=5)
        assert ok, detail
        assert detail == f"rolled back from 1.1.0 to {SHIPPED_VERSION} instantly (kept loaded)"
        assert agent.detector is shipped  # the very object that ran before: no reload from disk
        assert agent.ota.loads == loads
        back = rig.wait_state("dev-ota", "rolled_back", 15)
        assert (back.version, back.running_version, back.rollout_id) == ("1.1.0", SHIPPED_VERSION, 5)
        assert agent.ota.updater.boot().source == "shipped"  # a restart runs what runs now
        before = rig.counted_with("dev-ota", SHIPPED_VERSION)
        assert wait_for(lambda: rig.counted_with("dev-ota", SHIPPED_VERSION) > before, 40)
    finally:
        agent.stop(drain_s=5)


def test_a_tampered_update_is_refused_and_the_old_model_keeps_running(
    loop: Loop, rig: OtaRig, tmp_path: Path
) -> None:
    bundle = rig.with_anchor(loop.enroll("dev-tamper"))
    published = rig.publish("1.2.0")
    rig.release.tamper(published)  # the model and its compressed and patch forms (ADR 0027)
    agent = agent_with_ota(tmp_path, bundle)
    try:
        running = agent.detector
        assert rig.send("dev-tamper", action="install", name="detector", version="1.2.0") == (
            True,
            "accepted",
        )
        refused = rig.wait_state("dev-tamper", "refused", 60)
        assert rig.states("dev-tamper") == ["staging", "refused"]
        assert refused.detail.startswith("tampered_target: ")
        assert (refused.version, refused.running_version) == ("1.2.0", SHIPPED_VERSION)
        assert agent.detector is running
        assert agent.ota is not None
        assert agent.ota.installing is None
        assert agent.ota.updater.boot().source == "shipped"
        assert wait_for(lambda: rig.counted_with("dev-tamper", SHIPPED_VERSION) > 0, 40)
        assert rig.counted_with("dev-tamper", "1.2.0") == 0
    finally:
        agent.stop(drain_s=5)


def test_an_unreachable_repository_is_retried_then_failed(loop: Loop, rig: OtaRig, tmp_path: Path) -> None:
    bundle = rig.with_anchor(loop.enroll("dev-away"))
    rig.publish("1.3.0")
    agent = agent_with_ota(tmp_path, bundle, retry_for_s=3.0)  # 4 retries, and for at least 3 s
    try:
        rig.release.server.stop()
        assert rig.send("dev-away", action="install", name="detector", version="1.3.0") == (True, "accepted")
        failed = rig.wait_state("dev-away", "failed", 60)
        assert re.match(r"repository unreachable after \d+ tries in [3-9] s", failed.detail), failed.detail
        assert agent.detector.info.version == SHIPPED_VERSION
    finally:
        agent.stop(drain_s=5)


def test_enrollment_carries_the_repository_anchor_when_the_hub_has_one(loop: Loop, tmp_path: Path) -> None:
    home = loop.home
    assert model_repo_anchor(home, "http://hub.example:8443/models") is None  # no repository yet
    roots = keys.generate_root_keys(tmp_path / "offline", 1)
    signers: list[CryptoSigner] = roots
    ModelRepository.create(
        home.repository_dir,
        home.online_keys_dir,
        root_keys=keys.public_keys(roots),
        threshold=1,
        root_signers=signers,
    )
    bundle = loop.enroll("dev-anchored")
    assert bundle.model_repo is None  # the hub did not say where devices reach it
    anchor = model_repo_anchor(home, "http://hub.example:8443/models")
    assert anchor is not None
    assert anchor.url == "http://hub.example:8443/models"
    assert anchor.root_json == (home.repository_dir / "metadata" / "root.json").read_text()
