"""An install that a restart interrupted is taken up again (issue 14, ``rollout-interrupt``).

The hub has the device's "accepted" ack and waits for its reports. An agent
killed mid-download used to forget the install and stay silent, and the
rollout's install timeout rolled the whole rollout back. The manager now keeps
the command in a journal until its last report; the next manager on the same
journal resumes it. The scripted updater of ``test_ota_command`` holds staging
open so the interruption lands where a kill would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from roadside.edge.ota.manager import OtaHost, OtaManager
from roadside.edge.settings import OtaConfig
from roadside.shared.schemas import Command, OtaReport
from tests.unit.test_ota_command import HeldRepository, Model

pytestmark = pytest.mark.timeout(20)

INSTALL = {"action": "install", "rollout_id": 7, "name": "detector", "version": "2.0.0", "shadow_s": 0}


def _manager(journal: Path, repo: HeldRepository, reports: list[OtaReport]) -> OtaManager[Model]:
    running = Model("1.0.0")
    host: OtaHost[Model] = OtaHost(
        lambda: running, lambda p, v: Model(v or "x"), lambda m: None, reports.append
    )
    return OtaManager(repo, host, OtaConfig(retries=0), journal=journal)


def _wait(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _interrupted(journal: Path) -> None:
    """An install accepted, then the agent stopped while the repository had not answered."""
    repo = HeldRepository()
    reports: list[OtaReport] = []
    manager = _manager(journal, repo, reports)
    assert manager.handle(Command(type="ota", args=INSTALL)).ok
    assert repo.entered.wait(5)
    assert journal.is_file()
    repo.release.set()  # the stop's cancel is seen as soon as staging returns
    manager.stop()
    assert [r.state for r in reports] == ["staging"]


def test_an_install_a_stop_interrupted_is_resumed_by_the_next_start(tmp_path: Path) -> None:
    journal = tmp_path / "ota" / "install.json"
    _interrupted(journal)
    assert journal.is_file()

    repo = HeldRepository()
    reports: list[OtaReport] = []
    repo.release.set()  # the repository answers at once now: it refuses the model
    manager = _manager(journal, repo, reports)
    assert manager.resume()

    assert _wait(lambda: [r.state for r in reports] == ["staging", "refused"]), reports
    assert all(r.rollout_id == 7 and r.version == "2.0.0" for r in reports)
    assert _wait(lambda: not journal.exists())  # its last report went out
    assert not _manager(journal, HeldRepository(), []).resume()
    manager.stop()


def test_an_install_that_ended_or_was_rolled_back_leaves_no_journal(tmp_path: Path) -> None:
    journal = tmp_path / "install.json"
    repo = HeldRepository()
    reports: list[OtaReport] = []
    manager = _manager(journal, repo, reports)
    assert manager.handle(Command(type="ota", args=INSTALL)).ok
    assert repo.entered.wait(5)
    assert manager.handle(Command(type="ota", args={**INSTALL, "action": "rollback"})).ok
    repo.release.set()
    assert _wait(lambda: manager.installing is None)
    assert not journal.exists()  # a rollback took over: nothing to take up at the next start
    manager.stop()


def test_an_unreadable_journal_is_discarded_and_starts_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "install.json"
    journal.write_text('{"action": "upgrade"}')
    repo = HeldRepository()
    reports: list[OtaReport] = []
    manager = _manager(journal, repo, reports)
    with caplog.at_level(logging.WARNING, logger="roadside.edge.ota.manager"):
        assert not manager.resume()
    assert not journal.exists()
    assert manager.installing is None
    assert reports == []
    assert "install journal" in caplog.text


def test_without_a_journal_nothing_is_resumed(tmp_path: Path) -> None:
    repo = HeldRepository()
    reports: list[OtaReport] = []
    manager = _manager(tmp_path / "never-written.json", repo, reports)
    assert not manager.resume()
    assert manager.installing is None
