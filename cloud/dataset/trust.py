"""Which field labels may train a model: review, per-device trust, per-device caps (pure).

A device's hard example carries labels it made itself (the synthetic scene's ground
truth, or a labeller on the pole). A compromised device can send any labels, and with
the retraining loop on, a model trained on them is published and rolled out without a
human step. So a labelled sample from a device enters a dataset version only when

* an operator approved it (``roadside dataset review approve``), or
* its device is one an operator marked trusted (``roadside dataset trust set``),

and never when it was rejected. Labels admitted by trust alone (no person looked at
them) are capped: they may not take a device past ``max_device_share`` of a version's
labelled samples (imports and approved samples count in the total), so even a trusted
device that turns hostile cannot make up most of what a model learns from. Unlabelled samples are admitted as they are: they train nothing until a person
labels them (export, label, import). See docs/retraining-trust.md.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from roadside.shared.dataset import DatasetSample
from roadside.shared.errors import ConfigError

Review = Literal["approved", "rejected"]
HeldReason = Literal["needs_review", "device_cap"]

DEFAULT_MAX_DEVICE_SHARE: Final = 0.5


@dataclass(frozen=True)
class TrustPolicy:
    """The operator's choices for one dataset."""

    trusted: frozenset[str] = frozenset()
    max_device_share: float = DEFAULT_MAX_DEVICE_SHARE

    def __post_init__(self) -> None:
        check_share(self.max_device_share)


def check_share(share: float) -> float:
    if not (math.isfinite(share) and 0.0 < share <= 1.0):
        raise ConfigError(f"max device share must be in (0, 1], not {share}; 1 turns the cap off")
    return share


@dataclass(frozen=True)
class InboxEntry:
    """One sample waiting in the inbox, with its review decision (``None``: not reviewed)."""

    seq: int
    device_id: str
    sample: DatasetSample
    review: Review | None = None


@dataclass(frozen=True)
class Selection:
    """What the next version takes from the inbox, and what stays there and why."""

    taken: tuple[InboxEntry, ...]
    held: dict[HeldReason, tuple[InboxEntry, ...]] = field(default_factory=dict)
    rejected: tuple[InboxEntry, ...] = ()

    def labelled(self) -> int:
        return sum(1 for e in self.taken if e.sample.labels is not None)

    def held_counts(self) -> dict[str, int]:
        return {reason: len(entries) for reason, entries in self.held.items() if entries}


def admitted(entry: InboxEntry, policy: TrustPolicy) -> bool:
    """Whether a labelled entry may train: approved, or from a trusted device and not rejected."""
    if entry.review == "rejected":
        return False
    return entry.review == "approved" or entry.device_id in policy.trusted


def select_for_version(
    parent: Sequence[DatasetSample], entries: Iterable[InboxEntry], policy: TrustPolicy
) -> Selection:
    """The inbox entries the next version takes, given the parent version's samples."""
    rejected: list[InboxEntry] = []
    unlabelled: list[InboxEntry] = []
    review: list[InboxEntry] = []
    approved: list[InboxEntry] = []
    candidates: list[InboxEntry] = []  # admitted by trust alone: capped
    for entry in entries:
        if entry.review == "rejected":
            rejected.append(entry)
        elif entry.sample.labels is None:
            unlabelled.append(entry)
        elif entry.review == "approved":
            approved.append(entry)
        elif admitted(entry, policy):
            candidates.append(entry)
        else:
            review.append(entry)
    quota = device_quota([*parent, *(e.sample for e in approved)], candidates, policy.max_device_share)
    taken_labelled: list[InboxEntry] = [*approved]
    capped: list[InboxEntry] = []
    used: Counter[str] = Counter()
    for entry in candidates:  # oldest first: the newest wait for the next version
        if used[entry.device_id] < quota[entry.device_id]:
            used[entry.device_id] += 1
            taken_labelled.append(entry)
        else:
            capped.append(entry)
    taken = sorted([*unlabelled, *taken_labelled], key=lambda e: e.seq)
    return Selection(
        tuple(taken),
        {"needs_review": tuple(review), "device_cap": tuple(capped)},
        tuple(rejected),
    )


def device_quota(
    parent: Sequence[DatasetSample], candidates: Sequence[InboxEntry], max_share: float
) -> Counter[str]:
    """How many of each device's candidates fit under ``max_share`` of the version's labelled samples.

    ``parent`` holds what the version keeps in any case (the parent's samples, approved
    ones); what it holds of a device already stays. The greatest fixed point of "each device keeps at most ``max_share`` of the total, or
    what the parent already holds": lowering one device lowers the total, so iterate down.
    """
    check_share(max_share)
    labelled = [s for s in parent if s.labels is not None]
    in_parent: Counter[str] = Counter(s.origin.device_id for s in labelled if s.origin.device_id)
    others = sum(1 for s in labelled if not s.origin.device_id)  # imports, labelled by people
    offered: Counter[str] = Counter(e.device_id for e in candidates)
    count = {d: in_parent[d] + offered[d] for d in set(in_parent) | set(offered)}
    while True:
        limit = math.floor(max_share * (others + sum(count.values())) + 1e-9)
        lowered = {d: max(min(c, limit), in_parent[d]) for d, c in count.items()}
        if lowered == count:
            break
        count = lowered
    return Counter({d: count[d] - in_parent[d] for d in offered})


__all__ = [
    "DEFAULT_MAX_DEVICE_SHARE",
    "HeldReason",
    "InboxEntry",
    "Review",
    "Selection",
    "TrustPolicy",
    "admitted",
    "check_share",
    "device_quota",
    "select_for_version",
]
