"""Frame sources behind one interface, chosen by the ``type`` of their config."""

from __future__ import annotations

from edge.settings import SourceConfig, SyntheticSource, VideoSource
from edge.sources.base import Frame, FrameSource


def open_source(config: SourceConfig) -> FrameSource:
    """The registered adapter for ``config.type``."""
    # Imported here so an agent without OpenCV can still run synthetic streams, and vice versa.
    if isinstance(config, SyntheticSource):
        from edge.sources.synthetic import SyntheticFrameSource

        return SyntheticFrameSource(config)
    if isinstance(config, VideoSource):
        from edge.sources.video import VideoFrameSource

        return VideoFrameSource(config)
    raise AssertionError(f"unregistered source type {config!r}")


__all__ = ["Frame", "FrameSource", "open_source"]
