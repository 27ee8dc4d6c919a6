"""The agent's latest OTA report, kept so that its heartbeats can repeat it (ADR 0031).

An ``ota`` message goes up once. When the hub refuses it (sealed while the
device's clock was wrong, garbled on the way) the rollout waits for a report
that never comes, times out and rolls back a device that switched fine. So the
heartbeat carries the latest report again for ``ota.report_repeat_s`` after it
was made, and the hub records it from whichever copy it accepts first. The
report is also kept on disk beside the install journal: a restart between a
lost report and the next heartbeat does not end the repeats.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from roadside.edge.control.files import write_private_atomic
from roadside.shared.schemas import OtaReport

log = logging.getLogger(__name__)


class LatestReport:
    """The newest OTA report and when it was made; :meth:`repeat` is what a heartbeat carries."""

    def __init__(
        self,
        path: Path | None,
        repeat_s: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``path``: where it is kept across restarts (None: in memory only)."""
        self.path = path
        self.repeat_s = repeat_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._report: OtaReport | None = None
        self._made = 0.0  # monotonic seconds
        self._load(wall)

    def note(self, report: OtaReport) -> None:
        """A report just sent: repeat this one from now on (it replaces any older one)."""
        with self._lock:
            self._report, self._made = report, self._monotonic()
        self._save(report)

    def repeat(self) -> OtaReport | None:
        """The report to repeat now; None when there is none or it is older than ``repeat_s``."""
        with self._lock:
            report, made = self._report, self._made
        if report is None or self._monotonic() - made > self.repeat_s:
            return None
        return report

    def _load(self, wall: Callable[[], float]) -> None:
        if self.path is None or not self.path.is_file():
            return
        try:
            report = OtaReport.model_validate_json(self.path.read_bytes())
            # Its age by the wall clock, the only clock a restart keeps; a clock set back counts as 0.
            age_s = max(0.0, wall() - self.path.stat().st_mtime)
        except (OSError, ValidationError) as exc:
            log.warning("latest OTA report %s unreadable, not repeated: %s", self.path, exc)
            return
        self._report, self._made = report, self._monotonic() - age_s

    def _save(self, report: OtaReport) -> None:
        if self.path is None:
            return
        try:  # atomic: a crash leaves the old report or the new one, never half of one
            write_private_atomic(self.path, report.model_dump_json(exclude_none=True).encode())
        except OSError as exc:  # a full disk: repeated until a restart, not after one
            log.warning("could not keep the latest OTA report in %s: %s", self.path, exc)
