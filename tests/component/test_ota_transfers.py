"""Compressed and patch downloads, and the fall back to the model file on every failure (ADR 0027).

Real TUF metadata signed by the repository, served over HTTPS (the Roadside
CA) on loopback. Each failing case plays one fault on the next release and the
device must still stage the exact model the targets metadata signs, by the
next form in line, and say which forms it fell back from.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from roadside.cloud.broker.pki import CertificateAuthority, write_issued
from roadside.cloud.release.encodings import compress, make_patch, patch_filename
from roadside.cloud.release.server import RepositoryServer
from roadside.edge.ota.updater import CappedFetcher, ModelUpdater
from tests.component.test_tuf_repository import (
    AGENT_VERSION,
    FINE_TUNE_BASE,
    ReleaseHarness,
    fine_tuned,
    release_harness,
)

pytestmark = pytest.mark.timeout(30)

BASE, NEW = "1.0.0", "2.0.0"
NEW_BYTES = fine_tuned(FINE_TUNE_BASE)


class CountingFetcher(CappedFetcher):
    """The device's fetcher, counting the bytes of each response body."""

    received = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._counted(super()._fetch(url))

    def _counted(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.received += len(chunk)
            yield chunk


class Fleet:
    """The release harness's repository served over HTTPS, and devices that pin its CA."""

    def __init__(self, release: ReleaseHarness, server: RepositoryServer, ca_file: Path) -> None:
        self.release, self.server, self.ca_file = release, server, ca_file

    def device(self, state: str = "device") -> tuple[ModelUpdater, CountingFetcher]:
        fetcher = CountingFetcher(1 << 22, ca_file=self.ca_file)
        updater = ModelUpdater(
            self.release.base / state, self.server.url, self.release.first_root, AGENT_VERSION, 1 << 22,
            shipped=self.release.shipped, fetcher=fetcher,
        )  # fmt: skip
        return updater, fetcher

    def running_base(self, state: str = "device") -> tuple[ModelUpdater, CountingFetcher]:
        """A device that installed 1.0.0 (by its compressed form), 2.0.0 then published."""
        device, fetcher = self.device(state)
        assert device.check_and_stage("detector").status == "staged"
        assert device.activate(BASE, name="detector").status == "installed"
        if self.release.repo.models("detector")[-1].version != NEW:
            self.release.publish(NEW, data=NEW_BYTES)
        fetcher.received = 0
        return device, fetcher

    def served(self, path: str) -> Path:
        """The hash-named file the server sends for target ``path``."""
        entry = self.release.repo.targets().targets[path]
        folder, _, name = path.rpartition("/")
        return self.release.repo_dir / "targets" / folder / f"{entry.hashes['sha256']}.{name}"

    @property
    def patch_path(self) -> str:
        return f"models/detector/{NEW}/{patch_filename(hashlib.sha256(FINE_TUNE_BASE).hexdigest())}"

    compressed_path = f"models/detector/{NEW}/model.zst"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    ca = CertificateAuthority.create("Transfer test CA")
    files = write_issued(
        tmp_path / "tls", "release", ca.issue_server("release", ["localhost"], ["127.0.0.1"])
    )
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    with release_harness(tmp_path / "release") as release:
        release.publish(BASE, data=FINE_TUNE_BASE)
        with RepositoryServer(release.repo_dir, tls=files) as server:
            yield Fleet(release, server, ca_file)


def assert_staged_exactly(device: ModelUpdater, transfer: str, fallbacks: int = 0) -> None:
    result = device.check_and_stage("detector")
    assert (result.status, result.version, result.transfer) == ("staged", NEW, transfer), result
    assert len(result.fallbacks) == fallbacks, result.fallbacks
    staged = device.staged_model("detector", NEW)
    assert staged is not None
    assert staged.read_bytes() == NEW_BYTES
    assert sum(device.form_failures.values()) == fallbacks
    assert device.activate(NEW, name="detector").status == "installed"
    assert device.boot().version == NEW


def test_a_device_holding_the_previous_version_fetches_the_patch(fleet: Fleet) -> None:
    device, fetcher = fleet.running_base()
    assert_staged_exactly(device, "zstd-patch")
    patch = fleet.release.repo.targets().targets[fleet.patch_path]
    assert patch.length < len(NEW_BYTES) // 4
    # Metadata (root probe, timestamp, snapshot, targets, index) and the patch; not the model.
    assert fetcher.received < len(NEW_BYTES) // 2


def test_a_device_without_the_previous_version_fetches_the_compressed_file(fleet: Fleet) -> None:
    fleet.release.publish(NEW, data=NEW_BYTES)
    device, _ = fleet.device("fresh")
    assert_staged_exactly(device, "zstd")


def test_a_corrupt_patch_falls_back_to_the_compressed_file(fleet: Fleet) -> None:
    device, _ = fleet.running_base()
    served = fleet.served(fleet.patch_path)
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 0x40
    served.write_bytes(bytes(data))
    assert_staged_exactly(device, "zstd", fallbacks=1)
    assert device.form_failures == {"zstd-patch": 1}


def test_a_patch_made_from_another_base_falls_back(fleet: Fleet) -> None:
    """Signed, well-formed, and labelled for the device's model, but built from other bytes."""
    device, _ = fleet.running_base()
    wrong_base = fine_tuned(FINE_TUNE_BASE, share=0.5)
    entry = fleet.release.repo.targets().targets[fleet.patch_path]
    fleet.release.repo.add_target(fleet.patch_path, make_patch(wrong_base, NEW_BYTES), entry.custom)
    result = device.check_and_stage("detector")
    assert (result.status, result.transfer) == ("staged", "zstd"), result
    assert result.fallbacks[0].startswith("zstd-patch:")


def test_a_patch_whose_base_changed_on_the_device_is_not_applied(fleet: Fleet) -> None:
    """The device's copy of 1.0.0 changed on disk: the patch rebuilds the wrong bytes, the compressed file."""
    device, _ = fleet.running_base()
    installed = fleet.release.base / "device" / "models" / "installed" / "detector" / f"{BASE}.onnx"
    installed.write_bytes(bytes(len(FINE_TUNE_BASE)))  # same length, every weight gone
    result = device.check_and_stage("detector")
    assert (result.transfer, len(result.fallbacks)) == ("zstd", 1), result
    assert "fail" in result.fallbacks[0]
    assert "hash" in result.fallbacks[0]
    staged = device.staged_model("detector", NEW)
    assert staged is not None
    assert staged.read_bytes() == NEW_BYTES


def test_missing_forms_fall_back_to_the_model_file(fleet: Fleet) -> None:
    device, _ = fleet.running_base()
    fleet.served(fleet.patch_path).unlink()
    fleet.served(fleet.compressed_path).unlink()
    assert_staged_exactly(device, "full", fallbacks=2)


def test_a_form_the_targets_do_not_sign_is_not_fetched(fleet: Fleet) -> None:
    device, _ = fleet.running_base()
    model_path = f"models/detector/{NEW}/detector.onnx"
    custom = dict(fleet.release.repo.targets().targets[model_path].custom)
    unsigned = f"models/detector/{NEW}/patch-0000000000000000.zst"
    custom["transfers"] = [
        {
            "path": unsigned,
            "encoding": "zstd-patch",
            "base_sha256": hashlib.sha256(FINE_TUNE_BASE).hexdigest(),
        }
    ]
    fleet.release.repo.add_target(model_path, NEW_BYTES, custom)
    result = device.check_and_stage("detector")
    assert (result.transfer, result.fallbacks) == (
        "full",
        (f"zstd-patch: {unsigned} is not a signed target",),
    )


def test_a_form_that_rebuilds_other_bytes_falls_back_to_the_model_file(fleet: Fleet) -> None:
    """The compressed target is signed and decodes, but not to the model the targets metadata signs."""
    fleet.release.publish(NEW, data=NEW_BYTES)
    custom = fleet.release.repo.targets().targets[fleet.compressed_path].custom
    fleet.release.repo.add_target(fleet.compressed_path, compress(NEW_BYTES[:-4] + b"\0\0\0\0"), custom)
    device, _ = fleet.device("fresh")
    result = device.check_and_stage("detector")
    assert (result.transfer, len(result.fallbacks)) == ("full", 1), result
    assert "fail" in result.fallbacks[0]
    assert "hash" in result.fallbacks[0]
    staged = device.staged_model("detector", NEW)
    assert staged is not None
    assert staged.read_bytes() == NEW_BYTES


def test_a_form_labelled_for_another_model_is_not_used(fleet: Fleet) -> None:
    fleet.release.publish(NEW, data=NEW_BYTES)
    fleet.release.repo.add_target(
        fleet.compressed_path,
        compress(NEW_BYTES),
        {"encoding_of": f"models/detector/{BASE}/detector.onnx", "encoding": "zstd"},
    )
    device, _ = fleet.device("fresh")
    result = device.check_and_stage("detector")
    assert result.transfer == "full"
    assert "does not say it encodes" in result.fallbacks[0]


def test_an_agent_without_zstandard_takes_the_model_file(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed without the edge extra's zstandard: each form is a logged fallback, never a refusal."""
    device, _ = fleet.running_base()
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard now raises ImportError
    result = device.check_and_stage("detector")
    assert (result.status, result.transfer, len(result.fallbacks)) == ("staged", "full", 2), result
    assert all("zstandard is not installed" in why for why in result.fallbacks)
    staged = device.staged_model("detector", NEW)
    assert staged is not None
    assert staged.read_bytes() == NEW_BYTES
