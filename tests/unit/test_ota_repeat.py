"""A lost OTA report heals at the next heartbeat (issue 14, ADR 0031).

``bench.chaos --fault rollout-interrupt --seed 11``: a device's ``active`` report
was sealed while its clock was 10 minutes off, the hub refused it as stale, and
the device never said it again; the rollout timed out and rolled back a device
that had switched fine. The agent now keeps its latest report
(``LatestReport``) and each heartbeat carries it for ``ota.report_repeat_s``;
the hub reads it out of the health message like an ``ota`` message's, and the
controller writes each device's report once however many copies come.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from roadside.cloud.ingest.core import Accepted, IngestCore
from roadside.cloud.release.controller import RecordedReports
from roadside.edge.ota.latest import LatestReport
from roadside.edge.ota.manager import OtaHost, OtaManager
from roadside.edge.settings import OtaConfig
from roadside.shared.envelope import DeviceSealer, HubOpener
from roadside.shared.keys import KeyPair, PublicKeys
from roadside.shared.schemas import Command, Health, HealthMessage, OtaReport, decode_uplink, encode
from tests.unit.test_ota_command import HeldRepository, Model
from tests.unit.test_ota_resume import _wait

pytestmark = pytest.mark.timeout(20)


def report(state: str = "active", rollout_id: int | None = 7, version: str = "2.0.0") -> OtaReport:
    return OtaReport(rollout_id=rollout_id, name="detector", version=version, state=state)  # type: ignore[arg-type]


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# The agent keeps its latest report ------------------------------------------------------------


def test_the_latest_report_is_repeated_for_repeat_s_then_no_more() -> None:
    ticks = Ticks()
    latest = LatestReport(None, 60.0, monotonic=ticks)
    assert latest.repeat() is None
    latest.note(report("shadow"))
    latest.note(report("active"))
    assert latest.repeat() == report("active")  # the newest replaces the older
    ticks.now += 60.0
    assert latest.repeat() == report("active")
    ticks.now += 0.5
    assert latest.repeat() is None


def test_repeat_s_zero_turns_repeating_off() -> None:
    latest = LatestReport(None, 0.0, monotonic=time.monotonic)
    latest.note(report())
    time.sleep(0.01)
    assert latest.repeat() is None


def test_a_restart_goes_on_repeating_for_what_is_left_of_repeat_s(tmp_path: Path) -> None:
    path = tmp_path / "ota" / "latest-report.json"
    LatestReport(path, 600.0).note(report("active"))
    assert path.is_file()
    made = path.stat().st_mtime
    ticks = Ticks()

    restarted = LatestReport(path, 600.0, monotonic=ticks, wall=lambda: made + 500.0)
    assert restarted.repeat() == report("active")
    ticks.now += 100.5  # 600.5 s after it was made
    assert restarted.repeat() is None
    # A report made longer ago than repeat_s is not repeated after a restart at all.
    assert LatestReport(path, 600.0, wall=lambda: made + 601.0).repeat() is None
    # A clock set back behind the report counts it as just made, not as never.
    assert LatestReport(path, 600.0, wall=lambda: made - 3600.0).repeat() == report("active")


def test_an_unreadable_kept_report_is_not_repeated(tmp_path: Path) -> None:
    path = tmp_path / "latest-report.json"
    path.write_text('{"state": "active"}')
    assert LatestReport(path, 600.0).repeat() is None


def test_a_report_that_cannot_be_kept_on_disk_is_still_repeated(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    latest = LatestReport(blocked / "latest-report.json", 600.0)  # its folder is a file: every write fails
    latest.note(report())
    assert latest.repeat() == report()


def test_every_report_the_manager_sends_becomes_the_one_to_repeat(tmp_path: Path) -> None:
    running = Model("2.0.0")
    sent: list[OtaReport] = []
    host: OtaHost[Model] = OtaHost(lambda: running, lambda p, v: Model(v or "x"), lambda m: None, sent.append)
    latest = LatestReport(tmp_path / "latest-report.json", 600.0)
    manager = OtaManager(HeldRepository(), host, OtaConfig(), latest=latest)
    assert manager.repeated_report() is None
    install = {"action": "install", "rollout_id": 7, "name": "detector", "version": "2.0.0"}
    assert manager.handle(Command(type="ota", args=install)).ok

    assert _wait(lambda: [r.state for r in sent] == ["active"])  # already running that version
    assert manager.repeated_report() == sent[-1]
    assert LatestReport(tmp_path / "latest-report.json", 600.0).repeat() == sent[-1]  # and after a restart
    manager.stop()


# The hub reads it out of the heartbeat --------------------------------------------------------

HUB = KeyPair.generate()
DEV = KeyPair.generate()
NOW = int(datetime(2026, 11, 23, 10, tzinfo=UTC).timestamp() * 1000)


def health() -> Health:
    return Health(
        ts=datetime(2026, 11, 23, 10, tzinfo=UTC),
        uptime_s=5.0,
        model_version="2.0.0",
        provider="CPUExecutionProvider",
        outbox_backlog=0,
    )


def test_a_heartbeat_hands_its_repeated_report_to_the_rollout_listener() -> None:
    def keys(device_id: str, kid: str) -> PublicKeys | None:
        return DEV.public() if (device_id, kid) == ("dev-1", DEV.kid) else None

    core = IngestCore(HubOpener([HUB], keys), lambda _device: "main-st")
    sealer = DeviceSealer("dev-1", DEV, HUB.public())
    topic = "roadside/v1/main-st/dev-1/health"

    carrying = core.accept(
        topic, sealer.seal("health", 1, encode(HealthMessage(health=health(), ota=report())), NOW), NOW
    )
    assert isinstance(carrying, Accepted)
    assert carrying.ota == report()
    assert carrying.batch.health == health()  # stored as any heartbeat

    plain = core.accept(topic, sealer.seal("health", 2, encode(HealthMessage(health=health())), NOW), NOW)
    assert isinstance(plain, Accepted)
    assert plain.ota is None


def test_a_heartbeat_without_the_field_still_decodes() -> None:
    """What agents before ADR 0031 send."""
    body = encode(HealthMessage(health=health()))
    assert b'"ota"' not in body
    message = decode_uplink("health", body)
    assert isinstance(message, HealthMessage)
    assert message.ota is None


# The controller writes each device's report once ----------------------------------------------


def test_repeated_copies_are_written_once_and_a_new_state_again() -> None:
    recorded = RecordedReports()
    first = [("dev-1", report("active")), ("dev-1", report("active")), ("dev-2", report("shadow"))]
    fresh = recorded.unseen(first)
    assert fresh == [("dev-1", report("active")), ("dev-2", report("shadow"))]
    assert recorded.unseen(first) == fresh  # nothing is skipped until it was written
    recorded.note(fresh)

    assert recorded.unseen(first) == []
    later = [("dev-2", report("active")), ("dev-1", report("active", rollout_id=8))]
    assert recorded.unseen(later) == later  # a new state, or another rollout's report, is news


def test_the_memory_of_written_reports_is_bounded() -> None:
    recorded = RecordedReports(max_devices=2)
    recorded.note([("dev-1", report()), ("dev-2", report()), ("dev-3", report())])
    # dev-1 was forgotten: its next copy is written again (and changes nothing there).
    assert recorded.unseen([("dev-1", report()), ("dev-3", report())]) == [("dev-1", report())]


def test_the_kept_report_file_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "latest-report.json"
    latest = LatestReport(path, 600.0)
    latest.note(report("shadow"))
    latest.note(report("active"))
    assert OtaReport.model_validate_json(path.read_bytes()) == report("active")
    assert sorted(os.listdir(tmp_path)) == ["latest-report.json"]  # no partial file left behind
