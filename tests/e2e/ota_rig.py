"""What the OTA end-to-end tests share: a model repository with real detectors, and a hub-side tap.

``OtaRig`` publishes variants of the shipped detector (same weights, their own
``model_version`` metadata, so each has its own hash) to a TUF repository
served over HTTP on loopback, sends ``ota`` commands through the hub, and
records every OTA report, count record and health report the hub accepts.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bench.chaos.release import detector_variant
from roadside.cloud.ingest.core import Accepted, Rejection
from roadside.cloud.release.repository import PublishedModel, describe_onnx
from roadside.edge.agent import Agent
from roadside.edge.settings import load_agent_settings
from roadside.shared.bundle import EnrollmentBundle, ModelRepoAnchor
from roadside.shared.schemas import OtaReport
from tests.component.test_tuf_repository import ReleaseHarness, release_harness
from tests.e2e.conftest import Loop

SHIPPED_VERSION = "0.1.0"  # the model_version in models/detector.onnx


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


class OtaRig:
    def __init__(self, loop: Loop, release: ReleaseHarness, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loop = loop
        self.release = release
        self._lock = threading.Lock()
        self.reports: list[tuple[str, OtaReport]] = []  # (device, report) of ota messages, as they came
        self.repeated: list[tuple[str, OtaReport]] = []  # ... and of those a heartbeat repeated (ADR 0031)
        self.counts: list[tuple[str, str]] = []  # (device, model_version) of each count record
        self.health: list[tuple[str, str]] = []  # (device, model_version) of each health report
        core = loop.hub.ingest.core
        accept = core.accept

        def tapped(topic: str, payload: bytes, now_ms: int) -> Accepted | Rejection:
            result = accept(topic, payload, now_ms)
            if isinstance(result, Accepted):
                device = result.header.device_id
                with self._lock:
                    if result.ota is not None:
                        kept = self.reports if result.header.kind == "ota" else self.repeated
                        kept.append((device, result.ota))
                    self.counts += [(device, version) for version in result.batch.counts.model_version]
                    if result.batch.health is not None:
                        self.health.append((device, result.batch.health.model_version))
            return result

        monkeypatch.setattr(core, "accept", tapped)

    @property
    def url(self) -> str:
        return self.release.server.url

    def anchor(self) -> ModelRepoAnchor:
        return ModelRepoAnchor(url=self.url, root_json=self.release.first_root.decode())

    def with_anchor(self, bundle: EnrollmentBundle) -> EnrollmentBundle:
        return bundle.model_copy(update={"model_repo": self.anchor()})

    def publish(self, version: str) -> PublishedModel:
        source = detector_variant(self.release.base / "build" / version / "detector.onnx", version)
        manifest = describe_onnx(source, "detector", version)
        return self.release.repo.add_model(source, manifest=manifest, min_agent_version="0.1.0")

    def sha256(self, version: str) -> str:
        path = self.release.base / "build" / version / "detector.onnx"
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def send(self, device: str, timeout: float = 15.0, **args: Any) -> tuple[bool, str]:
        pending = self.loop.hub.commands.send(device, "ota", args)
        ack = self.loop.hub.commands.wait(pending.command.command_id, timeout)
        assert ack is not None, f"no ack for ota {args}"
        return ack.ok, ack.detail

    def states(self, device: str, version: str | None = None) -> list[str]:
        with self._lock:
            return [r.state for d, r in self.reports if d == device and version in (None, r.version)]

    def repeats(self, device: str) -> list[OtaReport]:
        """The OTA reports the device's heartbeats carried, as they came."""
        with self._lock:
            return [r for d, r in self.repeated if d == device]

    def last(self, device: str) -> OtaReport:
        with self._lock:
            return [r for d, r in self.reports if d == device][-1]

    def wait_state(self, device: str, state: str, timeout: float = 60.0) -> OtaReport:
        assert wait_for(lambda: state in self.states(device), timeout), self.states(device)
        with self._lock:
            return next(r for d, r in self.reports if d == device and r.state == state)

    def counted_with(self, device: str, version: str) -> int:
        with self._lock:
            return sum(1 for d, v in self.counts if (d, v) == (device, version))

    def health_with(self, device: str, version: str) -> int:
        with self._lock:
            return sum(1 for d, v in self.health if (d, v) == (device, version))


def agent_with_ota(tmp_path: Path, bundle: EnrollmentBundle, seed: int = 3, **ota: Any) -> Agent:
    """An in-process agent on a synthetic camera, OTA on (from the bundle's anchor), shadowing every
    batch; ``ota``: more OTA settings."""
    settings = load_agent_settings(
        None,
        bundle=tmp_path / "unused.json",
        sources=[{"type": "synthetic", "name": "cam0", "seed": seed, "fps": 10.0, "realtime": True}],
        interval_s=1,
        heartbeat_s=1.0,
        outbox={"path": str(tmp_path / bundle.device_id / "outbox.db")},
        ota={"shadow_every": 1, "retry_base_s": 0.05, **ota},
    )
    agent = Agent.from_settings(settings, bundle)
    agent.start()
    assert wait_for(lambda: agent.uplink.connected, 15)
    return agent


@contextmanager
def ota_rig(loop: Loop, base: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OtaRig]:
    with release_harness(base) as release:
        yield OtaRig(loop, release, monkeypatch)
