"""The books of a chaos run: every record an agent created, and what became of it.

A record's identity is what the wire already carries: the device, the envelope
sequence number (the outbox row id, never reused) and the record's index in
its message. The harness collects identities on both ends (the agent's outbox
as messages are put, the hub's store as rows are written) and the hub's dead
letters (device and ``seq`` from the envelope header), and this module, with
no I/O, says whether they balance:

    created = stored + rejected (never stored) + dropped by a disk budget + lost

with ``lost`` and ``duplicated`` (an identity stored more than once) both
expected to be zero, and ``unexplained`` (stored but never created) too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

MessageId = tuple[str, int]  # (device, seq)


@dataclass(frozen=True, slots=True, order=True)
class RecordId:
    """One record: the device that made it, its message's sequence number, its index there."""

    device: str
    seq: int
    idx: int


@dataclass(frozen=True, slots=True)
class Books:
    """The balance of one run; ``balanced`` says created = stored + accounted for."""

    created: int
    stored: int
    lost: int
    duplicated: int
    dropped: int
    unexplained: int
    rejected: dict[str, int]
    lost_sample: tuple[RecordId, ...] = ()
    duplicated_sample: tuple[RecordId, ...] = ()

    @property
    def balanced(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.unexplained == 0

    def lines(self) -> list[str]:
        """The books as a reader wants them: one figure a line, then samples of what is wrong."""
        out = [
            f"created     {self.created:>9}",
            f"stored      {self.stored:>9}",
            f"dropped     {self.dropped:>9}  (by the outbox's disk budget, counted by the agent)",
        ]
        out += [f"rejected    {n:>9}  ({reason})" for reason, n in sorted(self.rejected.items())]
        out += [
            f"lost        {self.lost:>9}",
            f"duplicated  {self.duplicated:>9}",
            f"unexplained {self.unexplained:>9}  (stored, never created)",
        ]
        out += [f"  lost: {r.device} seq {r.seq} idx {r.idx}" for r in self.lost_sample]
        out += [f"  twice: {r.device} seq {r.seq} idx {r.idx}" for r in self.duplicated_sample]
        return out


@dataclass
class Ledger:
    """What both ends saw. Feed it as the run goes; ask for :meth:`books` at the end."""

    created_records: dict[MessageId, int] = field(default_factory=dict)
    stored_rows: Counter[RecordId] = field(default_factory=Counter)
    rejections: dict[MessageId, str] = field(default_factory=dict)
    drops: set[MessageId] = field(default_factory=set)
    sample_size: int = 5

    def created(self, device: str, seq: int, records: int) -> None:
        """The agent put message ``seq`` holding ``records`` records (seen once per seq)."""
        if records < 0:
            raise ValueError(f"a message holds no negative number of records ({records})")
        self.created_records[(device, seq)] = records

    def stored(self, record: RecordId) -> None:
        """The store holds ``record`` (call once per row found: repeats are duplicates)."""
        self.stored_rows[record] += 1

    def rejected(self, device: str, seq: int, reason: str) -> None:
        """The hub refused message ``seq`` (a dead letter); the first reason given is kept."""
        self.rejections.setdefault((device, seq), reason)

    def dropped(self, device: str, seq: int) -> None:
        """The agent's disk budget deleted message ``seq`` before it was sent."""
        self.drops.add((device, seq))

    def books(self) -> Books:
        expected = {
            RecordId(device, seq, idx)
            for (device, seq), n in self.created_records.items()
            for idx in range(n)
        }
        stored = set(self.stored_rows)
        stored_messages = {(r.device, r.seq) for r in stored}
        rejected: Counter[str] = Counter()
        dropped = 0
        lost: list[RecordId] = []
        for record in sorted(expected - stored):
            message = (record.device, record.seq)
            if message in self.drops:
                dropped += 1
            elif message in self.rejections and message not in stored_messages:
                rejected[self.rejections[message]] += 1
            else:
                lost.append(record)
        # A rejected copy of a message that is also stored (a redelivery the hub refused as a
        # replay) costs nothing; it is listed by reason so that every dead letter is accounted for.
        for message, reason in self.rejections.items():
            if message in stored_messages:
                rejected[f"{reason} (a copy; the original stored)"] += 1
        twice = sorted(r for r, n in self.stored_rows.items() if n > 1)
        return Books(
            created=len(expected),
            stored=len(stored & expected),
            lost=len(lost),
            duplicated=sum(self.stored_rows[r] - 1 for r in twice),
            dropped=dropped,
            unexplained=len(stored - expected),
            rejected=dict(rejected),
            lost_sample=tuple(lost[: self.sample_size]),
            duplicated_sample=tuple(twice[: self.sample_size]),
        )
