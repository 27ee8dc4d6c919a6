"""Installing on the device: staged, verified, switched atomically, and always bootable.

Power loss is simulated at each durable step through the updater's
``checkpoint`` seam; the "device" then reboots (a fresh ``ModelUpdater`` over
the same state directory) and must boot a model that verifies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

from roadside.cloud.release import keys
from roadside.cloud.release.repository import describe_onnx
from roadside.edge.ota.updater import Checkpoint, ModelUpdater
from roadside.shared.errors import ConfigError, TransportError
from tests.component.test_tuf_repository import DETECTOR, ReleaseHarness, release_harness

pytestmark = pytest.mark.timeout(20)


class PowerLoss(Exception):  # noqa: N818 - an event, not an error
    pass


def crash_at(step: str) -> Checkpoint:
    def checkpoint(reached: str) -> None:
        if reached == step:
            raise PowerLoss(step)

    return checkpoint


@pytest.fixture
def release(tmp_path: Path) -> Iterator[ReleaseHarness]:
    with release_harness(tmp_path) as harness:
        yield harness


def pointer(release: ReleaseHarness, state: str = "device") -> dict[str, object]:
    body = json.loads((release.base / state / "models" / "current").read_bytes())
    assert isinstance(body, dict)
    return body


def assert_boots(release: ReleaseHarness, device: ModelUpdater, version: str, source: str = "active") -> None:
    choice = device.boot()
    assert (choice.version, choice.source) == (version, source)
    expected = release.shipped.path.read_bytes() if source == "shipped" else release.model_bytes(version)
    assert choice.path.read_bytes() == expected
    assert device.boot_model() == choice.path


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# -- the happy path ---------------------------------------------------------------


def test_install_the_real_detector_then_boot_it(release: ReleaseHarness) -> None:
    ort = pytest.importorskip("onnxruntime")
    source = release.base / "build" / "detector.onnx"
    source.parent.mkdir(parents=True)
    source.write_bytes(DETECTOR.read_bytes())
    release.repo.add_model(
        source, manifest=describe_onnx(source, "detector", "0.2.0"), min_agent_version="0.1.0"
    )
    device = release.device()
    assert device.boot().source == "shipped"

    staged = device.check_and_stage("detector")
    assert (staged.status, staged.version) == ("staged", "0.2.0")
    assert device.boot().source == "shipped", "staging alone changes nothing"
    assert device.activate("0.2.0").status == "installed"

    choice = release.device().boot()
    assert (choice.version, choice.source) == ("0.2.0", "active")
    assert hashlib.sha256(choice.path.read_bytes()).digest() == hashlib.sha256(DETECTOR.read_bytes()).digest()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(choice.path), options, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 320, 320]
    assert pointer(release)["previous"] is None  # the shipped model is not a file the pointer owns
    assert release.device().check_and_stage("detector").status == "up_to_date"


def test_the_previous_model_is_kept_for_an_instant_rollback(release: ReleaseHarness) -> None:
    release.install("1.0.0")
    device = release.install("2.0.0")
    body = pointer(release)
    assert body["active"] == {
        "name": "detector",
        "version": "2.0.0",
        "file": "installed/detector/2.0.0.onnx",
        "sha256": hashlib.sha256(release.model_bytes("2.0.0")).hexdigest(),
        "length": len(release.model_bytes("2.0.0")),
    }
    assert isinstance(body["previous"], dict)
    assert body["previous"]["version"] == "1.0.0"

    assert device.rollback().version == "1.0.0"
    assert_boots(release, release.device(), "1.0.0")
    # A later install keeps what ran (1.0.0) as the previous, and drops the file of 2.0.0.
    release.install("3.0.0")
    body = pointer(release)
    assert isinstance(body["previous"], dict)
    assert body["previous"]["version"] == "1.0.0"
    installed = release.base / "device" / "models" / "installed" / "detector"
    assert sorted(p.name for p in installed.iterdir()) == ["1.0.0.onnx", "3.0.0.onnx"]


def test_rollback_with_nothing_to_roll_back_to(release: ReleaseHarness) -> None:
    assert release.device().rollback().status == "unavailable"
    device = release.install("1.0.0")
    result = device.rollback()
    assert (result.status, result.detail) == ("unavailable", "no previous model to roll back to")


def test_unpublished_model_or_version_is_unavailable(release: ReleaseHarness) -> None:
    release.publish("1.0.0")
    device = release.device()
    assert device.check_and_stage("plates").status == "unavailable"
    assert device.check_and_stage("detector", version="7.0.0").status == "unavailable"
    assert device.activate("7.0.0").status == "unavailable"


def test_an_unreachable_repository_is_a_transport_error(release: ReleaseHarness, tmp_path: Path) -> None:
    device = ModelUpdater(tmp_path / "lost", "http://127.0.0.1:9", release.first_root, "0.1.0", 1 << 20)
    with pytest.raises(TransportError, match="unreachable"):
        device.check_and_stage("detector")


# -- power loss -------------------------------------------------------------------


@pytest.mark.parametrize("step", ["downloaded", "staged", "moved", "swapped"])
def test_power_loss_at_each_step_leaves_a_bootable_device(release: ReleaseHarness, step: str) -> None:
    release.install("1.0.0")
    release.publish("2.0.0")
    device = release.device(checkpoint=crash_at(step))

    def update() -> None:
        assert device.check_and_stage("detector").status == "staged"
        device.activate("2.0.0")

    with pytest.raises(PowerLoss):
        update()
    if step == "downloaded":
        # Not yet fsynced: the power cut may have lost the tail of the file.
        for part in (release.base / "device" / "models" / "staging").rglob("*.part"):
            part.write_bytes(part.read_bytes()[:100])

    rebooted = release.device()
    assert_boots(release, rebooted, "2.0.0" if step == "swapped" else "1.0.0")

    # And the update completes after the reboot.
    assert rebooted.check_and_stage("detector").status in {"staged", "up_to_date"}
    assert rebooted.activate("2.0.0").status in {"installed", "up_to_date"}
    assert_boots(release, release.device(), "2.0.0")


def test_a_corrupt_active_model_boots_the_previous_then_the_shipped(release: ReleaseHarness) -> None:
    release.install("1.0.0")
    release.install("2.0.0")
    installed = release.base / "device" / "models" / "installed" / "detector"
    flip_byte(installed / "2.0.0.onnx")
    assert_boots(release, release.device(), "1.0.0", "previous")
    (installed / "1.0.0.onnx").unlink()
    assert_boots(release, release.device(), "0.1.0", "shipped")
    # The device heals itself: the latest release is staged again.
    device = release.device()
    assert device.check_and_stage("detector").status == "staged"
    assert device.activate("2.0.0").status == "installed"
    assert_boots(release, release.device(), "2.0.0")


def test_a_garbled_pointer_boots_the_shipped_model(release: ReleaseHarness) -> None:
    release.install("1.0.0")
    (release.base / "device" / "models" / "current").write_bytes(b'{"format": 1, "active": ')
    assert_boots(release, release.device(), "0.1.0", "shipped")


def test_with_nothing_verified_and_nothing_shipped_boot_says_so(release: ReleaseHarness) -> None:
    with pytest.raises(ConfigError, match="no verified model to boot"):
        release.device(shipped=None).boot_model()


def test_activate_rehashes_the_staged_file(release: ReleaseHarness) -> None:
    device = release.install("1.0.0")
    release.publish("2.0.0")
    assert device.check_and_stage("detector").status == "staged"
    flip_byte(release.base / "device" / "models" / "staging" / "detector" / "2.0.0.onnx")
    result = device.activate("2.0.0")
    assert (result.status, result.reason) == ("refused", "tampered_target")
    assert_boots(release, release.device(), "1.0.0")


# -- key rotation -----------------------------------------------------------------


def test_root_key_rotation_keeps_devices_updating(release: ReleaseHarness) -> None:
    release.install("1.0.0")
    # Ceremony 1: the three root keys are replaced; two old and two new holders sign.
    second = [CryptoSigner.generate_ed25519() for _ in range(3)]
    release.repo.rotate_root(keys.public_keys(second), 2, release.root_signers[:2], second[:2])
    device = release.install("2.0.0")
    assert_boots(release, device, "2.0.0")
    history = release.base / "device" / "ota" / "metadata" / "root_history"
    assert (history / "2.root.json").is_file()

    # Ceremony 2: only the second generation can vouch for the third.
    third = [CryptoSigner.generate_ed25519() for _ in range(3)]
    with pytest.raises(ConfigError):
        release.repo.rotate_root(keys.public_keys(third), 2, release.root_signers, third[:2])
    release.repo.rotate_root(keys.public_keys(third), 2, second[1:], third[:2])
    release.install("3.0.0")
    assert_boots(release, release.device(), "3.0.0")

    # A device still holding root v1 from its installation walks v1 -> v2 -> v3.
    fresh = release.device("fresh-device")
    assert fresh.check_and_stage("detector").status == "staged"
    assert fresh.activate("3.0.0").status == "installed"
    assert (release.base / "fresh-device" / "ota" / "metadata" / "root_history" / "3.root.json").is_file()


@pytest.mark.parametrize("role", keys.ONLINE_ROLES)
def test_online_key_rotation_keeps_devices_updating(release: ReleaseHarness, role: str) -> None:
    release.install("1.0.0")
    release.repo.rotate_online_key(role, release.root_signers[1:])
    device = release.install("2.0.0")
    assert_boots(release, device, "2.0.0")
