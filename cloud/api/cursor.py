"""Opaque event cursors: where a page ended, and the query it belongs to.

A cursor is base64url of a small JSON document: the ``(ts, event_id)`` key of
the last event returned, the window and the filters. It is not secret and not
signed: a client that edits one only moves its own position. It is checked:
a cursor sent with other filters than it was issued for is refused, because
its position would mean nothing there.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from roadside.cloud.storage.base import EventKey, from_epoch_us
from roadside.shared.limits import to_epoch_us

VERSION: Final = 1
MAX_LENGTH: Final = 512
# Unpadded base64url, as :meth:`EventCursor.encode` writes it; the OpenAPI document says the same.
PATTERN: Final = r"^[A-Za-z0-9_-]+$"
_CURSOR = re.compile(PATTERN)


@dataclass(frozen=True, slots=True)
class EventCursor:
    after: EventKey
    start: datetime
    end: datetime
    device: str | None
    site: str | None
    type: str | None

    def encode(self) -> str:
        document = [
            VERSION,
            self.after.ts_us,
            self.after.event_id,
            to_epoch_us(self.start),
            to_epoch_us(self.end),
            self.device,
            self.site,
            self.type,
        ]
        raw = json.dumps(document, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def same_filters(self, device: str | None, site: str | None, type_: str | None) -> bool:
        return (self.device, self.site, self.type) == (device, site, type_)


def decode(text: str) -> EventCursor:
    """The cursor in ``text``; ``ValueError`` when it is not one this API issued."""
    if len(text) > MAX_LENGTH or not _CURSOR.fullmatch(text):
        raise ValueError("not a cursor this API issued")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        version, ts_us, event_id, start_us, end_us, device, site, type_ = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError("not a cursor this API issued") from exc
    ints = (ts_us, start_us, end_us)
    texts = (device, site, type_)
    if (
        version != VERSION
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in ints)
        or not isinstance(event_id, str)
        or not all(v is None or isinstance(v, str) for v in texts)
    ):
        raise ValueError("not a cursor this API issued")
    try:
        start, end = from_epoch_us(start_us), from_epoch_us(end_us)
    except OverflowError as exc:
        raise ValueError("not a cursor this API issued") from exc
    return EventCursor(EventKey(ts_us, event_id), start, end, device, site, type_)
