"""One camera's detection for signals: zones, camera health, turning movements and zone statistics.

:class:`CameraSignals` joins the pure parts for one stream. The pipeline
hands it each frame (its timestamp, image and the tracks the stream's
analytics just placed) and a clock tick between batches, and sends what
comes back: zone changes at once (``detector`` uplink, highest priority),
movement and zone-statistics records when an interval closes
(``movements`` uplink).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from roadside.edge.analytics.camera_health import CameraHealth, frame_stats
from roadside.edge.analytics.detectors import CameraDetectors, Occupant, ZoneBank, ZoneChange
from roadside.edge.analytics.geometry import anchor_point, point_in_polygon
from roadside.edge.analytics.lines import Point
from roadside.edge.analytics.movements import MovementCounter, ZoneStatistics
from roadside.edge.analytics.tracker import Track
from roadside.shared.schemas import DetectorChange, MovementInterval, TurningMovement, ZoneStat

__all__ = ["CameraSignals", "SignalOutput"]


@dataclass(slots=True)
class SignalOutput:
    changes: list[DetectorChange] = field(default_factory=list)
    movements: list[TurningMovement] = field(default_factory=list)
    zones: list[ZoneStat] = field(default_factory=list)


class CameraSignals:
    """Detection for signals on one stream; feed it frames in time order."""

    def __init__(self, stream: str, config: CameraDetectors, interval_s: MovementInterval = 900) -> None:
        self.stream = stream
        self.config = config
        camera = config.camera()
        self.zones = ZoneBank(config, camera)
        self.health = CameraHealth(config.health)
        self.movements = MovementCounter(
            stream, config.approaches, interval_s, camera, classes=config.vehicle_classes
        )
        self.statistics = ZoneStatistics(stream, self.zones.names, interval_s, camera)
        self._rings = {z.name: (z, ring) for z, ring in zip(config.zones, self.zones.rings(), strict=True)}

    def frame(
        self,
        ts: float,
        image: npt.NDArray[np.uint8] | None,
        tracks: Sequence[Track],
        labels: Sequence[str],
        arrived: float | None = None,
    ) -> SignalOutput:
        """The frame taken at epoch seconds ``ts`` (``image`` None: health is not checked), handled at
        ``arrived`` on the clock :meth:`tick` is given (``ts`` when left out)."""
        out = SignalOutput()
        occupants = [
            Occupant(
                t.track_id,
                labels[t.cls] if 0 <= t.cls < len(labels) else f"class{t.cls}",
                anchor_point(t.box, self.config.anchor),
            )
            for t in tracks
        ]
        changes: list[ZoneChange] = []
        if image is not None:
            health = self.health.frame(ts, frame_stats(image), arrived)
            if health is not None:
                changes += self.zones.fail(ts, health.reason) if health.reason else self.zones.restore(ts)
        changes += self.zones.update(ts, occupants)
        out.changes = [self._wire(c) for c in changes]
        out.movements = self.movements.update(ts, occupants)
        out.zones = self.statistics.update(ts, self.zones.occupied(), self._inside(occupants))
        return out

    def _inside(self, occupants: Sequence[Occupant]) -> dict[str, dict[int, Point]]:
        classes = {name: self.config.classes_of(zone) for name, (zone, _) in self._rings.items()}
        return {
            name: {
                o.track_id: o.anchor
                for o in occupants
                if o.cls in classes[name] and point_in_polygon(o.anchor, ring)
            }
            for name, (_, ring) in self._rings.items()
        }

    def tick(self, now: float) -> SignalOutput:
        """Between frames, on the clock of ``arrived``: a camera that stopped sending is failed (fail safe)."""
        lost = self.health.tick(now)
        if lost is None or lost.reason is None:
            return SignalOutput()
        return SignalOutput(changes=[self._wire(c) for c in self.zones.fail(lost.ts, lost.reason)])

    def flush(self) -> SignalOutput:
        """Close the open intervals now (shutdown)."""
        return SignalOutput(movements=self.movements.flush(), zones=self.statistics.flush())

    def _wire(self, change: ZoneChange) -> DetectorChange:
        return DetectorChange(
            ts=datetime.fromtimestamp(change.ts, UTC),
            stream=self.stream,
            zone=change.zone,
            zone_kind=change.kind,
            state=change.state,
            reason=change.reason,
            occupants=None if change.occupants is None else min(change.occupants, 255),
        )
