"""Re-driving dead letters: run kept messages through ingest again, once the cause is fixed.

A letter goes through the same checks as on arrival (key, tag, schema, the
sequence numbers the store already holds), judged at the time it first arrived,
so a message refused only because its device was not yet enrolled, or the
store refused it, can be stored now, while a forgery or a replay is refused
again. What was stored is written with the same idempotent keys as live
ingest: re-driving twice stores nothing twice.

Follow-up work that describes the past (command acks, OTA reports) is not
replayed into live rollouts: the row records that it was stored, and the
rollout has long moved on. Hard examples go to the dataset inbox like live
ones, through ``on_stored``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from roadside.cloud.ingest.core import Accepted, IngestCore, Rejection
from roadside.cloud.ingest.deadletter import DeadLetterStore
from roadside.cloud.storage.base import TimeSeriesStore
from roadside.shared.envelope import ReplayWindow
from roadside.shared.limits import MAX_WIRE_INT

log = logging.getLogger(__name__)


@dataclass
class RedriveReport:
    stored: list[int] = field(default_factory=list)
    duplicate: list[int] = field(default_factory=list)  # already stored: a replay, or re-driven before
    rejected: dict[int, str] = field(default_factory=dict)  # id -> reason, still refused
    missing: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "stored": len(self.stored),
            "duplicate": len(self.duplicate),
            "rejected": dict(Counter(self.rejected.values())),
            "missing": len(self.missing),
        }


class Redriver:
    def __init__(
        self,
        letters: DeadLetterStore,
        core: IngestCore,
        store: TimeSeriesStore,
        on_stored: Callable[[list[Accepted]], None] | None = None,
    ) -> None:
        self.letters = letters
        self.core = core
        self.store = store
        self.on_stored = on_stored
        self._restored: set[str] = set()

    def redrive(self, letter_ids: Iterable[int]) -> RedriveReport:
        """Re-run ingest on each letter; record the outcome on it. Store outages raise."""
        report = RedriveReport()
        for letter_id in letter_ids:
            letter = self.letters.get(letter_id)
            if letter is None:
                report.missing.append(letter_id)
                continue
            if letter.device_id is not None:
                self._restore_window(letter.device_id)
            outcome = self.core.accept(letter.topic, letter.payload, letter.received_ms)
            if isinstance(outcome, Rejection):
                if outcome.reason == "replay":
                    report.duplicate.append(letter_id)
                    self.letters.mark_redriven(letter_id, "duplicate")
                else:
                    report.rejected[letter_id] = outcome.reason
                    self.letters.mark_redriven(letter_id, f"rejected: {outcome.reason}")
                continue
            self._store(outcome)
            report.stored.append(letter_id)
            self.letters.mark_redriven(letter_id, "stored")
        log.info("re-drove dead letters: %s", report.summary())
        return report

    def _store(self, accepted: Accepted) -> None:
        self.store.write([accepted.batch])
        if self.on_stored is not None and accepted.samples:
            self.on_stored([accepted])
        self.core.opener.commit(accepted.header)

    def _restore_window(self, device_id: str) -> None:
        if device_id in self._restored:
            return
        # Every number the store holds, not just the live window: a letter far older than the
        # device's newest message is new to the store unless the store has that very number.
        window = ReplayWindow(size=MAX_WIRE_INT)
        for seq in self.store.recent_sequences(device_id, MAX_WIRE_INT):
            window.commit(seq)
        self.core.opener.windows[device_id] = window
        self._restored.add(device_id)
