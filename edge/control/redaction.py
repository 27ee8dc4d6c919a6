"""Camera credentials kept out of acks and logs."""

from __future__ import annotations

from roadside.edge.sources.uri import mask_credentials


def redact(text: str) -> str:
    """``rtsp://user:secret@host`` → ``rtsp://user:***@host``: camera passwords stay out of acks and logs."""
    return mask_credentials(text)
