"""The agent's Prometheus ``/metrics``, served on 127.0.0.1 only.

Nothing is updated in the background: each scrape asks for a fresh
:class:`~roadside.edge.health.HealthReport` (the host probe is cached for a few
seconds) and turns it into metric families, so a scrape always shows what a
heartbeat sent now would show. Loopback only: a node exporter or a local
Prometheus agent on the box scrapes it; nothing on the street network can.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from roadside.edge.health import HealthReport
from roadside.edge.transport.delivery import LinkState
from roadside.shared.errors import ConfigError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_STREAM_STATES = ("up", "reconnecting", "down")


class HealthMetrics(Collector):
    """Prometheus view of the agent's health report, built at scrape time."""

    def __init__(
        self,
        report: Callable[[], HealthReport],
        commands: Callable[[], Mapping[tuple[str, str], int]] = dict,
    ) -> None:
        self._report = report
        self._commands = commands

    def collect(self) -> Iterator[Metric]:
        try:
            r = self._report()
        except Exception:  # a scrape must not take the agent down; say why in the log
            log.exception("cannot build the health report for /metrics")
            return
        yield _gauge("roadside_agent_uptime_seconds", "Seconds since the agent started.", r.uptime_s)
        info = GaugeMetricFamily(
            "roadside_agent_model_info",
            "The model in use and its active provider.",
            labels=["version", "provider"],
        )
        info.add_metric([r.model_version, r.provider], 1)
        yield info
        yield from self._streams(r)
        quantiles = GaugeMetricFamily(
            "roadside_agent_inference_ms",
            "Inference time per batch over the recent window, by quantile.",
            labels=["quantile"],
        )
        for q, value in (("0.5", r.inference_p50_ms), ("0.95", r.inference_p95_ms)):
            if value is not None:
                quantiles.add_metric([q], value)
        yield quantiles
        depths = GaugeMetricFamily(
            "roadside_agent_queue_depth", "Items waiting in a queue.", labels=["queue"]
        )
        for queue, depth in sorted(r.queue_depths.items()):
            depths.add_metric([queue], depth)
        yield depths
        yield _counter(
            "roadside_agent_frame_queue_dropped",
            "Frames the DROP_OLDEST frame queue discarded.",
            r.frame_queue_dropped,
        )
        yield _gauge(
            "roadside_agent_outbox_backlog_messages", "Messages waiting in the outbox.", r.outbox_backlog
        )
        yield _gauge("roadside_agent_outbox_bytes", "Payload bytes held by the outbox.", r.outbox_bytes)
        yield _counter(
            "roadside_agent_outbox_dropped", "Messages the outbox's disk budget forced out.", r.outbox_dropped
        )
        yield from self._uplink(r)
        yield from self._system(r)
        results = CounterMetricFamily(
            "roadside_agent_commands", "Commands handled, by type and result.", labels=["type", "result"]
        )
        for (kind, result), n in sorted(self._commands().items()):
            results.add_metric([kind, result], n)
        yield results

    @staticmethod
    def _streams(r: HealthReport) -> Iterator[Metric]:
        fps = GaugeMetricFamily(
            "roadside_agent_stream_fps", "Frames processed per second.", labels=["stream"]
        )
        read = CounterMetricFamily("roadside_agent_stream_frames_read", "Frames read.", labels=["stream"])
        done = CounterMetricFamily(
            "roadside_agent_stream_frames_processed", "Frames through inference.", labels=["stream"]
        )
        dropped = CounterMetricFamily(
            "roadside_agent_stream_dropped_frames", "Frames dropped before inference.", labels=["stream"]
        )
        up = GaugeMetricFamily(
            "roadside_agent_stream_up",
            "1 for the stream's state (up, reconnecting, down), 0 for the others.",
            labels=["stream", "state"],
        )
        age = GaugeMetricFamily(
            "roadside_agent_stream_last_frame_age_seconds", "Seconds since the last frame.", labels=["stream"]
        )
        reconnects = CounterMetricFamily(
            "roadside_agent_stream_reconnects",
            "Times the camera was reopened after a failure.",
            labels=["stream"],
        )
        for s in r.streams:
            fps.add_metric([s.name], s.fps)
            read.add_metric([s.name], s.frames_read)
            done.add_metric([s.name], s.frames_processed)
            dropped.add_metric([s.name], s.dropped_frames)
            for state in _STREAM_STATES:
                up.add_metric([s.name, state], int(s.state == state))
            if s.last_frame_age_s is not None:
                age.add_metric([s.name], s.last_frame_age_s)
            reconnects.add_metric([s.name], s.reconnects)
        yield from (fps, read, done, dropped, up, age, reconnects)

    @staticmethod
    def _uplink(r: HealthReport) -> Iterator[Metric]:
        yield _gauge(
            "roadside_agent_uplink_connected", "1 while connected to the broker.", int(r.uplink_connected)
        )
        if r.uplink is None:
            return
        state = GaugeMetricFamily(
            "roadside_agent_uplink_state",
            "1 for the link's state (connecting, publishing, refused), 0 for the others.",
            labels=["state"],
        )
        for link_state in LinkState:
            state.add_metric([link_state.value], int(r.uplink.state is link_state))
        yield state
        yield _gauge(
            "roadside_agent_uplink_state_since_timestamp_seconds",
            "When the link entered its state (Unix time).",
            r.uplink.since.timestamp(),
        )
        yield _gauge(
            "roadside_agent_uplink_refusals",
            "Messages the broker refused since it last accepted one (0 while publishing).",
            r.uplink.refusals,
        )
        yield _counter(
            "roadside_agent_uplink_refused",
            "Messages the broker refused (not authorised).",
            r.uplink.refused_total,
        )

    @staticmethod
    def _system(r: HealthReport) -> Iterator[Metric]:
        system = r.system
        if system.cpu_percent is not None:
            yield _gauge("roadside_agent_cpu_percent", "CPU use of the agent process.", system.cpu_percent)
        if system.rss_mb is not None:
            yield _gauge("roadside_agent_resident_memory_bytes", "Resident memory.", system.rss_mb * 1e6)
        util = GaugeMetricFamily("roadside_agent_gpu_utilization_percent", "GPU busy time.", labels=["gpu"])
        memory = GaugeMetricFamily(
            "roadside_agent_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu"]
        )
        for gpu in system.gpus:
            if gpu.utilization_percent is not None:
                util.add_metric([str(gpu.index)], gpu.utilization_percent)
            if gpu.memory_used_mb is not None:
                memory.add_metric([str(gpu.index)], gpu.memory_used_mb * 1024 * 1024)  # nvidia-smi MiB
        temps = GaugeMetricFamily(
            "roadside_agent_temperature_celsius", "Thermal zones and GPUs.", labels=["sensor"]
        )
        for zone, celsius in sorted(system.temperatures_c.items()):
            temps.add_metric([zone], celsius)
        for gpu in system.gpus:
            if gpu.temperature_c is not None:
                temps.add_metric([f"gpu{gpu.index}"], gpu.temperature_c)
        yield from (util, memory, temps)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class MetricsServer:
    """``/metrics`` over HTTP on loopback; ``port=0`` takes a free port (see :attr:`port`)."""

    def __init__(self, collector: Collector, port: int, host: str = LOOPBACK) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._host = host
        self._requested_port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the metrics server is not running")
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}/metrics"

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(self._requested_port, self._host, self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve /metrics on {self._host}:{self._requested_port} ({exc.strerror}): "
                "set metrics_port to a free port, or 0 to turn /metrics off"
            ) from exc
        self._thread.name = "metrics-http"
        log.info("metrics on %s", self.url)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
