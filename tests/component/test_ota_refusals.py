"""Every attack the device must refuse, against a real repository served over HTTP on loopback.

Each test installs a genuine model (1.0.0) first, then plays one attack on
the next release. The device must refuse with the right reason, keep booting
its verified 1.0.0, and stage nothing.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import DownloadLengthMismatchError
from tuf.api.metadata import Metadata, TargetFile
from tuf.api.serialization.json import JSONSerializer

from roadside.edge.ota.updater import CappedFetcher, ModelUpdater, OtaResult
from tests.component.test_tuf_repository import ReleaseHarness, release_harness

pytestmark = pytest.mark.timeout(20)

RUNNING = "1.0.0"


@pytest.fixture
def release(tmp_path: Path) -> Iterator[ReleaseHarness]:
    with release_harness(tmp_path) as harness:
        yield harness


@pytest.fixture
def device(release: ReleaseHarness) -> ModelUpdater:
    """A device running a genuine, verified 1.0.0."""
    return release.install(RUNNING)


def assert_refused(result: OtaResult, reason: str, detail: str = "") -> None:
    assert (result.status, result.reason) == ("refused", reason), result
    assert detail in result.detail, result


def assert_still_running(release: ReleaseHarness, device: ModelUpdater, version: str = RUNNING) -> None:
    choice = device.boot()
    assert (choice.source, choice.version) == ("active", version)
    assert (
        hashlib.sha256(choice.path.read_bytes()).hexdigest()
        == hashlib.sha256(release.model_bytes(version)).hexdigest()
    )
    staging = release.base / "device" / "models" / "staging"
    assert not [p for p in staging.rglob("*") if p.is_file()], "nothing of the refused release is kept"


def _resign(path: Path, signer: CryptoSigner, *, bump: bool = False) -> None:
    metadata = Metadata.from_bytes(path.read_bytes())
    if bump:
        metadata.signed.version += 1
    metadata.sign(signer)  # replaces the genuine signature
    path.write_bytes(metadata.to_bytes(JSONSerializer(compact=True)))


def test_tampered_target_bytes(release: ReleaseHarness, device: ModelUpdater) -> None:
    published = release.publish("2.0.0")
    # The model and its compressed and patch forms (ADR 0027): the device falls back from each
    # form to the model file, and refuses that.
    forms = release.served_forms(published)
    assert forms, "the release publishes its forms"
    release.tamper(published)

    result = device.check_and_stage("detector")
    assert_refused(result, "tampered_target", "does not match expected hash")
    assert sum(device.form_failures.values()) == len(forms)
    assert_still_running(release, device)


def test_tampered_index(release: ReleaseHarness, device: ModelUpdater) -> None:
    release.publish("2.0.0")
    digest = release.repo.targets().targets["models/detector/index.json"].hashes["sha256"]
    index = release.repo_dir / "targets" / "models" / "detector" / f"{digest}.index.json"
    index.write_bytes(index.read_bytes().replace(b'"latest":"2.0.0"', b'"latest":"1.0.0"'))

    assert_refused(device.check_and_stage("detector"), "tampered_target", "does not match expected")
    assert_still_running(release, device)


def test_metadata_signed_with_a_wrong_key(release: ReleaseHarness, device: ModelUpdater) -> None:
    release.publish("2.0.0")
    _resign(release.metadata("timestamp.json"), CryptoSigner.generate_ed25519())

    assert_refused(device.check_and_stage("detector"), "bad_signature", "timestamp was signed by 0/1 keys")
    assert_still_running(release, device)


def test_expired_timestamp_freeze_attack(release: ReleaseHarness, device: ModelUpdater) -> None:
    # A frozen mirror serves metadata the hub signed two days ago with a one-day expiry:
    # genuine signatures, newer versions, but stale. The hub's clock is set back to sign it.
    release.clock.offset = -timedelta(days=2)  # the timestamp lives one day
    release.publish("2.0.0")

    assert_refused(device.check_and_stage("detector"), "expired_metadata", "timestamp.json is expired")
    assert_still_running(release, device)


def test_lower_version_rollback(release: ReleaseHarness, device: ModelUpdater) -> None:
    release.publish("0.9.0", allow_lower_version=True)

    result = device.check_and_stage("detector")
    assert_refused(result, "rollback")
    assert "older than the running 1.0.0" in result.detail
    assert_refused(device.check_and_stage("detector", version="0.9.0"), "rollback")
    assert_still_running(release, device)


def test_mix_and_match_snapshot_not_the_one_timestamp_names(
    release: ReleaseHarness, device: ModelUpdater
) -> None:
    release.publish("2.0.0")
    current = release.repo.snapshot().version
    older = release.metadata(f"{current - 1}.snapshot.json").read_bytes()
    release.metadata(f"{current}.snapshot.json").write_bytes(older)

    assert_refused(device.check_and_stage("detector"), "inconsistent_metadata", "LengthOrHashMismatchError")
    assert_still_running(release, device)


def test_mix_and_match_targets_not_the_one_snapshot_names(
    release: ReleaseHarness, device: ModelUpdater
) -> None:
    published = release.publish("2.0.0")
    version = published.targets_version
    older = release.metadata(f"{version - 1}.targets.json").read_bytes()
    release.metadata(f"{version}.targets.json").write_bytes(older)

    assert_refused(device.check_and_stage("detector"), "inconsistent_metadata", "LengthOrHashMismatchError")
    assert_still_running(release, device)


def test_replayed_older_timestamp(release: ReleaseHarness) -> None:
    genesis_timestamp = release.metadata("timestamp.json").read_bytes()
    device = release.install(RUNNING)
    release.metadata("timestamp.json").write_bytes(genesis_timestamp)

    assert_refused(device.check_and_stage("detector"), "inconsistent_metadata", "BadVersionNumberError")
    assert_still_running(release, device)


@pytest.mark.parametrize(
    "path",
    [
        "models/../../etc/x.onnx",
        "models/detector/9.0.0/../../../../../etc/cron.d/x.onnx",
        "/etc/roadside/x.onnx",
        "models/detector/9.0.0\\..\\..\\x.onnx",
        "models/detector/%2e%2e/%2e%2e/x.onnx",
        "models/other-model/9.0.0/x.onnx",
    ],
)
def test_target_path_escaping_its_folder(release: ReleaseHarness, device: ModelUpdater, path: str) -> None:
    # Signed with the genuine targets key: TUF accepts it, our policy must not.
    data = release.model_bytes("9.0.0")
    target = TargetFile.from_data(path, data, ["sha256"])
    target.unrecognized_fields["custom"] = {
        "name": "detector",
        "model_version": "9.0.0",
        "opset": 17,
        "input_shape": ["batch", 3, 320, 320],
        "labels": ["car", "truck", "pedestrian", "cyclist"],
        "min_agent_version": "0.1.0",
    }
    release.repo.record_target(target)

    assert_refused(device.check_and_stage("detector"), "unsafe_path")
    assert_still_running(release, device)
    assert not list(release.base.rglob("x.onnx"))


def test_oversize_download(release: ReleaseHarness, device: ModelUpdater) -> None:
    release.publish("2.0.0", data=release.model_bytes("2.0.0", size=64 * 1024))
    capped = release.device(max_bytes=16 * 1024)

    result = capped.check_and_stage("detector")
    assert_refused(result, "oversize")
    assert "16384-byte cap" in result.detail
    assert_still_running(release, capped)
    assert not list((release.base / "device").rglob("*.part"))


def test_model_needing_a_newer_agent(release: ReleaseHarness, device: ModelUpdater) -> None:
    release.publish("2.0.0", min_agent_version="0.2.0")

    assert_refused(device.check_and_stage("detector"), "incompatible_model")
    assert_still_running(release, device)


def test_root_signed_only_by_new_keys(release: ReleaseHarness, device: ModelUpdater) -> None:
    # Someone holding only new keys tries to take over: root v2 lacks the old threshold.
    root = Metadata.from_bytes(release.metadata("root.json").read_bytes())
    intruders = [CryptoSigner.generate_ed25519() for _ in range(2)]
    for keyid in list(root.signed.roles["root"].keyids):
        root.signed.revoke_key(keyid, "root")
    for signer in intruders:
        root.signed.add_key(signer.public_key, "root")
    root.signed.version += 1
    root.signatures.clear()
    for signer in intruders:
        root.sign(signer, append=True)
    release.metadata("2.root.json").write_bytes(root.to_bytes(JSONSerializer(compact=True)))

    assert_refused(device.check_and_stage("detector"), "bad_signature", "root was signed by 0/2 keys")
    assert_still_running(release, device)


def test_a_refusal_is_reported_in_the_log(
    release: ReleaseHarness, device: ModelUpdater, caplog: pytest.LogCaptureFixture
) -> None:
    release.publish("0.5.0", allow_lower_version=True)
    with caplog.at_level(logging.WARNING, logger="roadside.edge.ota.updater"):
        device.check_and_stage("detector")
    (record,) = [r for r in caplog.records if r.name == "roadside.edge.ota.updater"]
    assert record.args is not None
    assert "rollback" in record.getMessage()


class _EndlessBody(BaseHTTPRequestHandler):
    """Sends a body with no Content-Length, far longer than any cap, and counts what it sent."""

    protocol_version = "HTTP/1.0"
    sent = 0

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        chunk = b"\0" * 16384
        try:
            for _ in range(4096):  # 64 MiB, if nobody stops it
                self.wfile.write(chunk)
                type(self).sent += len(chunk)
        except OSError:
            return

    def log_message(self, format: str, *args: object) -> None:
        return


def test_streaming_cap_cuts_off_an_undeclared_body() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EndlessBody)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        fetcher = CappedFetcher(100_000)
        url = f"http://127.0.0.1:{server.server_address[1]}/model.onnx"
        with pytest.raises(DownloadLengthMismatchError, match="passed the 100000-byte cap"):
            fetcher.download_bytes(url, 1 << 30)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    # The socket buffers hold some more, but nowhere near the 64 MiB on offer.
    assert _EndlessBody.sent < 16 * 1024 * 1024
