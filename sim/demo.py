"""``roadside demo``: the whole loop on one machine with embedded defaults.

A Mosquitto configured here (mutual TLS, ACLs generated from the registry, a
free loopback port), the hub on SQLite, and two enrolled agents on synthetic
streams, each in its own process as on a real pole. The figures printed at
the end are read back from the API, not from memory.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from roadside.cloud.broker.mosquitto import MosquittoBroker
from roadside.cloud.console.link_cli import link_url
from roadside.cloud.console.links import issue, load_or_create_key
from roadside.cloud.home import acl_devices, enroll_device, init_home
from roadside.cloud.hub import Hub
from roadside.cloud.registry import Registry
from roadside.cloud.settings import HubSettings
from roadside.shared.bundle import BrokerAddress
from roadside.shared.errors import RoadsideError
from roadside.shared.logs import setup_logging

log = logging.getLogger(__name__)

DEMO_DEVICES = (("demo-01", "main-st"), ("demo-02", "oak-ave"))


def _agent_config(workdir: Path, device_id: str, seed: int, interval_s: int) -> Path:
    config = {
        "sources": [{"type": "synthetic", "name": "cam0", "seed": seed, "fps": 10, "realtime": True}],
        "interval_s": interval_s,
        "heartbeat_s": 5,
        "outbox": {"path": str(workdir / "agents" / device_id / "outbox.db")},
    }
    path = workdir / "agents" / device_id / "agent.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path


def start_agent(workdir: Path, device_id: str, bundle: Path, config: Path) -> subprocess.Popen[bytes]:
    """``roadside agent run`` in its own process and session, as on a pole; its log goes to the workdir."""
    log_file = (workdir / "agents" / device_id / "agent.log").open("wb")
    command = [sys.executable, "-c", "from roadside.cli import main; main()", "agent", "run"]
    command += ["--bundle", str(bundle), "--config", str(config)]
    return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)


class ApiReader:
    """Reads the figures back from the hub's API, as a city system would."""

    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params={k: v for k, v in params.items() if v is not None})
        response.raise_for_status()
        return response.json()

    def devices(self) -> list[dict[str, Any]]:
        body = self.get("/v1/devices")
        return list(body["devices"] if isinstance(body, dict) else body)

    def count_rows(self, since: datetime, bucket_s: int) -> list[dict[str, Any]]:
        until = datetime.now(UTC) + timedelta(minutes=5)
        body = self.get(
            "/v1/counts", **{"from": since.isoformat(), "to": until.isoformat(), "bucket": bucket_s}
        )
        return list(body["rows"])

    def event_count(self, since: datetime) -> int:
        """All events since ``since``, following the API's cursor (a page holds at most 1000)."""
        until = datetime.now(UTC) + timedelta(minutes=5)
        params: dict[str, Any] = {"from": since.isoformat(), "to": until.isoformat(), "limit": 1000}
        total = 0
        while True:
            body = self.get("/v1/events", **params)
            total += len(body["events"])
            cursor = body.get("next_cursor")
            if not cursor:
                return total
            params["cursor"] = cursor

    def close(self) -> None:
        self.client.close()


def _table(rows: list[dict[str, Any]], devices: list[dict[str, Any]]) -> Table:
    table = Table(title="Roadside demo: counts by device, line, class and direction")
    for column in ("bucket", "device", "line", "class", "dir", "count"):
        table.add_column(column)
    for row in rows[-20:]:
        table.add_row(
            str(row["bucket_start"])[11:19],
            row["device"],
            row["line"],
            row["cls"],
            row["direction"],
            str(row["count"]),
        )
    online = sum(1 for d in devices if d.get("online"))
    table.caption = f"{len(devices)} devices, {online} online"
    return table


def _scenario(
    scenario: str,
    duration: float | None,
    home: Path | None,
    sumocfg: Path | None,
    camera_pose: Path | None,
    console: Console,
) -> None:
    """The scenarios that live in modules of their own (SUMO's and air quality's imports stay out of the rest)."""
    if scenario == "intersection":
        from roadside.sim.signal_ways import demo_intersection

        demo_intersection(duration, home, sumocfg, camera_pose, console)
    else:
        from roadside.sim.air_demo import demo_air

        demo_air(duration, home, console)


def demo(
    duration: Annotated[
        float | None, typer.Option(help="Run this many seconds, then print a JSON summary.")
    ] = None,
    interval: Annotated[int, typer.Option(help="Counting interval of the agents, seconds.")] = 10,
    home: Annotated[
        Path | None, typer.Option(help="Keep the demo's state here instead of a temp dir.")
    ] = None,
    scenario: Annotated[
        str,
        typer.Option(
            help="live: counts on two streets. drift: fog rolls in, hard examples flow up, the hub "
            "retrains, gates, publishes and rolls out, accuracy recovers (needs --duration). "
            "intersection: one SUMO demand under fixed-time, SUMO-actuated and Roadside-fed control "
            "(docs/signals.md; --duration is simulated seconds). air: two poles' air sensors and "
            "traffic, calibration, an NO2 exceedance, the index and the traffic link (docs/air-quality.md)."
        ),
    ] = "live",
    sumocfg: Annotated[
        Path | None, typer.Option(help="intersection: another SUMO network's .sumocfg.")
    ] = None,
    camera_pose: Annotated[
        Path | None, typer.Option(help="intersection: camera pose file for that network.")
    ] = None,
) -> None:
    """Start broker, hub and two agents on this machine; show live counts (or run the drift scenario)."""
    setup_logging("WARNING")
    console = Console(stderr=True)
    # SIGTERM (a service manager, `kill`) stops the demo like Ctrl-C: its agents and broker are stopped too.
    signal.signal(signal.SIGTERM, _interrupt)
    if scenario == "drift":
        _drift(duration, home, console)
        return
    if scenario in ("intersection", "air"):
        _scenario(scenario, duration, home, sumocfg, camera_pose, console)
        return
    if scenario != "live":
        console.print(f"error: unknown scenario {scenario!r}; choose live, drift, intersection or air")
        raise typer.Exit(2)
    workdir = home or Path(tempfile.mkdtemp(prefix="roadside-demo-"))
    started = datetime.now(UTC) - timedelta(seconds=interval)
    hub_home = init_home(workdir, ["localhost"], ["127.0.0.1"], force=True)
    broker = MosquittoBroker(
        hub_home.broker_dir, ca_cert_pem=hub_home.ca_file.read_bytes(), server=hub_home.broker_server_cert()
    )
    agents: list[subprocess.Popen[bytes]] = []
    hub: Hub | None = None
    token = ""
    try:
        broker.start()
        registry = Registry(hub_home.registry_url)
        bundles = []
        for device_id, site in DEMO_DEVICES:
            _, path = enroll_device(
                hub_home, registry, device_id, site, BrokerAddress(host="127.0.0.1", port=broker.port)
            )
            bundles.append((device_id, path))
        broker.reload_acl(acl_devices(registry))
        token = registry.api_clients.create("demo-viewer", ["read:telemetry"], "demo")
        registry.api_clients.create("demo-operator", ["admin"], "demo")
        registry.close()
        hub = Hub(HubSettings(home=workdir, broker_port=broker.port, api_port=0))
        hub.start()
        if not hub.wait_ready(15):
            raise RoadsideError(f"the hub did not connect to the broker; see {broker.log_file}")
        for seed, (device_id, bundle) in enumerate(bundles):
            agents.append(
                start_agent(workdir, device_id, bundle, _agent_config(workdir, device_id, seed, interval))
            )
        console.print(f"[bold]API[/bold] {hub.api_url}  (token: {token})")
        _print_console(console, hub.api_url, workdir)
        console.print(f"[bold]broker[/bold] mqtts://127.0.0.1:{broker.port}  state in {workdir}")
        _watch(hub.api_url, token, started, interval, duration, console)
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        stop_agents(agents)
        summary = _finish(hub, token, started, interval, workdir) if hub else None
        if hub is not None:
            hub.stop()
        broker.stop()
    if summary is not None and duration is not None:
        print(json.dumps(summary))


def _print_console(console: Console, api_url: str, workdir: Path) -> None:
    """The console's address and a one-time sign-in link for the demo's operator (an hour to use it)."""
    sign_in = issue(load_or_create_key(workdir), "demo-operator", time.time(), ttl_s=3600)
    console.print(f"[bold]console[/bold] {api_url}/ui  (sign in once as demo-operator within an hour:")
    console.print(f"  {link_url(api_url, sign_in)} )", soft_wrap=True)


def _drift(duration: float | None, home: Path | None, console: Console) -> None:
    from roadside.sim.drift import run_drift

    try:
        drift = run_drift(duration or 600.0, home, console=console)
    except KeyboardInterrupt:
        console.print("stopped")
        raise typer.Exit(130) from None
    except RoadsideError as exc:
        console.print(f"error: {exc}")
        raise typer.Exit(2) from exc
    print(json.dumps(drift))


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _watch(
    api_url: str, token: str, since: datetime, interval: int, duration: float | None, console: Console
) -> None:
    reader = ApiReader(api_url, token)
    deadline = time.monotonic() + duration if duration is not None else None
    try:
        with Live(console=console, refresh_per_second=1, transient=duration is not None) as live:
            while deadline is None or time.monotonic() < deadline:
                try:
                    live.update(_table(reader.count_rows(since, interval), reader.devices()))
                except httpx.HTTPError as exc:
                    log.warning("API not answering yet: %s", exc)
                time.sleep(min(2.0, max(0.0, deadline - time.monotonic())) if deadline else 2.0)
    finally:
        reader.close()


def stop_agents(agents: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM: each agent closes its open interval and drains its outbox, then exits."""
    for process in agents:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in agents:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _finish(hub: Hub, token: str, since: datetime, interval: int, workdir: Path) -> dict[str, Any]:
    """Wait until ingest is quiet, then read the figures back from the API."""
    last, quiet_since = -1, time.monotonic()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stored = hub.ingest.stored_messages + hub.ingest.rejected_messages
        if stored != last:
            last, quiet_since = stored, time.monotonic()
        elif time.monotonic() - quiet_since > 1.5 and hub.ingest.queue.qsize() == 0:
            break
        time.sleep(0.1)
    reader = ApiReader(hub.api_url, token)
    try:
        rows = reader.count_rows(since, interval)
        return {
            "devices": len(reader.devices()),
            "events": reader.event_count(since),
            "count_rows": len(rows),
            "counted_objects": sum(int(r["count"]) for r in rows),
            "rejected": hub.ingest.rejected_messages,
            "api": hub.api_url,
            "state": str(workdir),
        }
    finally:
        reader.close()
