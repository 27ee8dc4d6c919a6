"""What the outbox drops when a new message would push it past its disk budget (pure).

The rule, ``DROP_LOWEST_PRIORITY_OLDEST``: drop the messages of the lowest priority first
and, within a priority, the oldest (lowest sequence number) first, and stop as soon as the
new message fits. The new message's own priority does not enter into it: a full outbox
keeps the newest data of each kind rather than refusing it.

:func:`choose_drops` decides; :class:`roadside.edge.outbox.sqlite.Outbox` reads the candidates from
its ``(priority, seq)`` index and deletes what it was told to.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class DropPolicy(enum.Enum):
    """The outbox's rule when full; the one there is, named so logs and docs can say which."""

    DROP_LOWEST_PRIORITY_OLDEST = "drop_lowest_priority_oldest"


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """What the drop rule knows of a queued message."""

    seq: int
    priority: int
    size: int


def drop_order(message: QueuedMessage) -> tuple[int, int]:
    """The order messages are dropped in: lowest priority first, oldest first within one."""
    return (message.priority, message.seq)


def bytes_to_free(used: int, incoming: int, budget: int) -> int:
    """How many bytes must go so that ``incoming`` more fit in ``budget``; 0 when they fit."""
    return max(0, used + incoming - budget)


def choose_drops(
    queued: Iterable[QueuedMessage], used: int, incoming: int, budget: int
) -> list[QueuedMessage]:
    """The messages to drop, in drop order, so that ``incoming`` bytes fit beside ``used``.

    Only as many as needed go. When dropping every candidate still frees too little, every
    candidate is returned: what the caller gave is all there is to drop.
    """
    need = bytes_to_free(used, incoming, budget)
    chosen: list[QueuedMessage] = []
    freed = 0
    for message in sorted(queued, key=drop_order):
        if freed >= need:
            break
        chosen.append(message)
        freed += message.size
    return chosen
