"""Writing accepted messages durably, one batch at a time; shared by the in-process writer and the
ingest worker processes (:mod:`roadside.cloud.ingest.workers`)."""

from __future__ import annotations

import logging

from roadside.cloud.ingest.core import Accepted, Rejection
from roadside.cloud.storage.base import TimeSeriesStore
from roadside.shared.errors import ConfigError, SchemaError, TransportError

log = logging.getLogger(__name__)


def write_durably(store: TimeSeriesStore, accepted: list[Accepted]) -> dict[int, Rejection]:
    """Write durably; return the messages the store refused for their own content, by ``id``.

    Every accepted message is written, with or without records: the store's mark of
    ``(device, seq)`` is what rebuilds the replay window after a restart, for acks,
    OTA reports and samples as much as for telemetry. A store-wide failure (down,
    credentials, a missing database) raises ``TransportError`` or ``ConfigError``.
    """
    if not accepted:
        return {}
    try:
        store.write([a.batch for a in accepted])
    except (TransportError, ConfigError):
        raise
    except Exception as exc:
        log.warning("store refused a batch (%s); writing its messages one by one", exc)
        return _write_each(store, accepted)
    return {}


def _write_each(store: TimeSeriesStore, accepted: list[Accepted]) -> dict[int, Rejection]:
    refused: dict[int, Rejection] = {}
    unexplained: list[Exception] = []
    for result in accepted:
        try:
            store.write([result.batch])
        except (TransportError, ConfigError):
            raise
        except Exception as exc:
            if not isinstance(exc, SchemaError):
                unexplained.append(exc)
            where = result.header
            topic = f"device {where.device_id} seq {where.seq}"
            refused[id(result)] = Rejection("store_rejected", str(exc), topic, where.device_id)
    if unexplained and len(unexplained) == len(accepted):
        # Every message failed, and not for its content: the store is broken, not the data.
        raise TransportError(f"the store failed every write: {unexplained[0]!r}") from unexplained[0]
    return refused
