"""A background thread that applies the retention policy to the store every few minutes.

The hub starts one ``RetentionJob`` beside ingest and the API. Each run calls the store's
``apply_retention``: SQLite rolls up and deletes there; InfluxDB only checks that its
retention policies and continuous queries (or buckets and tasks) are still in place, since the
server does the work. A failed run is logged and counted and the next one tries again: an
unreachable store or a full disk must never take the hub down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, Protocol, runtime_checkable

from roadside.cloud.storage.retention import RetentionPolicy, RetentionReport

log = logging.getLogger(__name__)

THREAD_NAME: Final = "retention"
_JOIN_TIMEOUT_S: Final = 30.0


@runtime_checkable
class RetentionTarget(Protocol):
    """A store that can enforce a retention policy (``SqliteStore``, ``InfluxV1Store``, ``InfluxV2Store``)."""

    def apply_retention(self, policy: RetentionPolicy, now: datetime) -> RetentionReport: ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


class RetentionJob:
    """Runs ``store.apply_retention(policy, now)`` at start and then every ``interval_s``.

    ``start`` and ``stop`` may each be called once; ``stop`` wakes the thread at once (an
    Event, not a sleep) and waits for a run in progress to finish.
    """

    def __init__(
        self,
        store: RetentionTarget,
        policy: RetentionPolicy,
        interval_s: float = 300.0,
        *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        self._store = store
        self._policy = policy
        self._interval_s = interval_s
        self._clock = clock
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=THREAD_NAME, daemon=True)
        self._lock = threading.Lock()
        self.runs = 0
        self.errors = 0
        self.last_report: RetentionReport | None = None
        self.last_error: str | None = None
        # Set after every run, failed or not, so a caller can wait for one instead of sleeping.
        self.ran = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = _JOIN_TIMEOUT_S) -> None:
        """Stop after the run in progress, if any; harmless if never started."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("retention run still busy %.0f s after stop; leaving it to finish", timeout_s)

    def run_once(self) -> RetentionReport | None:
        """One run now, in the caller's thread; the report, or ``None`` if it failed."""
        started = time.monotonic()
        try:
            report = self._store.apply_retention(self._policy, self._clock())
        except Exception as exc:  # whatever the store raises, the hub keeps running
            with self._lock:
                self.runs += 1
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            self.ran.set()
            log.exception(
                "retention run failed (%s so far); retrying in %.0f s", self.errors, self._interval_s
            )
            return None
        with self._lock:
            self.runs += 1
            self.last_report, self.last_error = report, None
        self.ran.set()
        _log_report(report, time.monotonic() - started)
        return report

    def _loop(self) -> None:
        # First run at start: a hub that restarts often must still enforce retention.
        while not self._stopping.is_set():
            self.run_once()
            if self._stopping.wait(self._interval_s):
                break


def _log_report(report: RetentionReport, took_s: float) -> None:
    rolled, deleted = sum(report.rolled.values()), sum(report.deleted.values())
    if rolled or deleted:
        log.info("retention: %s rollup rows written, %s rows deleted in %.2f s", rolled, deleted, took_s)
    else:
        log.debug("retention: nothing to do (%.2f s, server side: %s)", took_s, report.server_side)
