"""InfluxDB adapters of ``TimeSeriesStore``.

=================================== ===========================================================
module                              what it holds
=================================== ===========================================================
:mod:`~.line_protocol` (pure)       the points written, their identity (idempotency), escaping
:mod:`~.influxql` (pure)            the InfluxQL the v1 adapter reads with
:mod:`~.flux` (pure)                the Flux the 2.x adapter reads with
:mod:`~.rows` (pure)                rows back to records; HTTP failures to the exception tree
:mod:`~.v1`                         :class:`InfluxV1Store`: v1 HTTP API over httpx (1.x, and
                                    2.x/3.x v1 compatibility); tested against a real ``influxd``
:mod:`~.v2`                         :class:`InfluxV2Store`: ``influxdb_client`` with token, org
                                    and bucket; the only module that imports that library
=================================== ===========================================================

Both adapters write the same points, so data written by one reads back through the
other's query language alike.
"""

from __future__ import annotations

from roadside.cloud.storage.influx.flux import (
    FluxQuery,
    count_buckets_flux,
    events_flux,
    highest_seq_flux,
    latest_health_flux,
    sensor_series_flux,
    seqs_above_flux,
)
from roadside.cloud.storage.influx.influxql import (
    count_buckets_influxql,
    events_influxql,
    quote_ident,
    quote_literal,
    sensor_series_influxql,
)
from roadside.cloud.storage.influx.line_protocol import (
    WRITE_CHUNK,
    LinePoint,
    batch_points,
    escape_key,
    escape_measurement,
    format_field,
)
from roadside.cloud.storage.influx.v1 import InfluxV1Store
from roadside.cloud.storage.influx.v2 import InfluxV2Store

__all__ = [
    "WRITE_CHUNK",
    "FluxQuery",
    "InfluxV1Store",
    "InfluxV2Store",
    "LinePoint",
    "batch_points",
    "count_buckets_flux",
    "count_buckets_influxql",
    "escape_key",
    "escape_measurement",
    "events_flux",
    "events_influxql",
    "format_field",
    "highest_seq_flux",
    "latest_health_flux",
    "quote_ident",
    "quote_literal",
    "sensor_series_flux",
    "sensor_series_influxql",
    "seqs_above_flux",
]
