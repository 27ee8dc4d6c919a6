"""What every air-sensor codec shares: the error with a reason, the counters, a reading."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

Reason = Literal[
    "bad_checksum",  # the frame's sum or CRC does not match its bytes
    "bad_length",  # a length field no device of this kind sends
    "bad_tail",  # the closing byte is wrong
    "bad_stuffing",  # an escape byte followed by something that is not an escape
    "truncated",  # a frame cut short: another start inside it, or the port went away mid-frame
    "too_long",  # no frame end where one must have been
    "bad_command",  # a well-formed frame answering nothing we understand
    "device_error",  # the device says it failed (SPS30 state byte)
]


class FrameError(ValueError):
    """A frame that does not decode; ``reason`` is a short fixed label for counting."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason


@dataclass(frozen=True, slots=True)
class Reading:
    """One value a frame carried."""

    quantity: str
    value: float
    unit: str


@dataclass
class FrameStats:
    """Frames accepted and refused by reason, and bytes thrown away while looking for a frame."""

    accepted: int = 0
    acks: int = 0  # replies to our commands: valid frames that carry no reading
    rejected: Counter[str] = field(default_factory=Counter)
    skipped_bytes: int = 0

    def reject(self, error: FrameError) -> None:
        self.rejected[error.reason] += 1

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())
