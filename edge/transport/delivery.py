"""What the broker says about this device's messages, and what the uplink does about it.

A broker may accept the connection and still refuse every message (MQTT 5
PUBACK 135, "Not authorized": the ACL does not, or no longer, list the
device, e.g. it was enrolled while the broker ran and the broker has not
reloaded its ACL). Retrying at once spins: the field saw 43,618 refusals
logged in a minute from one agent. :class:`RefusalGate` holds sending with a
jittered backoff instead, lets one message probe at a time, and opens again
on the first message the broker accepts. The outbox keeps everything
meanwhile.

:class:`UplinkStatus` is what health, ``/metrics`` and ``roadside agent
doctor`` report; the uplink writes it to a small JSON file beside the outbox
at each change, which is how the doctor, a separate process, reads it.

Pure: no sockets, no paho; times are passed in.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from roadside.shared.backoff import Backoff

REFUSAL_BASE_S: Final = 1.0
REFUSAL_CAP_S: Final = 30.0  # a device the hub just enrolled is delivering within this


class LinkState(enum.StrEnum):
    CONNECTING = "connecting"  # not connected: reaching the broker, or waiting to retry
    PUBLISHING = "publishing"  # connected, and the broker accepts this device's messages
    REFUSED = "refused"  # connected, and the broker refuses this device's messages


@dataclass(frozen=True, slots=True)
class UplinkStatus:
    state: LinkState
    since: datetime  # when the uplink entered ``state``
    refusals: int = 0  # messages refused since the broker last accepted one
    refused_total: int = 0  # messages refused since the agent started
    reason: str | None = None  # the broker's reason for the last refusal, while refused

    def to_json(self) -> str:
        return json.dumps(
            {
                "state": self.state.value,
                "since": self.since.isoformat(),
                "refusals": self.refusals,
                "refused_total": self.refused_total,
                "reason": self.reason,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> UplinkStatus:
        """``ValueError`` (or ``KeyError``, ``TypeError``) when ``text`` is not a status."""
        raw = json.loads(text)
        return cls(
            LinkState(raw["state"]),
            datetime.fromisoformat(raw["since"]),
            int(raw["refusals"]),
            int(raw["refused_total"]),
            None if raw["reason"] is None else str(raw["reason"]),
        )


def uplink_status_path(outbox_path: Path) -> Path:
    """Where the agent writing to ``outbox_path`` keeps its uplink status."""
    return outbox_path.with_name(f"{outbox_path.stem}.uplink.json")


def write_status(path: Path, status: UplinkStatus) -> None:
    """Replace the status file atomically (a reader never sees half of one)."""
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(status.to_json())
    partial.replace(path)


def read_status(path: Path) -> UplinkStatus | None:
    """The status an agent wrote at ``path``; ``None`` if there is none or it is unreadable."""
    try:
        return UplinkStatus.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None


class RefusalGate:
    """Holds sending while the broker refuses this device's messages.

    Open: the uplink fills its in-flight window. After a refusal: nothing is
    sent until a backoff delay has passed, then one message at a time, until
    the broker accepts one. The delay grows with each refusal that arrives
    after the previous delay ended (refusals of one burst count once).
    """

    def __init__(self, backoff: Backoff | None = None) -> None:
        self._backoff = backoff or Backoff(REFUSAL_BASE_S, REFUSAL_CAP_S)
        self._hold_until = 0.0
        self.refused = False
        self.refusals = 0  # in the current refused spell
        self.total = 0

    def on_refused(self, now: float) -> bool:
        """Count a refusal at monotonic time ``now``; True when it starts a new backoff round."""
        self.total += 1
        self.refusals += 1
        self.refused = True
        if now < self._hold_until:
            return False  # another message of the round already refused
        self._hold_until = now + self._backoff.next_delay()
        return True

    def on_accepted(self) -> int | None:
        """The broker accepted a message: open. The spell's refusal count when it ends one."""
        if not self.refused:
            return None
        ended = self.refusals
        self.refused = False
        self.refusals = 0
        self._hold_until = 0.0
        self._backoff.reset()
        return ended

    def room(self, now: float, window: int, in_flight: int) -> int:
        """How many more messages may be sent now, out of an in-flight ``window``."""
        if not self.refused:
            return max(0, window - in_flight)
        if in_flight or now < self._hold_until:
            return 0
        return 1  # a probe
