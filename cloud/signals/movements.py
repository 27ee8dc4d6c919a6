"""Turning-movement counts in the traffic engineer's layout (pure).

An approach is named for the leg of the junction vehicles *enter from*
(``north``: they arrive from the north, heading south). The movement is
read off the exit leg: the opposite leg is ``through``, the leg to the
driver's left ``left``, to the right ``right``, the same leg ``u_turn``.
Approaches with other names than the compass points (``nb``, ``main-east``)
get ``unclassified`` and keep their exit leg in the record.

:func:`wide_rows` lays counts out one row per interval with a column per
approach × class × movement (``north_car_left``), the shape of common
15-minute TMC files (Miovision, City of Toronto open data).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from roadside.cloud.storage.base import bucket_start

Movement = Literal["left", "through", "right", "u_turn", "unclassified"]
MOVEMENTS: Final[tuple[Movement, ...]] = ("left", "through", "right", "u_turn")
_BEARING: Final = {"north": 0, "n": 0, "east": 90, "e": 90, "south": 180, "s": 180, "west": 270, "w": 270}


def movement_of(entry: str, exit_: str) -> Movement:
    """The movement from the leg ``entry`` to the leg ``exit_`` (right-hand traffic)."""
    a, b = _BEARING.get(entry.lower()), _BEARING.get(exit_.lower())
    if a is None or b is None:
        return "unclassified"
    turn = (b - a) % 360
    return {0: "u_turn", 90: "left", 180: "through", 270: "right"}[turn]  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class MovementCount:
    interval_start: datetime
    interval_s: int
    approach: str
    exit: str
    movement: Movement
    cls: str
    count: int


def rebin(
    records: Iterable[tuple[datetime, int, str, str, str, int]], interval_s: int
) -> list[MovementCount]:
    """``(interval_start, interval_s, entry, exit, cls, count)`` summed into ``interval_s`` bins.

    Records of a longer interval than asked are kept at their own length.
    """
    sums: dict[tuple[datetime, int, str, str, str], int] = defaultdict(int)
    for start, length, entry, exit_, cls, count in records:
        width = max(interval_s, length)
        sums[(bucket_start(start, width), width, entry, exit_, cls)] += count
    return [
        MovementCount(start, width, entry, exit_, movement_of(entry, exit_), cls, n)
        for (start, width, entry, exit_, cls), n in sorted(sums.items())
    ]


def wide_rows(counts: Iterable[MovementCount]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of the one-row-per-interval layout; absent movements are 0."""
    counts = list(counts)
    approaches = sorted({c.approach for c in counts})
    classes = sorted({c.cls for c in counts})
    extra = sorted({f"{c.approach}_{c.cls}_to_{c.exit}" for c in counts if c.movement == "unclassified"})
    compass = [a for a in approaches if a.lower() in _BEARING]
    columns = [f"{a}_{k}_{m}" for a in compass for k in classes for m in MOVEMENTS] + extra
    rows: dict[tuple[datetime, int], dict[str, Any]] = {}
    for c in counts:
        row = rows.setdefault((c.interval_start, c.interval_s), dict.fromkeys(columns, 0))
        key = (
            f"{c.approach}_{c.cls}_to_{c.exit}"
            if c.movement == "unclassified"
            else f"{c.approach}_{c.cls}_{c.movement}"
        )
        row[key] += c.count
    out = []
    for (start, width), values in sorted(rows.items()):
        total = sum(values.values())
        out.append({"interval_start": start.isoformat().replace("+00:00", "Z"), "interval_minutes": width // 60,
                    **values, "total": total})  # fmt: skip
    return ["interval_start", "interval_minutes", *columns, "total"], out
