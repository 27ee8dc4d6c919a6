"""The ``ota`` command's front door: argument checks and one install at a time.

The updater here is scripted (it blocks in ``check_and_stage`` until the test
lets it go) so the busy window can be held open; the real updater against a
real repository is exercised in ``tests/e2e/test_ota_agent.py``.
"""

from __future__ import annotations

import errno
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import pytest

from roadside.edge.control.handler import AgentSurface, CommandHandler
from roadside.edge.control.keys import KeyState, KeyStore
from roadside.edge.ota.manager import OtaHost, OtaManager
from roadside.edge.ota.updater import BootChoice, OtaResult, OtaStatus
from roadside.edge.settings import OtaConfig
from roadside.shared.errors import TransportError
from roadside.shared.keys import KeyPair
from roadside.shared.schemas import Command, OtaReport
from roadside.vision.yolo import Detections

pytestmark = pytest.mark.timeout(10)


@dataclass(frozen=True)
class Info:
    version: str
    path: Path


class Model:
    def __init__(self, version: str) -> None:
        self.info = Info(version, Path(f"/models/{version}.onnx"))

    def detect(self, frames: list[npt.NDArray[np.uint8]]) -> Sequence[Detections]:
        return [Detections.empty() for _ in frames]


class HeldRepository:
    """An updater whose staging waits for ``release``, then reports ``result``."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.result = OtaResult(OtaStatus.REFUSED, "detector", "2.0.0", "tampered", "hash mismatch")

    def check_and_stage(self, name: str, *, version: str | None = None) -> OtaResult:
        self.entered.set()
        assert self.release.wait(5)
        return self.result

    def staged_model(self, name: str, version: str) -> Path | None:
        return None

    def activate(self, version: str, *, name: str | None = None) -> OtaResult:
        raise AssertionError("nothing reaches activate in these tests")

    def rollback(self, *, to_shipped: bool = False) -> OtaResult:
        return OtaResult(OtaStatus.UNAVAILABLE, "detector", None, detail="nothing installed")

    def boot(self) -> BootChoice:
        raise AssertionError("not booted here")


@dataclass
class Rig:
    handler: CommandHandler
    manager: OtaManager[Model]
    repo: HeldRepository
    reports: list[OtaReport]

    def send(self, **args: object) -> tuple[bool, str]:
        ack = self.handler.handle(Command(type="ota", args=args))
        return ack.ok, ack.detail


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    reports: list[OtaReport] = []
    running = Model("1.0.0")
    repo = HeldRepository()
    host: OtaHost[Model] = OtaHost(
        lambda: running, lambda p, v: Model(v or "x"), lambda m: None, reports.append
    )
    manager = OtaManager(repo, host, OtaConfig(retries=0))
    pair = KeyPair.generate()
    handler = CommandHandler(
        cast(AgentSurface, _NoAgent()), KeyStore(tmp_path / "keys.json", "dev", pair), KeyState(pair)
    )
    handler.register("ota", manager.handle)
    try:
        yield Rig(handler, manager, repo, reports)
    finally:
        repo.release.set()
        manager.stop()


class _NoAgent:
    """The ota command never touches the agent surface; any call is a test failure."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"ota touched agent.{name}")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, "action: Field required"),
        ({"action": "upgrade"}, "action: Input should be 'install' or 'rollback'"),
        ({"action": "install", "name": "detector", "version": "../evil"}, "version: String should match"),
        ({"action": "install", "name": "detector", "version": "2.0.0", "shadow_s": -1}, "shadow_s"),
        ({"action": "install", "name": "detector", "version": "2.0.0", "extra": 1}, "extra: Extra inputs"),
        ({"action": "install", "name": "detector"}, "install needs a model name and a version"),
        ({"action": "install", "version": "2.0.0"}, "install needs a model name and a version"),
    ],
)
def test_invalid_arguments_are_nacked_and_start_nothing(
    rig: Rig, args: dict[str, object], expected: str
) -> None:
    ok, detail = rig.send(**args)
    assert not ok
    assert expected in detail
    assert rig.manager.installing is None
    assert rig.reports == []


def test_one_install_at_a_time(rig: Rig) -> None:
    assert rig.send(action="install", name="detector", version="2.0.0", rollout_id=7) == (True, "accepted")
    assert rig.repo.entered.wait(5)
    assert rig.manager.installing == ("detector", "2.0.0")
    # The same install again (a new command id: the hub retried) is fine; another version is not.
    assert rig.send(action="install", name="detector", version="2.0.0") == (
        True,
        "accepted (already installing)",
    )
    ok, detail = rig.send(action="install", name="detector", version="3.0.0")
    assert (ok, detail) == (False, "busy: installing detector 2.0.0; roll back or wait")

    rig.repo.release.set()
    thread = next(t for t in threading.enumerate() if t.name == "ota-install")
    thread.join(5)
    assert rig.manager.installing is None
    assert [(r.state, r.rollout_id, r.running_version) for r in rig.reports] == [
        ("staging", 7, "1.0.0"),
        ("refused", 7, "1.0.0"),
    ]
    assert rig.reports[-1].detail == "tampered: hash mismatch"
    # Free again.
    rig.repo.release.clear()
    assert rig.send(action="install", name="detector", version="3.0.0") == (True, "accepted")


def test_installing_the_running_version_is_active_at_once(rig: Rig) -> None:
    assert rig.send(action="install", name="detector", version="1.0.0") == (True, "accepted")
    thread = next((t for t in threading.enumerate() if t.name == "ota-install"), None)
    if thread is not None:
        thread.join(5)
    assert [(r.state, r.version, r.shadow) for r in rig.reports] == [("active", "1.0.0", None)]
    assert not rig.repo.entered.is_set()


def test_a_rollback_cancels_an_install_before_its_switch(rig: Rig) -> None:
    rig.send(action="install", name="detector", version="2.0.0", rollout_id=3)
    assert rig.repo.entered.wait(5)
    ok, detail = rig.send(action="rollback", rollout_id=3)
    assert (ok, detail) == (True, "install of 2.0.0 cancelled; 1.0.0 runs")
    rig.repo.release.set()
    thread = next((t for t in threading.enumerate() if t.name == "ota-install"), None)
    if thread is not None:
        thread.join(5)
    assert [(r.state, r.version, r.running_version) for r in rig.reports] == [
        ("staging", "2.0.0", "1.0.0"),
        ("rolled_back", "2.0.0", "1.0.0"),
    ]


def test_a_rollback_with_nothing_installed_is_refused_and_reported(rig: Rig) -> None:
    ok, detail = rig.send(action="rollback")
    assert not ok
    assert detail == "cannot roll back: unavailable: nothing installed"
    assert [(r.state, r.version) for r in rig.reports] == [("failed", "1.0.0")]


def test_a_command_id_is_answered_once(rig: Rig) -> None:
    command = Command(command_id=uuid.uuid4(), type="ota", args={"action": "rollback"})
    first = rig.handler.handle(command)
    assert rig.handler.handle(command) == first
    assert len(rig.reports) == 1


def test_a_rollback_of_a_model_that_never_ran_here_changes_nothing(rig: Rig) -> None:
    # The hub rolls back every device a failed rollout commanded, switched or not.
    ok, detail = rig.send(action="rollback", rollout_id=4, name="detector", version="2.0.0")
    assert ok
    assert detail == "2.0.0 is not running (1.0.0 is): nothing to roll back"
    assert [(r.state, r.version, r.running_version) for r in rig.reports] == [
        ("rolled_back", "2.0.0", "1.0.0")
    ]


class SilentRepository(HeldRepository):
    """Unreachable for its first ``silent`` tries, then refuses the target (an answer at last)."""

    def __init__(self, silent: int) -> None:
        super().__init__()
        self.silent = silent
        self.tries = 0

    def check_and_stage(self, name: str, *, version: str | None = None) -> OtaResult:
        self.tries += 1
        if self.tries <= self.silent:
            raise TransportError("connection refused")
        return self.result


def _install_with(repo: SilentRepository, config: OtaConfig) -> list[OtaReport]:
    reports: list[OtaReport] = []
    running = Model("1.0.0")
    host: OtaHost[Model] = OtaHost(
        lambda: running, lambda p, v: Model(v or "x"), lambda m: None, reports.append
    )
    manager = OtaManager(repo, host, config)
    try:
        assert manager.handle(Command(type="ota", args={"action": "install", "name": "detector",
                                                        "version": "2.0.0"})).ok  # fmt: skip
        thread = next(t for t in threading.enumerate() if t.name == "ota-install")
        thread.join(8)
        return reports
    finally:
        manager.stop()


def test_a_repository_back_within_the_retry_time_is_not_a_failed_install() -> None:
    """More tries than ``retries`` while ``retry_for_s`` lasts: a repository restart costs no install."""
    repo = SilentRepository(silent=8)
    reports = _install_with(repo, OtaConfig(retries=2, retry_base_s=0.01, retry_for_s=5.0))
    assert repo.tries == 9
    assert [r.state for r in reports] == ["staging", "refused"]  # it answered, and refused the target


def test_a_repository_silent_past_the_retry_time_fails_the_install_saying_how_long() -> None:
    repo = SilentRepository(silent=10_000)
    reports = _install_with(repo, OtaConfig(retries=2, retry_base_s=0.01, retry_for_s=0.5))
    assert [r.state for r in reports] == ["staging", "failed"]
    assert re.match(
        r"repository unreachable after \d+ tries in [01] s: connection refused", reports[-1].detail
    )
    assert repo.tries > 3  # the count alone would have stopped at 3


class FullDisk(SilentRepository):
    """Staging fails with "no space left on device" for the first ``silent`` tries."""

    def check_and_stage(self, name: str, *, version: str | None = None) -> OtaResult:
        self.tries += 1
        if self.tries <= self.silent:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.result


def test_a_disk_full_for_a_while_is_retried_like_a_silent_repository() -> None:
    repo = FullDisk(silent=3)
    reports = _install_with(repo, OtaConfig(retries=1, retry_base_s=0.01, retry_for_s=5.0))
    assert repo.tries == 4
    assert [r.state for r in reports] == ["staging", "refused"]


def test_a_disk_that_stays_full_fails_the_install_saying_so() -> None:
    reports = _install_with(FullDisk(silent=10_000), OtaConfig(retries=1, retry_base_s=0.01, retry_for_s=0.3))
    assert [r.state for r in reports] == ["staging", "failed"]
    assert reports[-1].detail.startswith("disk full while staging after ")


class FullWhileActivating(HeldRepository):
    """Stages at once; activating fails with "no space left on device" ``full`` times first."""

    def __init__(self, full: int, staged: Path) -> None:
        super().__init__()
        self.full, self.activations, self.staged = full, 0, staged
        self.result = OtaResult(OtaStatus.STAGED, "detector", "2.0.0")

    def check_and_stage(self, name: str, *, version: str | None = None) -> OtaResult:
        return self.result

    def staged_model(self, name: str, version: str) -> Path | None:
        return self.staged

    def activate(self, version: str, *, name: str | None = None) -> OtaResult:
        self.activations += 1
        if self.activations <= self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return OtaResult(OtaStatus.INSTALLED, "detector", version)


def test_a_disk_full_while_activating_is_retried_and_the_switch_happens(tmp_path: Path) -> None:
    """Chaos rollout-interrupt: a 5 s disk-full as the model pointer was written failed the
    install ("internal error: OSError") and rolled the rollout back."""
    repo = FullWhileActivating(2, tmp_path / "2.0.0.onnx")
    reports: list[OtaReport] = []
    running = Model("1.0.0")
    switched: list[Model] = []
    host: OtaHost[Model] = OtaHost(
        lambda: running, lambda p, v: Model(v or "x"), switched.append, reports.append
    )
    manager = OtaManager(repo, host, OtaConfig(retries=1, retry_base_s=0.01, retry_for_s=5.0))
    try:
        args = {"action": "install", "name": "detector", "version": "2.0.0", "shadow_s": 0, "min_frames": 0}
        assert manager.handle(Command(type="ota", args=args)).ok
        next(t for t in threading.enumerate() if t.name == "ota-install").join(8)
    finally:
        manager.stop()
    assert repo.activations == 3
    assert [r.state for r in reports] == ["staging", "shadow", "active"]
    assert [m.info.version for m in switched] == ["2.0.0"]
