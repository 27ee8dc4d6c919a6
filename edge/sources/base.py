"""The ``FrameSource`` interface."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

TruthBox = tuple[str, tuple[float, float, float, float]]  # class name, x1 y1 x2 y2 in the frame's pixels


@dataclass(frozen=True, slots=True)
class Frame:
    stream: str
    index: int
    ts: float  # epoch seconds when the frame was captured
    image: npt.NDArray[np.uint8]  # HxWx3 BGR
    truth: tuple[TruthBox, ...] | None = None  # ground truth where the source knows it (synthetic)


class FrameSource(Protocol):
    name: str
    reconnects: int  # times a live source reopened after a failure (0 for others)

    def frames(self) -> Iterator[Frame]:
        """Frames until the source ends or :meth:`close` is called."""
        ...

    def close(self) -> None: ...
