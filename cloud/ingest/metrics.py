"""Prometheus metrics of ingest, registered on a registry the hub owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "roadside_ingest_messages_total",
            "Uplink messages processed, by result",
            ["result"],
            registry=registry,
        )
        self.rejected = Counter(
            "roadside_ingest_rejected_total", "Messages rejected, by reason", ["reason"], registry=registry
        )
        self.records = Counter(
            "roadside_ingest_records_total", "Records stored, by kind", ["kind"], registry=registry
        )
        self.batch_seconds = Histogram(
            "roadside_ingest_batch_write_seconds", "Time to write one micro-batch durably", registry=registry
        )
        self.lag_seconds = Histogram(
            "roadside_ingest_lag_seconds",
            "From the device sealing a message to the hub storing it",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self.store_errors = Counter(
            "roadside_ingest_store_errors_total", "Failed writes to the store (retried)", registry=registry
        )
        self.paused = Gauge(
            "roadside_ingest_paused",
            "1 while ingest waits for a store or the registry (nothing is acknowledged meanwhile)",
            registry=registry,
        )
        self.listener_errors = Counter(
            "roadside_ingest_listener_errors_total",
            "Stored messages whose follow-up work (acks, OTA reports, samples, live feed) failed, by listener",
            ["listener"],
            registry=registry,
        )
        self.disconnects = Counter(
            "roadside_ingest_broker_disconnects_total",
            "Times the ingest connection to the broker was lost or ended by the broker (it reconnects)",
            registry=registry,
        )
        self.redelivered = Counter(
            "roadside_ingest_redelivered_total",
            "Copies the broker sent again after a lost ack (DUP) of messages the hub had already handled: "
            "refused as replays, not dead-lettered",
            registry=registry,
        )
        self.behind_seconds = Gauge(
            "roadside_ingest_behind_seconds",
            "How far behind its devices ingest is: the 10th-percentile age of the newest batch stored, growing "
            "while a backlog or a pause holds the next one, at most the time since ingest last sat idle "
            "(0 when caught up); rollouts wait this long more",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "roadside_ingest_queue_depth", "Messages waiting to be written", registry=registry
        )
        self.last_seen = Gauge(
            "roadside_device_last_seen_timestamp_seconds",
            "When each device was last heard from (sealing time of its newest stored message)",
            ["device"],
            registry=registry,
        )
        self.dead_letters = Gauge(
            "roadside_dead_letters", "Messages kept in the dead-letter store", registry=registry
        )
