"""The Grafana dashboards of the compose stack, generated from code (issue 12).

    python compose/grafana/generate.py           # writes compose/grafana/dashboards/*.json
    python compose/grafana/generate.py --check   # exit 1 if a committed file differs

Three dashboards, provisioned by ``compose/grafana/provisioning/``:

- **Roadside hub** (Prometheus): ingest, rejections, lag, the store, dead letters,
  devices gone quiet, the API, signal calls, hard examples. The metric names are
  those registered in ``cloud/ingest/metrics.py``, ``cloud/api/app.py``,
  ``cloud/signals/calls.py`` and ``cloud/hub.py``.
- **Roadside agents** (Prometheus, one agent at a time by its ``instance``): streams,
  inference, queues, the outbox, the uplink, the host; ``edge/metrics.py``.
- **Roadside traffic** (InfluxDB 2, Flux): counts, events, speeds, sensor readings
  and device health as the hub writes them (``cloud/storage/influx/line_protocol.py``).

Never edit the JSON by hand: change this file and run it. ``tests/unit/test_grafana_dashboards.py``
fails when the committed JSON differs from this output, when a query names a metric the code
does not register or a measurement/field the hub does not write, or when a dashboard is malformed.
Plain typed Python rather than ``grafana-foundation-sdk``: three dashboards do not need a
dependency, and the JSON stays readable in review.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

HERE: Final = Path(__file__).resolve().parent
OUT_DIR: Final = HERE / "dashboards"

# The datasources of provisioning/datasources/roadside.yaml, by uid.
PROMETHEUS: Final = {"type": "prometheus", "uid": "roadside-prometheus"}
INFLUXDB: Final = {"type": "influxdb", "uid": "roadside-influxdb"}
BUCKET: Final = "roadside"  # DOCKER_INFLUXDB_INIT_BUCKET in docker-compose.yml
SCHEMA_VERSION: Final = 39  # Grafana 11.0's dashboard schema
WIDTH: Final = 24  # grid columns

PanelType = Literal["timeseries", "stat", "table"]


@dataclass(frozen=True, slots=True)
class Query:
    """One target: PromQL for Prometheus panels, Flux for InfluxDB ones."""

    text: str
    legend: str = ""


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    type: PanelType = "timeseries"
    description: str = ""
    width: int = 12
    height: int = 8


@dataclass(frozen=True, slots=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True, slots=True)
class Dashboard:
    uid: str
    title: str
    description: str
    datasource: dict[str, str]
    rows: tuple[Row, ...]
    variables: tuple[dict[str, Any], ...] = field(default=())
    refresh: str = "30s"
    time_from: str = "now-6h"


def prom(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


def rate(metric: str, by: str = "", window: str = "$__rate_interval") -> str:
    summed = f"sum by ({by}) " if by else "sum "
    return f"{summed}(rate({metric}[{window}]))"


def p95(histogram: str, by: str = "") -> str:
    groups = f"le, {by}" if by else "le"
    return f"histogram_quantile(0.95, sum by ({groups}) (rate({histogram}_bucket[$__rate_interval])))"


def flux(measurement: str, fields: str, tail: str) -> Query:
    """A Flux query over the dashboard's time range; ``fields`` is a Flux predicate on ``r._field``."""
    text = (
        f'from(bucket: "{BUCKET}")\n'
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
        f'  |> filter(fn: (r) => r._measurement == "{measurement}" and ({fields}))\n'
        f"{tail}"
    )
    return Query(text)


# -- the hub ----------------------------------------------------------------------------------

HUB: Final = Dashboard(
    uid="roadside-hub",
    title="Roadside hub",
    description="The hub's Prometheus metrics (/metrics on the API port): ingest, store, API, signals.",
    datasource=PROMETHEUS,
    rows=(
        Row("Ingest", (
            Panel("Messages per second, by result", (prom(rate("roadside_ingest_messages_total", "result"), "{{result}}"),),
                  "reqps", description="Uplink messages processed: stored, duplicate, rejected."),
            Panel("Rejected per second, by reason", (prom(rate("roadside_ingest_rejected_total", "reason"), "{{reason}}"),),
                  "reqps", description="Each rejected message is in the dead-letter store: roadside deadletters list."),
            Panel("Records stored per second, by kind", (prom(rate("roadside_ingest_records_total", "kind"), "{{kind}}"),),
                  "ops"),
            Panel("Lag, device seal to stored (p95)", (prom(p95("roadside_ingest_lag_seconds"), "p95"),), "s"),
            Panel("Queue depth", (prom("sum(roadside_ingest_queue_depth)", "waiting"),), "short", width=8),
            Panel("Paused (waiting for store or registry)", (prom("max(roadside_ingest_paused)"),), "bool",
                  type="stat", width=8),
            Panel("Dead letters kept", (prom("sum(roadside_dead_letters)"),), "short", type="stat", width=8),
        )),
        Row("Store", (
            Panel("Batch write time (p95)", (prom(p95("roadside_ingest_batch_write_seconds"), "p95"),), "s"),
            Panel("Store errors and listener errors per second", (
                prom(rate("roadside_ingest_store_errors_total"), "store (retried)"),
                prom(rate("roadside_ingest_listener_errors_total", "listener"), "listener {{listener}}"),
            ), "ops"),
        )),
        Row("Fleet", (
            Panel("Devices silent for more than 5 minutes",
                  (prom("count((time() - roadside_device_last_seen_timestamp_seconds) > 300) or vector(0)"),),
                  "short", type="stat", width=8),
            Panel("Devices heard from in the last 5 minutes",
                  (prom("count((time() - roadside_device_last_seen_timestamp_seconds) <= 300) or vector(0)"),),
                  "short", type="stat", width=8),
            Panel("Hard examples received per second, by result",
                  (prom(rate("roadside_dataset_samples_total", "result"), "{{result}}"),), "ops", width=8),
        )),
        Row("API", (
            Panel("Requests per second, by status", (prom(rate("roadside_api_requests_total", "status"), "{{status}}"),),
                  "reqps"),
            Panel("Answer time by route (p95)",
                  (prom(p95("roadside_api_request_duration_seconds", "route"), "{{route}}"),), "s"),
        )),
        Row("Signals", (
            Panel("Detector call latency, frame to hub send (p95)",
                  (prom(p95("roadside_signal_call_latency_seconds", "signal"), "{{signal}}"),), "s", width=8),
            Panel("Detector calls per second", (prom(rate("roadside_signal_calls_total", "signal, state"),
                                                     "{{signal}} {{state}}"),), "ops", width=8),
            Panel("Call publish errors per second",
                  (prom(rate("roadside_signal_call_publish_errors_total", "signal"), "{{signal}}"),), "ops", width=8),
        )),
    ),
)  # fmt: skip


# -- the agents -------------------------------------------------------------------------------

_ONE = '{instance=~"$instance"}'

AGENTS: Final = Dashboard(
    uid="roadside-agents",
    title="Roadside agents",
    description="Each agent's Prometheus metrics (its /metrics on 127.0.0.1:metrics_port), one or more by instance.",
    datasource=PROMETHEUS,
    variables=(
        {
            "name": "instance",
            "label": "Agent",
            "type": "query",
            "datasource": PROMETHEUS,
            "query": {"query": "label_values(roadside_agent_uptime_seconds, instance)", "refId": "instance"},
            "definition": "label_values(roadside_agent_uptime_seconds, instance)",
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "current": {},
            "options": [],
            "sort": 1,
        },
    ),
    rows=(
        Row("Model and streams", (
            Panel("Model in use and provider", (prom(f"roadside_agent_model_info{_ONE}", "{{instance}} {{version}} {{provider}}"),),
                  type="table", width=12, description="A CPU provider on a GPU box is a silent fallback: check roadside agent doctor."),
            Panel("Uptime", (prom(f"roadside_agent_uptime_seconds{_ONE}", "{{instance}}"),), "s", type="stat", width=12),
            Panel("Frames per second, by stream", (prom(f"roadside_agent_stream_fps{_ONE}", "{{instance}} {{stream}}"),), "fps"),
            Panel("Frames read and through inference per second", (
                prom(f"sum by (instance, stream) (rate(roadside_agent_stream_frames_read_total{_ONE}[$__rate_interval]))",
                     "{{instance}} {{stream}} read"),
                prom(f"sum by (instance, stream) (rate(roadside_agent_stream_frames_processed_total{_ONE}[$__rate_interval]))",
                     "{{instance}} {{stream}} inferred"),
            ), "fps"),
            Panel("Frames dropped per second", (
                prom(f"sum by (instance, stream) (rate(roadside_agent_stream_dropped_frames_total{_ONE}[$__rate_interval]))",
                     "{{instance}} {{stream}} before inference"),
                prom(f"sum by (instance) (rate(roadside_agent_frame_queue_dropped_total{_ONE}[$__rate_interval]))",
                     "{{instance}} frame queue"),
            ), "fps"),
            Panel("Streams not up", (prom('roadside_agent_stream_up{instance=~"$instance", state!="up"} == 1',
                                          "{{instance}} {{stream}} {{state}}"),), "short"),
            Panel("Seconds since the last frame", (prom(f"roadside_agent_stream_last_frame_age_seconds{_ONE}",
                                                        "{{instance}} {{stream}}"),), "s"),
            Panel("Camera reconnects per hour", (prom(f"sum by (instance, stream) (increase(roadside_agent_stream_reconnects_total{_ONE}[1h]))",
                                                      "{{instance}} {{stream}}"),), "short"),
            Panel("Inference time per batch", (prom(f"roadside_agent_inference_ms{_ONE}", "{{instance}} q{{quantile}}"),), "ms"),
        )),
        Row("Queues and outbox", (
            Panel("Queue depth", (prom(f"roadside_agent_queue_depth{_ONE}", "{{instance}} {{queue}}"),), "short", width=8),
            Panel("Outbox backlog", (prom(f"roadside_agent_outbox_backlog_messages{_ONE}", "{{instance}}"),), "short", width=8),
            Panel("Outbox bytes", (prom(f"roadside_agent_outbox_bytes{_ONE}", "{{instance}}"),), "bytes", width=8),
            Panel("Outbox drops per hour (disk budget)", (prom(f"sum by (instance) (increase(roadside_agent_outbox_dropped_total{_ONE}[1h]))",
                                                               "{{instance}}"),), "short"),
            Panel("Commands handled per hour", (prom(f"sum by (instance, type, result) (increase(roadside_agent_commands_total{_ONE}[1h]))",
                                                     "{{instance}} {{type}} {{result}}"),), "short"),
        )),
        Row("Uplink", (
            Panel("Connected to the broker", (prom(f"roadside_agent_uplink_connected{_ONE}", "{{instance}}"),), "bool", width=8),
            Panel("Link state and seconds in it", (
                prom(f"roadside_agent_uplink_state{_ONE} == 1", "{{instance}} {{state}}"),
                prom(f"time() - roadside_agent_uplink_state_since_timestamp_seconds{_ONE}", "{{instance}} seconds in state"),
            ), "short", width=8),
            Panel("Refused by the broker", (
                prom(f"roadside_agent_uplink_refusals{_ONE}", "{{instance}} since last accepted"),
                prom(f"roadside_agent_uplink_refused_total{_ONE}", "{{instance}} in all"),
            ), "short", width=8, description="Refusals mean the broker's ACL does not allow this device: revoked?"),
        )),
        Row("Host", (
            Panel("CPU of the agent", (prom(f"roadside_agent_cpu_percent{_ONE}", "{{instance}}"),), "percent", width=8),
            Panel("Resident memory", (prom(f"roadside_agent_resident_memory_bytes{_ONE}", "{{instance}}"),), "bytes", width=8),
            Panel("Temperature", (prom(f"roadside_agent_temperature_celsius{_ONE}", "{{instance}} {{sensor}}"),), "celsius", width=8),
            Panel("GPU busy", (prom(f"roadside_agent_gpu_utilization_percent{_ONE}", "{{instance}} gpu{{gpu}}"),), "percent"),
            Panel("GPU memory", (prom(f"roadside_agent_gpu_memory_used_bytes{_ONE}", "{{instance}} gpu{{gpu}}"),), "bytes"),
        )),
    ),
)  # fmt: skip


# -- the data in InfluxDB ---------------------------------------------------------------------

_WINDOW_SUM = (
    "  |> group(columns: [{by}])\n  |> aggregateWindow(every: v.windowPeriod, fn: sum, createEmpty: false)"
)
_WINDOW_MEAN = (
    "  |> group(columns: [{by}])\n  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)"
)

TRAFFIC: Final = Dashboard(
    uid="roadside-traffic",
    title="Roadside traffic",
    description="Counts, events, speeds, sensor readings and device health as the hub stores them in InfluxDB 2.",
    datasource=INFLUXDB,
    time_from="now-24h",
    refresh="1m",
    rows=(
        Row("Counts", (
            Panel("Vehicles per site", (flux("counts", 'r._field == "count"', _WINDOW_SUM.format(by='"site"')),),
                  description="Line crossings counted by the devices, summed over each site's devices, lines and classes."),
            Panel("Vehicles per class", (flux("counts", 'r._field == "count"', _WINDOW_SUM.format(by='"cls"')),)),
            Panel("Vehicles per line and direction",
                  (flux("counts", 'r._field == "count"', _WINDOW_SUM.format(by='"site", "line", "direction"')),), width=24),
        )),
        Row("Events and speeds", (
            Panel("Events per type", (flux("events", 'r._field == "event_id"',
                                           '  |> group(columns: ["type"])\n'
                                           "  |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: false)"),)),
            Panel("Mean speed per site", (flux("events", 'r._field == "speed_kmh"', _WINDOW_MEAN.format(by='"site"')),),
                  "velocitykmh"),
        )),
        Row("Sensors", (
            Panel("Readings per site and quantity",
                  (flux("sensors", 'r._field == "value"', _WINDOW_MEAN.format(by='"site", "quantity"')),), width=24,
                  description="Raw readings (units differ by quantity; see the air-quality pages for indices)."),
        )),
        Row("Device health", (
            Panel("Inference p95 per device", (flux("health", 'r._field == "inference_p95_ms"',
                                                   _WINDOW_MEAN.format(by='"device"')),), "ms", width=8),
            Panel("Outbox backlog per device", (flux("health", 'r._field == "outbox_backlog"',
                                                    _WINDOW_MEAN.format(by='"device"')),), "short", width=8),
            Panel("CPU per device", (flux("health", 'r._field == "cpu_percent"',
                                         _WINDOW_MEAN.format(by='"device"')),), "percent", width=8),
        )),
    ),
)  # fmt: skip

DASHBOARDS: Final = (HUB, AGENTS, TRAFFIC)


# -- the JSON model ---------------------------------------------------------------------------


def _target(query: Query, ref: str, datasource: dict[str, str]) -> dict[str, Any]:
    if datasource["type"] == "prometheus":
        return {"datasource": datasource, "refId": ref, "expr": query.text, "legendFormat": query.legend,
                "range": True}  # fmt: skip
    return {"datasource": datasource, "refId": ref, "query": query.text}


def _panel(panel: Panel, panel_id: int, x: int, y: int, datasource: dict[str, str]) -> dict[str, Any]:
    refs = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    model: dict[str, Any] = {
        "id": panel_id,
        "type": panel.type,
        "title": panel.title,
        "description": panel.description,
        "datasource": datasource,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {},
        "targets": [_target(q, refs[i], datasource) for i, q in enumerate(panel.queries)],
    }
    if panel.type == "stat":
        model["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    elif panel.type == "table":
        model["targets"] = [{**t, "format": "table", "instant": True} for t in model["targets"]]
    return model


def dashboard_model(d: Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model: rows as row panels, panels laid out left to right."""
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for row in d.rows:
        panels.append({"id": next_id, "type": "row", "title": row.title, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y}})  # fmt: skip
        next_id, y, x, tallest = next_id + 1, y + 1, 0, 0
        for panel in row.panels:
            if x + panel.width > WIDTH:
                x, y, tallest = 0, y + tallest, 0
            panels.append(_panel(panel, next_id, x, y, d.datasource))
            next_id, x, tallest = next_id + 1, x + panel.width, max(tallest, panel.height)
        y += tallest
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": ["roadside", "generated"],
        "editable": False,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "timezone": "browser",
        "refresh": d.refresh,
        "time": {"from": d.time_from, "to": "now"},
        "templating": {"list": list(d.variables)},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def rendered() -> dict[str, str]:
    """File name -> the JSON text to commit, for every dashboard."""
    return {
        f"{d.uid}.json": json.dumps(dashboard_model(d), indent=2, sort_keys=True) + "\n" for d in DASHBOARDS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) compose/grafana/dashboards/*.json.")
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    wanted = rendered()
    if args.check:
        stale = sorted(n for n, text in wanted.items() if not (args.out / n).is_file()
                       or (args.out / n).read_text(encoding="utf-8") != text)  # fmt: skip
        extra = sorted(p.name for p in args.out.glob("*.json") if p.name not in wanted)
        for name in stale + extra:
            print(f"{args.out / name}: differs from the generator; run python compose/grafana/generate.py")
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in wanted.items():
        (args.out / name).write_text(text, encoding="utf-8")
    for stale_file in args.out.glob("*.json"):
        if stale_file.name not in wanted:
            stale_file.unlink()
    print(f"wrote {', '.join(sorted(wanted))} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
