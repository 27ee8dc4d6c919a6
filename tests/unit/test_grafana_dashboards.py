"""The compose stack's Grafana dashboards (compose/grafana/generate.py): committed JSON equals the
generator's output, every query names a metric the code registers (or a measurement, field and tag
the hub writes to InfluxDB), and each file is a well-formed dashboard that the provisioning loads."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import tomllib
import uuid
from collections import Counter as Tally
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from roadside.cloud.api.app import RequestMetrics
from roadside.cloud.ingest.metrics import IngestMetrics
from roadside.cloud.signals.calls import CallMetrics
from roadside.cloud.storage.base import IngestBatch, Origin
from roadside.cloud.storage.influx import batch_points
from roadside.shared.schemas import CountRecord, DetectionEvent, Health, SensorReading, StreamHealth

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
GRAFANA = COMPOSE / "grafana"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("roadside_grafana_generate", GRAFANA / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def committed() -> dict[str, dict[str, Any]]:
    return {
        p.name: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((GRAFANA / "dashboards").glob("*.json"))
    }


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


# -- generated, not hand-edited ---------------------------------------------------------------


def test_committed_json_is_the_generators_output(tmp_path: Path) -> None:
    files = {p.name: p.read_text(encoding="utf-8") for p in (GRAFANA / "dashboards").glob("*.json")}
    assert files == GEN.rendered(), "run python compose/grafana/generate.py and commit its output"
    assert GEN.main(["--check"]) == 0
    (tmp_path / "roadside-hub.json").write_text("{}", encoding="utf-8")
    (tmp_path / "hand-made.json").write_text("{}", encoding="utf-8")
    assert GEN.main(["--check", "--out", str(tmp_path)]) == 1  # an edited file and a stray one are both found


# -- Prometheus: names the code registers -----------------------------------------------------

# A registration: a prometheus_client metric, a custom collector's family, or edge/metrics.py's helpers.
_REGISTRATION = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary|CounterMetricFamily|GaugeMetricFamily|_gauge|_counter)\(\s*\"(roadside_\w+)\""
)
_SUFFIXES = {
    "Counter": ("_total",), "CounterMetricFamily": ("_total",), "_counter": ("_total",),
    "Gauge": ("",), "GaugeMetricFamily": ("",), "_gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count"), "Summary": ("", "_sum", "_count"),
}  # fmt: skip


def registered_series() -> set[str]:
    """Every series name the hub's and the agent's code exposes, read from the source."""
    names: set[str] = set()
    for part in ("cloud", "edge"):
        for path in (ROOT / part).rglob("*.py"):
            for kind, name in _REGISTRATION.findall(path.read_text(encoding="utf-8")):
                base = name.removesuffix("_total") if kind == "Counter" else name
                names.update(base + suffix for suffix in _SUFFIXES[kind])
    return names


def test_the_source_scan_finds_what_a_real_registry_exposes() -> None:
    registry = CollectorRegistry()
    IngestMetrics(registry)
    RequestMetrics(registry)
    CallMetrics(registry)
    exposed = {
        s.name for family in registry.collect() for s in family.samples if not s.name.endswith("_created")
    }
    # Families with labels expose no sample until used; their declared names must still be found.
    declared = {family.name for family in registry.collect()}
    found = registered_series()
    assert exposed <= found
    assert all(any(n.startswith(d) for n in found) for d in declared)
    assert {"roadside_agent_stream_fps", "roadside_agent_outbox_dropped_total"} <= found  # edge/metrics.py


_IDENT = re.compile(r"\b(roadside_\w+)")


def prometheus_queries() -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for name, d in committed().items():
        for p in panels(d):
            if p["datasource"]["type"] == "prometheus":
                out += [(name, p["title"], t["expr"]) for t in p["targets"]]
        for v in d["templating"]["list"]:
            out.append((name, f"variable {v['name']}", v["query"]["query"]))
    return out


def test_every_promql_names_only_registered_metrics() -> None:
    known = registered_series()
    queries = prometheus_queries()
    assert len(queries) > 30
    for dashboard, title, expr in queries:
        names = _IDENT.findall(expr)
        assert names, f"{dashboard} / {title}: no roadside metric in {expr!r}"
        unknown = [n for n in names if n not in known]
        assert not unknown, f"{dashboard} / {title}: {unknown} are not registered by the code"
        assert _balanced(expr), f"{dashboard} / {title}: unbalanced brackets in {expr!r}"


def _balanced(text: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for ch in re.sub(r'"[^"]*"', "", text):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


# -- InfluxDB: what the hub writes ------------------------------------------------------------


def written_schema() -> dict[str, tuple[set[str], set[str]]]:
    """Measurement -> (tag keys, field keys), from the points the hub writes for a full envelope."""
    t = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    batch = IngestBatch(
        Origin("pole-1", "main-st", 1),
        counts=[CountRecord(interval_start=t, interval_s=60, line="north", cls="car", direction="in", count=3,
                            model_version="det-1")],
        events=[DetectionEvent(event_id=uuid.UUID(int=1), ts=t, type="line_crossing",
                               stream="cam0", cls="car", line="north", direction="in", track_id=1, confidence=0.9,
                               speed_kmh=42.0, model_version="det-1")],
        sensors=[SensorReading(ts=t, sensor="aq1", quantity="pm25", value=12.0, unit="µg/m³", quality="ok")],
        health=Health(ts=t, uptime_s=10, model_version="det-1", provider="CPUExecutionProvider",
                      streams={"cam0": StreamHealth(fps=9.0, dropped_frames=0)}, inference_p50_ms=8.0,
                      inference_p95_ms=12.0, outbox_backlog=0, cpu_percent=30.0, rss_mb=400.0),
    )  # fmt: skip
    schema: dict[str, tuple[set[str], set[str]]] = {}
    for point in batch_points(batch, 0):
        tags, fields = schema.setdefault(point.measurement, (set(), set()))
        tags.update(k for k, _ in point.tags)
        fields.update(k for k, _ in point.fields)
    return schema


def test_every_flux_query_reads_a_measurement_field_and_tags_the_hub_writes() -> None:
    schema = written_schema()
    seen = 0
    for name, d in committed().items():
        for p in panels(d):
            if p["datasource"]["type"] != "influxdb":
                continue
            for target in p["targets"]:
                flux = target["query"]
                where = f"{name} / {p['title']}"
                assert 'from(bucket: "roadside")' in flux, where
                assert "v.timeRangeStart" in flux, where
                (measurement,) = re.findall(r'r\._measurement == "(\w+)"', flux)
                assert measurement in schema, f"{where}: the hub writes no {measurement!r}"
                tags, fields = schema[measurement]
                assert set(re.findall(r'r\._field == "(\w+)"', flux)) <= fields, where
                for group in re.findall(r"group\(columns: \[([^\]]*)\]\)", flux):
                    assert set(re.findall(r'"(\w+)"', group)) <= tags, (
                        f"{where}: grouped by a tag never written"
                    )
                assert _balanced(flux), where
                seen += 1
    assert seen >= 8


# -- well-formed dashboards that the provisioning loads ---------------------------------------


def provisioned_datasources() -> dict[str, str]:
    config = yaml.safe_load((GRAFANA / "provisioning/datasources/roadside.yaml").read_text(encoding="utf-8"))
    return {ds["uid"]: ds["type"] for ds in config["datasources"]}


@pytest.mark.parametrize("name", sorted(GEN.rendered()))
def test_each_dashboard_is_a_valid_model(name: str) -> None:
    d = committed()[name]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"])
    assert name == f"{d['uid']}.json"
    assert d["title"]
    assert isinstance(d["schemaVersion"], int)
    assert d["time"]["from"].startswith("now-")
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) for i in ids)
    datasources = provisioned_datasources()
    cells: Tally[tuple[int, int]] = Tally()
    for p in d["panels"]:
        pos = p["gridPos"]
        assert pos["x"] >= 0, p["title"]
        assert pos["x"] + pos["w"] <= GEN.WIDTH, p["title"]
        assert pos["h"] > 0, p["title"]
        cells.update(
            (x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])
        )
    assert max(cells.values()) == 1, "panels overlap"
    for p in panels(d):
        assert p["type"] in {"timeseries", "stat", "table"}, p
        assert p["title"], p
        assert datasources.get(p["datasource"]["uid"]) == p["datasource"]["type"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs, p["title"]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]
            assert (t.get("expr") or t.get("query") or "").strip(), p["title"]
    for v in d["templating"]["list"]:
        assert datasources.get(v["datasource"]["uid"]) == v["datasource"]["type"]


def test_uids_are_unique() -> None:
    uids = [d["uid"] for d in committed().values()]
    assert len(uids) == len(set(uids)) == 3


def test_compose_provisions_the_dashboards_and_scrapes_the_agent_port() -> None:
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text(encoding="utf-8"))
    grafana = compose["services"]["grafana"]
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/roadside.yaml").read_text(encoding="utf-8"))
    path = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in grafana["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert compose["services"]["prometheus"]["network_mode"] == "service:agent"
    scrape = yaml.safe_load((COMPOSE / "prometheus/prometheus.yml").read_text(encoding="utf-8"))
    targets = {t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    agent = tomllib.loads((COMPOSE / "agent/agent.toml").read_text(encoding="utf-8"))
    hub = tomllib.loads((COMPOSE / "hub/hub.toml").read_text(encoding="utf-8"))
    assert targets == {f"127.0.0.1:{agent['metrics_port']}", f"hub:{hub['api_port']}"}
