"""Which frames are hard examples: the pure decision, per frame, with a bandwidth budget.

A frame is a candidate for one or more reasons, each scored in [0, 1]:

``low_confidence``  a detection in the uncertain band (default 0.4–0.6): 0.5 at the band's
                    edges, 1 at its middle, the most uncertain detection counts.
``rare_class``      a class under ``rare_class_share`` of the stream's recent detections
                    (once ``min_history`` detections are known): rarer scores higher.
``disagreement``    a shadow model was run and its detections differ from the running
                    model's: 1 − F1 of a greedy same-class IoU match.

The frame's score is ``1 − Π(1 − cᵢ)``: more reasons make a frame harder. A candidate
is then held to two limits: ``min_interval_s`` between samples of one stream (consecutive
frames of a scene are near copies), and a token bucket of bytes per hour shared by all
streams (see :class:`BudgetPolicy` for what is dropped when it runs low).

No clock is read here: callers pass the frame's time, so a replay decides the same.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from roadside.shared.schemas import SampleReason
from roadside.vision.yolo import Detections


class BudgetPolicy(enum.Enum):
    """What the selector does when the byte budget runs low.

    ``SHED_LOW_SCORE_FIRST``: frames are never held back to wait for budget (that would
    pin images in memory); a candidate is taken now or dropped. As the bucket drains, the
    score a candidate needs rises linearly from 0 (bucket full) to 1 (bucket holds one
    sample), so the last bytes of a window go to the hardest frames. A bucket with less
    than one expected sample in it drops every candidate (``OVER_BUDGET``).
    """

    SHED_LOW_SCORE_FIRST = "shed_low_score_first"


class Verdict(enum.Enum):
    SELECTED = "selected"
    NOT_HARD = "not_hard"  # no reason applies
    TOO_SOON = "too_soon"  # this stream sent a sample less than min_interval_s ago
    OVER_BUDGET = "over_budget"  # BudgetPolicy dropped it


@dataclass(frozen=True, slots=True)
class SelectorPolicy:
    budget_bytes_per_hour: int = 20_000_000
    burst_s: float = 600.0  # the bucket holds this many seconds of budget
    min_interval_s: float = 10.0
    confidence_band: tuple[float, float] = (0.4, 0.6)
    rare_class_share: float = 0.05
    history: int = 2000  # detections remembered per stream for class shares
    min_history: int = 100  # no class is called rare before this many detections
    disagreement_min: float = 0.25  # 1 − F1 of running vs shadow detections
    match_iou: float = 0.5
    expected_sample_bytes: int = 60_000  # first guess; learnt from what is really sent

    def __post_init__(self) -> None:
        low, high = self.confidence_band
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"confidence band must satisfy 0 <= low < high <= 1, got {self.confidence_band}")
        if self.budget_bytes_per_hour <= 0 or self.burst_s <= 0 or self.expected_sample_bytes <= 0:
            raise ValueError("budget, burst and expected sample size must be positive")


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reasons: tuple[SampleReason, ...] = ()
    score: float = 0.0
    reserved_bytes: int = 0  # taken from the bucket; settle or refund it once the sample is sent or not

    @property
    def selected(self) -> bool:
        return self.verdict is Verdict.SELECTED


@dataclass
class _StreamHistory:
    classes: deque[str]
    counts: Counter[str] = field(default_factory=Counter)
    last_selected: float | None = None


class HardExampleSelector:
    """Per-frame decisions; not thread-safe (one caller, or the caller's lock)."""

    policy_on_budget = BudgetPolicy.SHED_LOW_SCORE_FIRST

    def __init__(self, policy: SelectorPolicy) -> None:
        self.policy = policy
        self.capacity = max(
            float(policy.expected_sample_bytes), policy.budget_bytes_per_hour * policy.burst_s / 3600.0
        )
        self.tokens = self.capacity
        self.expected_bytes = float(policy.expected_sample_bytes)
        self._refilled_at: float | None = None
        self._streams: dict[str, _StreamHistory] = {}
        self.verdicts: Counter[Verdict] = Counter()

    def decide(
        self,
        stream: str,
        now: float,
        found: Detections,
        labels: Sequence[str],
        shadow: Detections | None = None,
    ) -> Decision:
        """Whether this frame goes up, and why; bytes are reserved when it does."""
        history = self._history(stream)
        names = [_name(labels, int(c)) for c in found.class_ids]
        reasons, components = self._reasons(history, found, names, shadow)
        self._remember(history, names)
        decision = self._admit(history, now, reasons, components)
        self.verdicts[decision.verdict] += 1
        return decision

    def settle(self, reserved: int, actual: int) -> None:
        """The sample went out at ``actual`` bytes: correct the bucket and the size estimate."""
        self.tokens = min(self.capacity, self.tokens + reserved - actual)
        self.expected_bytes = 0.8 * self.expected_bytes + 0.2 * actual

    def refund(self, reserved: int) -> None:
        """The sample was not sent after all (redaction unavailable, dropped, too large)."""
        self.tokens = min(self.capacity, self.tokens + reserved)

    # -- reasons -----------------------------------------------------------------

    def _reasons(
        self, history: _StreamHistory, found: Detections, names: list[str], shadow: Detections | None
    ) -> tuple[list[SampleReason], list[float]]:
        reasons: list[SampleReason] = []
        components: list[float] = []
        for reason, component in (
            ("low_confidence", self._low_confidence(found)),
            ("rare_class", self._rarity(history, names)),
            ("disagreement", None if shadow is None else self._disagreement(found, shadow)),
        ):
            if component is not None:
                reasons.append(reason)  # type: ignore[arg-type]  # the literals above are SampleReason
                components.append(component)
        return reasons, components

    def _low_confidence(self, found: Detections) -> float | None:
        low, high = self.policy.confidence_band
        scores = found.scores[(found.scores >= low) & (found.scores <= high)]
        if scores.size == 0:
            return None
        mid, half = (low + high) / 2, (high - low) / 2
        closeness = 1.0 - float(np.min(np.abs(scores - mid))) / half
        return 0.5 + 0.5 * closeness

    def _rarity(self, history: _StreamHistory, names: list[str]) -> float | None:
        seen = len(history.classes)
        if seen < self.policy.min_history or not names:
            return None
        share = min(history.counts[n] / seen for n in set(names))
        if share >= self.policy.rare_class_share:
            return None
        return 0.5 + 0.5 * (1.0 - share / self.policy.rare_class_share)

    def _disagreement(self, found: Detections, shadow: Detections) -> float | None:
        total = len(found) + len(shadow)
        if total == 0:
            return None
        matched = _greedy_matches(found, shadow, self.policy.match_iou)
        disagreement = 1.0 - 2.0 * matched / total
        return disagreement if disagreement >= self.policy.disagreement_min else None

    # -- limits ------------------------------------------------------------------

    def _admit(
        self, history: _StreamHistory, now: float, reasons: list[SampleReason], components: list[float]
    ) -> Decision:
        self._refill(now)
        if not reasons:
            return Decision(Verdict.NOT_HARD)
        score = 1.0 - float(np.prod([1.0 - c for c in components]))
        found = Decision(Verdict.NOT_HARD, tuple(reasons), round(score, 6))
        last = history.last_selected
        if last is not None and now - last < self.policy.min_interval_s:
            return Decision(Verdict.TOO_SOON, found.reasons, found.score)
        need = self.expected_bytes
        if self.tokens < need or score < self._required_score(need):
            return Decision(Verdict.OVER_BUDGET, found.reasons, found.score)
        reserved = round(need)
        self.tokens -= reserved
        history.last_selected = now
        return Decision(Verdict.SELECTED, found.reasons, found.score, reserved)

    def _required_score(self, need: float) -> float:
        if self.capacity <= need:
            return 0.0
        fill = (self.tokens - need) / (self.capacity - need)
        return max(0.0, 1.0 - fill)

    def _refill(self, now: float) -> None:
        if self._refilled_at is None:
            self._refilled_at = now
            return
        elapsed = now - self._refilled_at
        if elapsed <= 0:  # several streams' clocks interleave: time never runs backwards here
            return
        rate = self.policy.budget_bytes_per_hour / 3600.0
        self.tokens = min(self.capacity, self.tokens + elapsed * rate)
        self._refilled_at = now

    def _history(self, stream: str) -> _StreamHistory:
        history = self._streams.get(stream)
        if history is None:
            history = _StreamHistory(deque(maxlen=self.policy.history))
            self._streams[stream] = history
        return history

    @staticmethod
    def _remember(history: _StreamHistory, names: list[str]) -> None:
        for name in names:
            if len(history.classes) == history.classes.maxlen:
                history.counts[history.classes[0]] -= 1
            history.classes.append(name)
            history.counts[name] += 1


def _name(labels: Sequence[str], class_id: int) -> str:
    return labels[class_id] if 0 <= class_id < len(labels) else f"class{class_id}"


def _iou_matrix(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64)[:, None, :], b.astype(np.float64)[None, :, :]
    w = np.clip(np.minimum(a64[..., 2], b64[..., 2]) - np.maximum(a64[..., 0], b64[..., 0]), 0, None)
    h = np.clip(np.minimum(a64[..., 3], b64[..., 3]) - np.maximum(a64[..., 1], b64[..., 1]), 0, None)
    inter = w * h
    area_a = (a64[..., 2] - a64[..., 0]) * (a64[..., 3] - a64[..., 1])
    area_b = (b64[..., 2] - b64[..., 0]) * (b64[..., 3] - b64[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _greedy_matches(a: Detections, b: Detections, min_iou: float) -> int:
    """Same-class pairs matched best IoU first, each detection used once."""
    if len(a) == 0 or len(b) == 0:
        return 0
    ious = _iou_matrix(a.boxes, b.boxes)
    ious[a.class_ids[:, None] != b.class_ids[None, :]] = 0.0
    matched = 0
    while True:
        i, j = np.unravel_index(int(np.argmax(ious)), ious.shape)
        if ious[i, j] < min_iou:
            return matched
        matched += 1
        ious[i, :] = 0.0
        ious[:, j] = 0.0
