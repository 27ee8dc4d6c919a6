"""The model repository: python-tuf metadata on disk, served over HTTP(S) on loopback.

Also home of :class:`ReleaseHarness`, the repository + server + device set-up
that the OTA component tests (``test_ota_refusals``, ``test_ota_install``) share.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import stat
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import DownloadLengthMismatchError
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp
from tuf.ngclient import Updater

from roadside.cloud.broker.pki import CertificateAuthority, write_issued
from roadside.cloud.release import keys
from roadside.cloud.release.repository import (
    ModelManifest,
    ModelRepository,
    PublishedModel,
    describe_onnx,
    release_model,
    version_key,
)
from roadside.cloud.release.server import RepositoryServer, TimestampRefresher
from roadside.edge.ota.updater import CappedFetcher, ModelUpdater, ShippedModel
from roadside.shared.errors import ConfigError

pytestmark = pytest.mark.timeout(20)

DETECTOR = Path(__file__).resolve().parents[2] / "models" / "detector.onnx"
LABELS = ("car", "truck", "pedestrian", "cyclist")
SHAPE: tuple[int | str, ...] = ("batch", 3, 320, 320)
AGENT_VERSION = "0.1.0"


def _weights(size: int, seed: int) -> bytes:
    """Float32 weights as a trained model holds them: noisy mantissas, barely compressible."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.05, size // 4).astype(np.float32).tobytes()


FINE_TUNE_BASE = _weights(256 * 1024, 7)


def fine_tuned(base: bytes, share: float = 0.2) -> bytes:
    """``base`` with its last ``share`` of weights nudged: the head-only fine-tune of a frozen backbone."""
    weights = np.frombuffer(base, dtype=np.float32).copy()
    start = int(len(weights) * (1 - share))
    rng = np.random.default_rng(11)
    weights[start:] += rng.normal(0, 0.001, len(weights) - start).astype(np.float32)
    return weights.tobytes()


class Clock:
    """The hub's clock, which a test may set back or forward."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class ReleaseHarness:
    """A repository with 2-of-3 offline root keys, served on loopback, and a device's view of it."""

    base: Path
    repo: ModelRepository
    server: RepositoryServer
    root_signers: list[CryptoSigner]
    clock: Clock
    first_root: bytes  # what the device was installed with
    shipped: ShippedModel
    devices: list[ModelUpdater] = field(default_factory=list)

    @property
    def offline(self) -> Path:
        return self.base / "offline"

    @property
    def online(self) -> Path:
        return self.base / "online"

    @property
    def repo_dir(self) -> Path:
        return self.base / "repo"

    def model_bytes(self, version: str, size: int = 4096) -> bytes:
        seed = hashlib.sha256(version.encode()).digest()
        return (seed * (size // len(seed) + 1))[:size]

    def publish(self, version: str, data: bytes | None = None, **kw: Any) -> PublishedModel:
        """Sign ``version`` of the detector in (synthetic bytes unless given)."""
        source = self.base / "build" / version / "detector.onnx"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(data if data is not None else self.model_bytes(version))
        manifest = ModelManifest(
            "detector", version, kw.pop("opset", 17), kw.pop("input_shape", SHAPE), kw.pop("labels", LABELS)
        )
        return self.repo.add_model(
            source, manifest=manifest, min_agent_version=kw.pop("min_agent_version", "0.1.0"), **kw
        )

    def device(self, state: str = "device", **kw: Any) -> ModelUpdater:
        """A device's updater over this repository (a fresh object each call: like a reboot)."""
        options: dict[str, Any] = {
            "shipped": self.shipped,
            "labels": ["car", "pedestrian"],
            "input_shape": [1, 3, 320, 320],
        } | kw
        max_bytes = options.pop("max_bytes", 8 * 1024 * 1024)
        return ModelUpdater(
            self.base / state, self.server.url, self.first_root, AGENT_VERSION, max_bytes, **options
        )

    def served(self, published: PublishedModel) -> Path:
        """The hash-named file the server sends for a target."""
        folder, _, name = published.target_path.rpartition("/")
        return self.repo_dir / "targets" / folder / f"{published.sha256}.{name}"

    def served_forms(self, published: PublishedModel) -> list[Path]:
        """The hash-named files of the model's compressed and patch forms (ADR 0027)."""
        targets = self.repo.targets().targets
        found = []
        for transfer in published.custom.get("transfers", []):
            entry = targets[transfer["path"]]
            folder, _, name = entry.path.rpartition("/")
            found.append(self.repo_dir / "targets" / folder / f"{entry.hashes['sha256']}.{name}")
        return found

    def tamper(self, published: PublishedModel) -> None:
        """Flip a byte in the middle of every file the release serves for the model."""
        for served in [self.served(published), *self.served_forms(published)]:
            data = bytearray(served.read_bytes())
            data[len(data) // 2] ^= 0x01
            served.write_bytes(bytes(data))

    def metadata(self, name: str) -> Path:
        return self.repo_dir / "metadata" / name

    def install(self, version: str, state: str = "device") -> ModelUpdater:
        """Publish ``version`` and install it on the device; return the device's updater."""
        self.publish(version)
        device = self.device(state)
        staged = device.check_and_stage("detector")
        assert staged.status == "staged", staged
        assert device.activate(version).status == "installed"
        return device


@contextmanager
def release_harness(base: Path) -> Iterator[ReleaseHarness]:
    clock = Clock()
    roots = keys.generate_root_keys(base / "offline", 3)
    repo = ModelRepository.create(
        base / "repo",
        base / "online",
        root_keys=keys.public_keys(roots),
        threshold=2,
        root_signers=roots[:2],
        clock=clock,
    )
    shipped_path = base / "shipped" / "detector.onnx"
    shipped_path.parent.mkdir()
    shipped_path.write_bytes(b"the model the agent was installed with")
    with RepositoryServer(base / "repo") as server:
        yield ReleaseHarness(
            base,
            repo,
            server,
            roots,
            clock,
            repo.trusted_root(),
            ShippedModel(shipped_path, "detector", "0.1.0"),
        )


@pytest.fixture
def release(tmp_path: Path) -> Iterator[ReleaseHarness]:
    with release_harness(tmp_path) as harness:
        yield harness


def _load(path: Path) -> Metadata[Any]:
    return Metadata.from_bytes(path.read_bytes())


# -- keys -----------------------------------------------------------------------


def test_keys_are_private_files_named_by_key_id(tmp_path: Path) -> None:
    signer = keys.generate_key(tmp_path, keys.TARGETS)
    pem = tmp_path / "targets" / f"{signer.public_key.keyid}.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    (loaded,) = keys.load_signers(tmp_path, keys.TARGETS)
    assert loaded.public_key == signer.public_key
    public = keys.load_public_key(tmp_path / "targets" / f"{signer.public_key.keyid}.pub.json")
    assert public == signer.public_key


def test_a_key_file_under_the_wrong_name_is_refused(tmp_path: Path) -> None:
    signer = keys.generate_key(tmp_path, keys.SNAPSHOT)
    folder = tmp_path / "snapshot"
    os.replace(folder / f"{signer.public_key.keyid}.pem", folder / f"{'0' * 64}.pem")
    with pytest.raises(ConfigError, match="not the key its file name says"):
        keys.load_signers(tmp_path, keys.SNAPSHOT)


def test_unknown_role_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown TUF role"):
        keys.generate_key(tmp_path, "mirror")


# -- creation -------------------------------------------------------------------


def test_root_v1_needs_the_threshold_of_offline_keys(release: ReleaseHarness) -> None:
    root = _load(release.metadata("1.root.json"))
    assert isinstance(root.signed, Root)
    assert root.signed.consistent_snapshot
    assert root.signed.roles["root"].threshold == 2
    assert len(root.signed.roles["root"].keyids) == 3
    assert len(root.signatures) == 2
    root.signed.verify_delegate("root", root.signed_bytes, root.signatures)
    for role in keys.ONLINE_ROLES:
        (keyid,) = root.signed.roles[role].keyids
        assert (release.online / role / f"{keyid}.pem").is_file()


def test_root_private_keys_never_reach_the_hub(release: ReleaseHarness) -> None:
    root_ids = {s.public_key.keyid for s in release.root_signers}
    hub_files = [*release.repo_dir.rglob("*"), *release.online.rglob("*")]
    assert not [p for p in hub_files if any(k in p.name for k in root_ids)]
    assert not [p for p in release.repo_dir.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]


def test_creating_with_too_few_root_signatures_is_refused(tmp_path: Path) -> None:
    roots = keys.generate_root_keys(tmp_path / "offline", 3)
    with pytest.raises(ConfigError, match="needs 2 signatures"):
        ModelRepository.create(
            tmp_path / "repo",
            tmp_path / "online",
            root_keys=keys.public_keys(roots),
            threshold=2,
            root_signers=roots[:1],
        )
    assert not (tmp_path / "repo" / "metadata" / "root.json").exists()


def test_opening_a_missing_repository_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="create one with the root keys"):
        ModelRepository(tmp_path, tmp_path / "online")


# -- publishing -----------------------------------------------------------------


def test_a_model_target_carries_hash_size_and_roadside_fields(release: ReleaseHarness) -> None:
    published = release.publish("1.0.0", min_agent_version="0.1.0")
    targets = release.repo.targets()
    entry = targets.targets["models/detector/1.0.0/detector.onnx"]
    data = release.model_bytes("1.0.0")
    assert entry.length == len(data) == published.length
    assert entry.hashes == {"sha256": hashlib.sha256(data).hexdigest()}
    assert entry.custom == {
        "name": "detector",
        "model_version": "1.0.0",
        "opset": 17,
        "input_shape": ["batch", 3, 320, 320],
        "labels": list(LABELS),
        "min_agent_version": "0.1.0",
        # The first version has nothing to patch from: only the compressed form.
        "transfers": [{"path": "models/detector/1.0.0/model.zst", "encoding": "zstd"}],
    }
    assert release.served(published).read_bytes() == data


def test_each_version_is_published_compressed_and_as_a_patch_from_the_previous(
    release: ReleaseHarness,
) -> None:
    """Both are signed targets of their own, and decode to the model's bytes."""
    import zstandard

    first = release.publish("1.0.0", data=FINE_TUNE_BASE)
    second = release.publish("2.0.0", data=fine_tuned(FINE_TUNE_BASE))
    targets = release.repo.targets().targets
    patch_path = f"models/detector/2.0.0/patch-{first.sha256[:16]}.zst"
    assert second.custom["transfers"] == [
        {"path": "models/detector/2.0.0/model.zst", "encoding": "zstd"},
        {"path": patch_path, "encoding": "zstd-patch", "base_sha256": first.sha256},
    ]
    compressed, patch = targets["models/detector/2.0.0/model.zst"], targets[patch_path]
    assert compressed.custom == {"encoding_of": second.target_path, "encoding": "zstd"}
    assert patch.custom == {
        "encoding_of": second.target_path,
        "encoding": "zstd-patch",
        "base_sha256": first.sha256,
    }
    assert "model_version" not in patch.custom, "a form is not a version in the index"
    assert [m.version for m in release.repo.models("detector")] == ["1.0.0", "2.0.0"]
    data = fine_tuned(FINE_TUNE_BASE)
    assert patch.length < len(data) // 4 < compressed.length
    base = zstandard.ZstdCompressionDict(FINE_TUNE_BASE, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    served_patch = (
        release.repo_dir
        / "targets"
        / f"models/detector/2.0.0/{patch.hashes['sha256']}.{patch_path.rsplit('/', 1)[1]}"
    )
    decoded = zstandard.ZstdDecompressor(dict_data=base, max_window_size=1 << 27).decompress(
        served_patch.read_bytes()
    )
    assert decoded == data


def test_publishing_bumps_targets_snapshot_timestamp_consistently(release: ReleaseHarness) -> None:
    before = release.repo.timestamp().version
    release.publish("1.0.0")
    timestamp = release.repo.timestamp()
    snapshot = release.repo.snapshot()
    assert timestamp.version == before + 1
    snapshot_bytes = release.metadata(f"{snapshot.version}.snapshot.json").read_bytes()
    assert timestamp.snapshot_meta.hashes == {"sha256": hashlib.sha256(snapshot_bytes).hexdigest()}
    targets_meta = snapshot.meta["targets.json"]
    targets_bytes = release.metadata(f"{targets_meta.version}.targets.json").read_bytes()
    assert targets_meta.length == len(targets_bytes)
    # The previous versions stay, for devices part-way through an update.
    assert release.metadata(f"{snapshot.version - 1}.snapshot.json").is_file()


def test_the_index_names_every_version_and_the_latest(release: ReleaseHarness) -> None:
    release.publish("1.0.0")
    release.publish("1.10.0")
    (index_target,) = [t for p, t in release.repo.targets().targets.items() if p.endswith("index.json")]
    served = (
        release.repo_dir / "targets" / "models" / "detector" / f"{index_target.hashes['sha256']}.index.json"
    )
    body = json.loads(served.read_bytes())
    assert body == {
        "format": 1,
        "name": "detector",
        "latest": "1.10.0",
        "versions": {
            "1.0.0": "models/detector/1.0.0/detector.onnx",
            "1.10.0": "models/detector/1.10.0/detector.onnx",
        },
    }


def test_the_hub_refuses_a_duplicate_or_lower_version(release: ReleaseHarness) -> None:
    release.publish("1.2.0")
    with pytest.raises(ConfigError, match="already published"):
        release.publish("1.2.0")
    release.publish("1.10.0-rc")  # natural order: 1.10 is above 1.2
    with pytest.raises(ConfigError, match="not above the newest"):
        release.publish("1.9.0")
    assert [m.version for m in release.repo.models("detector")] == ["1.2.0", "1.10.0-rc"]


def test_version_order_is_natural() -> None:
    assert version_key("1.10.0") > version_key("1.9.2")
    assert version_key("det-2025.04.10") > version_key("det-2025.04.2")


def test_describe_onnx_reads_the_detector(tmp_path: Path) -> None:
    manifest = describe_onnx(DETECTOR, "detector")
    assert manifest.opset == 17
    assert manifest.input_shape == ("batch", 3, 320, 320)
    assert manifest.labels == LABELS
    assert manifest.version == "0.1.0"


def test_a_target_outside_the_targets_folder_is_not_written(release: ReleaseHarness) -> None:
    with pytest.raises(ConfigError, match="leaves the repository"):
        release.repo.add_target("../../outside.onnx", b"x", {})
    assert not (release.base / "outside.onnx").exists()


# -- the hub's timestamp --------------------------------------------------------


def test_refresh_timestamp_resigns_only_when_half_its_life_is_gone(release: ReleaseHarness) -> None:
    version = release.repo.timestamp().version
    assert not release.repo.refresh_timestamp()
    release.clock.offset = timedelta(hours=13)
    assert release.repo.refresh_timestamp()
    refreshed = release.repo.timestamp()
    assert refreshed.version == version + 1
    assert refreshed.expires > release.clock() + timedelta(hours=23)
    assert release.repo.refresh_timestamp(force=True)


def test_refresh_renews_a_snapshot_near_expiry(release: ReleaseHarness) -> None:
    snapshot = release.repo.snapshot().version
    release.clock.offset = timedelta(days=4)
    assert release.repo.refresh_timestamp()
    assert release.repo.snapshot().version == snapshot + 1
    assert release.repo.timestamp().expires > release.clock()


def test_timestamp_refresher_runs_on_its_own_thread(release: ReleaseHarness) -> None:
    release.clock.offset = timedelta(hours=13)
    version = release.repo.timestamp().version
    refresher = TimestampRefresher(release.repo, interval_s=0.05)
    tick = threading.Event()  # never set: a bounded wait between polls
    refresher.start()
    try:
        for _ in range(100):
            if release.repo.timestamp().version > version:
                break
            tick.wait(0.05)
    finally:
        refresher.stop()
    assert release.repo.timestamp().version == version + 1


# -- key rotation ---------------------------------------------------------------


def test_root_rotation_is_signed_by_old_and_new_thresholds(release: ReleaseHarness) -> None:
    new = [CryptoSigner.generate_ed25519() for _ in range(3)]
    new_keys = keys.public_keys(new)
    with pytest.raises(ConfigError, match="needs 2 signatures from the current root keys"):
        release.repo.rotate_root(new_keys, 2, release.root_signers[:1], new[:2])
    with pytest.raises(ConfigError, match="and 2 from the new ones"):
        release.repo.rotate_root(new_keys, 2, release.root_signers[:2], new[:1])
    assert release.repo.rotate_root(new_keys, 2, release.root_signers[1:], new[1:]) == 2
    v1, v2 = _load(release.metadata("1.root.json")), _load(release.metadata("2.root.json"))
    assert isinstance(v1.signed, Root)
    assert isinstance(v2.signed, Root)
    assert v2.signed.get_root_verification_result(v1.signed, v2.signed_bytes, v2.signatures).verified
    assert set(v2.signed.roles["root"].keyids) == {k.keyid for k in new_keys}
    assert release.repo.trusted_root() == release.metadata("2.root.json").read_bytes()


def test_renewing_root_is_a_rotation_to_the_same_keys(release: ReleaseHarness) -> None:
    before = release.repo.root()
    release.clock.offset = timedelta(days=300)
    current = [before.keys[k] for k in before.roles["root"].keyids]
    signers = release.root_signers[:2]
    assert release.repo.rotate_root(current, 2, signers, signers) == 2
    after = release.repo.root()
    assert after.roles["root"].keyids == before.roles["root"].keyids
    assert after.expires > before.expires + timedelta(days=299)


def test_online_key_rotation_resigns_its_role_with_the_new_key(release: ReleaseHarness) -> None:
    old = release.repo.root().roles["timestamp"].keyids
    keyid = release.repo.rotate_online_key("timestamp", release.root_signers[:2])
    root = release.repo.root()
    assert root.roles["timestamp"].keyids == [keyid]
    assert root.version == 2
    timestamp = _load(release.metadata("timestamp.json"))
    root.verify_delegate("timestamp", timestamp.signed_bytes, timestamp.signatures)
    assert (release.online / "timestamp" / "retired" / f"{old[0]}.pem").is_file()
    assert not (release.online / "timestamp" / f"{old[0]}.pem").exists()
    release.publish("1.0.0")  # the hub goes on publishing with the new key


# -- serving --------------------------------------------------------------------


def test_the_server_serves_files_but_no_listing_and_no_writes(release: ReleaseHarness) -> None:
    with urllib.request.urlopen(f"{release.server.url}/metadata/timestamp.json", timeout=5) as response:  # noqa: S310 - our loopback server
        assert response.headers["Cache-Control"] == "no-cache"
        assert isinstance(Metadata.from_bytes(response.read()).signed, Timestamp)
    cases = [("GET", "/metadata/", 404), ("GET", "/.lock", 404), ("PUT", "/metadata/timestamp.json", 501)]
    for method, path, status in cases:
        body = b"x" if method == "PUT" else None
        request = urllib.request.Request(f"{release.server.url}{path}", data=body, method=method)  # noqa: S310
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)  # noqa: S310
        assert caught.value.code == status


def test_https_with_a_roadside_ca_certificate(release: ReleaseHarness, tmp_path: Path) -> None:
    ca = CertificateAuthority.create("Release test CA")
    files = write_issued(
        tmp_path / "tls", "release", ca.issue_server("release", ["localhost"], ["127.0.0.1"])
    )
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    published = release.publish("1.0.0")
    with RepositoryServer(release.repo_dir, tls=files) as server:
        assert server.url.startswith("https://127.0.0.1:")
        device = ModelUpdater(
            tmp_path / "tls-device", server.url, release.first_root, AGENT_VERSION, 1 << 20,
            fetcher=CappedFetcher(1 << 20, ca_file=ca_file),
        )  # fmt: skip
        result = device.check_and_stage("detector")
        assert (result.status, result.version) == ("staged", published.version)


def test_one_kept_alive_tls_connection_per_install(release: ReleaseHarness, tmp_path: Path) -> None:
    """Root probe (a 404), timestamp, snapshot, targets, index and model: one TLS handshake."""
    ca = CertificateAuthority.create("Release test CA")
    files = write_issued(
        tmp_path / "tls", "release", ca.issue_server("release", ["localhost"], ["127.0.0.1"])
    )
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    release.publish("1.0.0")
    with RepositoryServer(release.repo_dir, tls=files) as server:
        device = ModelUpdater(
            tmp_path / "tls-device", server.url, release.first_root, AGENT_VERSION, 1 << 20,
            fetcher=CappedFetcher(1 << 20, ca_file=ca_file),
        )  # fmt: skip
        assert device.check_and_stage("detector").status == "staged"
        assert server.connections_accepted == 1
        assert device.activate("1.0.0", name="detector").status == "installed"
        # The connection is dropped after each check: the next one opens its own.
        assert device.check_and_stage("detector").status == "up_to_date"
        assert server.connections_accepted == 2


def test_a_not_found_keeps_the_connection(release: ReleaseHarness) -> None:
    host, port = release.server.url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", "/metadata/2.root.json")  # what every update check probes for
        missing = connection.getresponse()
        assert (missing.status, missing.version) == (404, 11)
        missing.read()
        assert not missing.will_close
        connection.request("GET", "/metadata/timestamp.json")
        found = connection.getresponse()
        assert found.status == 200
        assert isinstance(Metadata.from_bytes(found.read()).signed, Timestamp)
    finally:
        connection.close()
    assert release.server.connections_accepted == 1


def test_ngclient_reads_the_repository_directly(release: ReleaseHarness, tmp_path: Path) -> None:
    release.publish("1.0.0")
    (tmp_path / "client").mkdir()
    updater = Updater(
        str(tmp_path / "client"),
        f"{release.server.url}/metadata/",
        str(tmp_path / "downloads"),
        f"{release.server.url}/targets/",
        fetcher=CappedFetcher(1 << 20),
        bootstrap=release.first_root,
    )
    updater.refresh()
    info = updater.get_targetinfo("models/detector/1.0.0/detector.onnx")
    assert info is not None
    assert Path(updater.download_target(info)).read_bytes() == release.model_bytes("1.0.0")
    assert isinstance(_load(release.metadata("1.targets.json")).signed, Targets)
    assert isinstance(_load(release.metadata("1.snapshot.json")).signed, Snapshot)


def test_the_capped_fetcher_refuses_a_declared_oversize_body(release: ReleaseHarness) -> None:
    published = release.publish("1.0.0")
    fetcher = CappedFetcher(1000)
    url = (
        f"{release.server.url}/targets/{release.served(published).relative_to(release.repo_dir / 'targets')}"
    )
    with pytest.raises(DownloadLengthMismatchError, match="over the 1000-byte cap"):
        fetcher.download_bytes(url, 1 << 20)


# -- with the registry ----------------------------------------------------------


def test_release_model_records_lineage_and_audit(release: ReleaseHarness, tmp_path: Path) -> None:
    from roadside.cloud.registry import Registry

    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.create_schema()
    repo = ModelRepository(release.repo_dir, release.online, audit=registry.audit)
    try:
        first = release_model(
            repo, registry, DETECTOR, name="detector", version="1.0.0", min_agent_version="0.1.0", actor="ml"
        )
        second = release_model(
            repo, registry, DETECTOR, name="detector", version="1.1.0", min_agent_version="0.1.0",
            parent="1.0.0", actor="ml",
        )  # fmt: skip
        assert first.sha256 == hashlib.sha256(DETECTOR.read_bytes()).hexdigest()
        assert second.parent == "1.0.0"
        assert second.metadata["target_path"] == "models/detector/1.1.0/detector.onnx"
        assert second.metadata["labels"] == list(LABELS)
        actions = [e.action for e in registry.audit.entries()]
        assert actions.count("model.publish") == 2
        assert actions.count("release.add_target") == 2
        with pytest.raises(ConfigError, match="already in the registry"):
            release_model(
                repo, registry, DETECTOR, name="detector", version="1.1.0", min_agent_version="0.1.0"
            )
    finally:
        registry.close()
