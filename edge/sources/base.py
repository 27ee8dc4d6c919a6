"""The ``FrameSource`` interface."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class Frame:
    stream: str
    index: int
    ts: float  # epoch seconds when the frame was captured
    image: npt.NDArray[np.uint8]  # HxWx3 BGR


class FrameSource(Protocol):
    name: str

    def frames(self) -> Iterator[Frame]:
        """Frames until the source ends or :meth:`close` is called."""
        ...

    def close(self) -> None: ...
