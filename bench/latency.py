"""Event latency, frame captured → city system: ``python -m bench.latency [--agents 4] [--seconds 30]``.

A real Mosquitto (mTLS, ACLs), a real hub (``roadside hub run``, its own
process, SQLite store) and ``--agents`` real agents (``roadside agent run``,
each its own process with a realtime synthetic camera, the shipped detector
on the CPU, the durable outbox and the MQTT uplink). Three city-system
clients in this process watch for the agents' detection events:

- ``event_api``: a client polling ``GET /v1/events`` every ``--poll-ms``;
  an event counts as seen when the response that first holds it arrives.
- ``sse``: a client reading ``GET /v1/events/stream``.
- ``webhook``: an HTTP receiver this bench runs, registered through
  ``POST /v1/webhooks``; each delivery's signature is verified.

Latency is the time an event is seen minus its ``ts``: the capture time of
the frame it was detected in, as the agent's camera stamped it
(:class:`roadside.edge.sources.Frame`), carried in the event itself; every
process runs on this one machine's clock. A tap on the broker (a hub
identity of its own, opening the envelopes with the hub's key, never
committing a replay window) also notes when each event's message passed the
broker (``broker_*``) and the envelope's own timestamp, when the agent's
uplink sealed it for sending (``sealed_*``). That splits the path: capture →
sealed is the agent's pipeline and outbox, sealed → broker the link, and
``hub_*`` (broker → API/SSE/webhook, event by event) the hub's share.

After ``--seconds`` the agents are stopped (SIGTERM: they send what they
hold) and the bench waits until every event stored is seen on all three
paths, or ``--settle`` seconds. ``stored`` is what the API returns for the
whole run; ``*_missing`` what a path never showed. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

import httpx

import roadside
from bench.fleet import enroll_fleet
from roadside.cloud.api.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from roadside.cloud.broker.mosquitto import MosquittoBroker
from roadside.cloud.home import HubHome, acl_devices, hub_identity, init_home
from roadside.cloud.registry import Registry
from roadside.mqttlink import Message, MqttSession, SessionConfig, TlsFiles
from roadside.shared.envelope import HubOpener
from roadside.shared.keys import PublicKeys

log = logging.getLogger("bench.latency")

PATHS: Final = ("event_api", "sse", "webhook")
BROKER: Final = "broker"
SEALED: Final = "sealed"  # the envelope's own timestamp: when the agent's uplink sealed it
TAPPED: Final = (SEALED, BROKER)
TAP_ID: Final = "hub-latency-tap"
_API_URL: Final = re.compile(r"hub API on (http://[0-9.]+:[0-9]+)")


# --- the pure part: sightings and their figures ---------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def summary(name: str, latencies_ms: Sequence[float]) -> dict[str, float | int | None]:
    """``<name>_p50_ms``, ``_p95_ms``, ``_p99_ms``, ``_max_ms`` and ``_count``."""
    figures: dict[str, float | int | None] = {f"{name}_count": len(latencies_ms)}
    for label, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)):
        figures[f"{name}_{label}_ms"] = round(percentile(latencies_ms, q), 1) if latencies_ms else None
    return figures


def parse_ts(text: str) -> float:
    """An event's ``ts`` (ISO 8601, ``Z`` or an offset) as epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Sightings:
    """When each event was first seen on each path; thread-safe."""

    captured: dict[str, float] = field(default_factory=dict)  # event id -> capture time (epoch s)
    seen: dict[str, dict[str, float]] = field(default_factory=lambda: {p: {} for p in (*PATHS, *TAPPED)})
    duplicates: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*PATHS, *TAPPED), 0))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, path: str, event: dict[str, Any], at: float) -> None:
        """``event`` (the API's JSON shape, or the wire's) was seen on ``path`` at ``at``."""
        event_id = str(event["event_id"])
        with self.lock:
            self.captured.setdefault(event_id, parse_ts(str(event["ts"])))
            first = self.seen[path]
            if event_id in first:
                self.duplicates[path] += 1
            else:
                first[event_id] = at

    def oldest_unseen(self, path: str) -> float | None:
        """The capture time of the oldest event another path showed and ``path`` did not yet."""
        with self.lock:
            waiting = [ts for eid, ts in self.captured.items() if eid not in self.seen[path]]
        return min(waiting) if waiting else None

    def enough(self, events: int | None) -> bool:
        """True once the broker tap saw ``events`` events (never, for ``None``)."""
        with self.lock:
            return events is not None and len(self.seen[BROKER]) >= events

    def complete(self, stored: set[str]) -> bool:
        with self.lock:
            return all(stored <= self.seen[p].keys() for p in PATHS)

    def figures(self, stored: set[str]) -> dict[str, Any]:
        """Latency figures per path over the stored events, and what each path missed."""
        out: dict[str, Any] = {"stored": len(stored)}
        with self.lock:
            for path in (*PATHS, *TAPPED):
                seen = self.seen[path]
                latencies = [(seen[e] - self.captured[e]) * 1000.0 for e in stored if e in seen]
                out.update(summary(path, latencies))
                out[f"{path}_missing"] = len(stored - seen.keys())
                if path in ("sse", "webhook"):  # the poller and the tap see events again by design
                    out[f"{path}_duplicates"] = self.duplicates[path]
            # The hub's share alone: the broker tap to each path, event by event.
            tap = self.seen[BROKER]
            for path in PATHS:
                seen = self.seen[path]
                hub_ms = [(seen[e] - tap[e]) * 1000.0 for e in stored if e in seen and e in tap]
                out[f"hub_{path}_p50_ms"] = round(percentile(hub_ms, 0.5), 1) if hub_ms else None
                out[f"hub_{path}_p99_ms"] = round(percentile(hub_ms, 0.99), 1) if hub_ms else None
        return out


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The events of an SSE text stream (``data:`` lines; comments and ids skipped)."""
    for line in lines:
        if line.startswith("data:"):
            yield json.loads(line[5:].strip())


# --- the I/O shell -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from roadside.cli import main; main()", *args]


def start_hub(
    home: HubHome, broker_port: int, workdir: Path, hub_config: dict[str, Any]
) -> tuple[subprocess.Popen[bytes], str]:
    """``roadside hub run`` in its own process; returns it and its API URL once it is subscribed."""
    config = workdir / "hub.json"
    settings = {
        "broker_port": broker_port,
        "api_port": 0,
        "repo_port": -1,
        "api_rate_per_s": 1000.0,  # the polling client asks 40 times a second
        "api_rate_burst": 1000,
        "webhook_allow_networks": ["127.0.0.0/8"],  # the receiver runs here
        **hub_config,
    }
    config.write_text(json.dumps(settings))
    log_file = workdir / "hub.log"
    command = _cli("hub", "run", "--home", str(home.root), "--config", str(config), "--log-level", "INFO")
    process = subprocess.Popen(command, stdout=log_file.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    api_url = ""
    while True:
        text = log_file.read_text(errors="replace")
        if not api_url and (found := _API_URL.search(text)) is not None:
            api_url = found.group(1)
        if api_url and "hub subscribed" in text:
            return process, api_url
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the hub did not start: {text[-2000:]}")
        time.sleep(0.05)


def start_agent(
    bundle_path: Path, index: int, fps: float, workdir: Path, settings: dict[str, Any] | None = None
) -> subprocess.Popen[bytes]:
    """``roadside agent run`` with a realtime synthetic camera, in its own process (``settings``: more
    top-level agent settings, e.g. ``frame_queue``)."""
    folder = workdir / f"agent-{index}"
    folder.mkdir()
    config = folder / "agent.json"
    config.write_text(json.dumps({
        "sources": [{"type": "synthetic", "name": "cam0", "seed": index, "fps": fps}],
        "outbox": {"path": str(folder / "outbox.db")},
        **(settings or {}),
    }))  # fmt: skip
    command = _cli(
        "agent", "run", "--bundle", str(bundle_path), "--config", str(config), "--log-level", "WARNING"
    )
    log_file = folder / "agent.log"
    return subprocess.Popen(command, stdout=log_file.open("wb"), stderr=subprocess.STDOUT)


def wait_publishing(
    status_files: list[Path], agents: list[subprocess.Popen[bytes]], timeout_s: float = 180.0
) -> None:
    """Until every agent's uplink is connected (its status file says so): they load a model first."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = []
        for path in status_files:
            with contextlib.suppress(OSError, ValueError):
                states.append(json.loads(path.read_text()).get("state"))
        if states.count("publishing") == len(status_files):
            return
        if any(a.poll() is not None for a in agents) or time.monotonic() > deadline:
            raise RuntimeError(f"the agents did not connect: {states}")
        time.sleep(0.1)


class WebhookReceiver:
    """A city system's webhook endpoint on loopback: verifies each delivery, notes its events."""

    def __init__(self, sightings: Sightings, secret: str) -> None:
        self.sightings = sightings
        self.refused = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                at = time.time()
                ok = verify_signature(
                    secret,
                    self.headers.get(TIMESTAMP_HEADER, ""),
                    body,
                    self.headers.get(SIGNATURE_HEADER, ""),
                    now=at,
                )
                self.send_response(204 if ok else 401)
                self.end_headers()
                if not ok:
                    receiver.refused += 1
                    return
                for event in json.loads(body)["events"]:
                    receiver.sightings.note("webhook", event, at)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="webhook-receiver", daemon=True
        )

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class SseReader:
    """A client of ``/v1/events/stream``, noting each event as its message arrives."""

    def __init__(self, api_url: str, token: str, sightings: Sightings) -> None:
        self.client = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token}"},
                                   timeout=httpx.Timeout(10.0, read=None))  # fmt: skip
        self.sightings = sightings
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sse-reader", daemon=True)

    def _run(self) -> None:
        with self.client.stream("GET", "/v1/events/stream") as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith(": connected"):
                    self.connected.set()
                if line.startswith("data:"):
                    at = time.time()
                    for event in sse_events(iter([line])):
                        self.sightings.note("sse", event, at)

    def __enter__(self) -> SseReader:
        self._thread.start()
        if not self.connected.wait(10):
            raise RuntimeError("the event stream did not connect")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self.client.close()  # ends the read the thread is blocked in
        self._thread.join(5)


class ApiPoller:
    """A client polling ``/v1/events`` every ``interval_s`` over a window that trails the clock."""

    def __init__(
        self, api: httpx.Client, sightings: Sightings, interval_s: float, lookback_s: float = 5.0
    ) -> None:
        self.api = api
        self.sightings = sightings
        self.interval_s = interval_s
        self.lookback_s = lookback_s
        self.polls = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-poller", daemon=True)

    def _run(self) -> None:
        next_due = time.monotonic()
        while not self._stop.is_set():
            now = time.time()
            start = now - self.lookback_s
            behind = self.sightings.oldest_unseen("event_api")  # seen elsewhere, not here yet
            if behind is not None:
                start = min(start, behind - 0.001)
            try:
                for event, at in events_since(self.api, start, now + 60):
                    self.sightings.note("event_api", event, at)
            except httpx.HTTPError as exc:
                self.errors += 1
                log.warning("polling /v1/events failed: %s", exc)
            self.polls += 1
            next_due += self.interval_s
            self._stop.wait(max(0.0, next_due - time.monotonic()))

    def __enter__(self) -> ApiPoller:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def events_since(api: httpx.Client, start: float, end: float) -> Iterator[tuple[dict[str, Any], float]]:
    """Every event in ``[start, end)`` (epoch s), page by page, each with when its page arrived."""
    params: dict[str, Any] = {
        "from": datetime.fromtimestamp(start, UTC).isoformat(),
        "to": datetime.fromtimestamp(end, UTC).isoformat(),
        "limit": 1000,
    }
    while True:
        response = api.get("/v1/events", params=params)
        at = time.time()
        response.raise_for_status()
        page = response.json()
        for event in page["events"]:
            yield event, at
        if not page["next_cursor"]:
            return
        params = {"cursor": page["next_cursor"], "limit": 1000}


class BrokerTap:
    """A subscriber on every device's events topic that opens each envelope (never commits a
    replay window: the hub's are its own) and notes when the event passed the broker."""

    def __init__(self, home: HubHome, registry: Registry, port: int, sightings: Sightings) -> None:
        files = hub_identity(home, registry, TAP_ID)

        def keys(device_id: str, kid: str) -> PublicKeys | None:
            found = registry.devices.key(device_id, kid)
            return found[1] if found else None

        self.opener = HubOpener([home.hub_keys()], keys, max_age_s=3600)
        self.sightings = sightings
        self.subscribed = threading.Event()
        config = SessionConfig("127.0.0.1", port, TAP_ID, tls=TlsFiles(home.ca_file, files.cert, files.key))
        self.session = MqttSession(
            config,
            on_connect=lambda s, _ack: s.subscribe("roadside/v1/+/+/events", qos=0),
            on_subscribe=lambda _ack: self.subscribed.set(),
            on_message=self._on_message,
        )

    def _on_message(self, message: Message) -> None:
        at = time.time()
        opened = self.opener.open(message.payload, int(at * 1000))
        for event in json.loads(opened.plaintext)["records"]:
            self.sightings.note(BROKER, event, at)
            self.sightings.note(SEALED, event, opened.header.ts_ms / 1000.0)

    def __enter__(self) -> BrokerTap:
        self.session.connect()
        self.session.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("the broker tap could not subscribe")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.session.disconnect()
        self.session.loop_stop()


@dataclass(frozen=True)
class RunConfig:
    agents: int = 4
    seconds: float = 30.0
    fps: float = 10.0
    poll_ms: float = 25.0
    settle_s: float = 20.0
    hub: dict[str, Any] = field(default_factory=dict)  # extra hub settings (e.g. batch_wait_s)
    agent: dict[str, Any] = field(default_factory=dict)  # extra agent settings (e.g. frame_queue)
    stop_after_events: int | None = None  # end sooner, once the agents sent this many events (tests)


@dataclass
class Rig:
    """What a run starts before the agents: broker, registry, enrolled devices, the hub."""

    home: HubHome
    broker: MosquittoBroker
    registry: Registry
    bundles: list[Path]
    reader_token: str = ""
    admin_token: str = ""
    hub: subprocess.Popen[bytes] | None = None
    api_url: str = ""


@contextlib.contextmanager
def hub_rig(config: RunConfig, workdir: Path) -> Iterator[Rig]:
    """A broker, ``config.agents`` enrolled devices, API keys and a running hub; all stopped after."""
    home = init_home(workdir / "hub", ["localhost"], ["127.0.0.1"])
    broker = MosquittoBroker(
        home.broker_dir, ca_cert_pem=home.ca_file.read_bytes(), server=home.broker_server_cert()
    )
    registry = Registry(home.registry_url)
    rig = Rig(home, broker, registry, [])
    try:
        broker.start()
        bundles = enroll_fleet(home, registry, config.agents, broker.port, site="latency")
        rig.bundles = [home.bundles / f"{b.device_id}.json" for b in bundles]
        hub_identity(home, registry, TAP_ID)  # every identity before the reload (see bench.ingest)
        broker.reload_acl(acl_devices(registry))
        rig.reader_token = registry.api_clients.create("bench-latency", ["read:telemetry"])
        rig.admin_token = registry.api_clients.create("bench-latency-admin", ["admin"])
        rig.hub, rig.api_url = start_hub(home, broker.port, workdir, config.hub)
        yield rig
    finally:
        if rig.hub is not None:
            rig.hub.send_signal(signal.SIGTERM)
            try:
                rig.hub.wait(60)
            except subprocess.TimeoutExpired:
                rig.hub.kill()
        registry.close()
        broker.stop()


@contextlib.contextmanager
def running_agents(rig: Rig, config: RunConfig, workdir: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The agents, started and connected; killed on the way out if still running."""
    agents: list[subprocess.Popen[bytes]] = []
    try:
        agents = [
            start_agent(path, i, config.fps, workdir, config.agent) for i, path in enumerate(rig.bundles)
        ]
        wait_publishing([workdir / f"agent-{i}" / "outbox.uplink.json" for i in range(len(agents))], agents)
        yield agents
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)


def stop_agents(agents: list[subprocess.Popen[bytes]]) -> list[int | None]:
    """SIGTERM each (they send what they hold); their exit codes."""
    for agent in agents:
        agent.send_signal(signal.SIGTERM)
    for agent in agents:
        agent.wait(60)
    return [a.returncode for a in agents]


def run(config: RunConfig, workdir: Path) -> dict[str, Any]:
    """The whole measurement; see the module docstring."""
    sightings = Sightings()
    secret = "whsec_" + secrets.token_urlsafe(24)
    with hub_rig(config, workdir) as rig, contextlib.ExitStack() as stack:
        api = stack.enter_context(_client(rig.api_url, rig.reader_token))
        began = time.time()
        receiver = stack.enter_context(WebhookReceiver(sightings, secret))
        with _client(rig.api_url, rig.admin_token) as admin:
            admin.post("/v1/webhooks", json={"url": receiver.url, "secret": secret}).raise_for_status()
        stack.enter_context(SseReader(rig.api_url, rig.reader_token, sightings))
        stack.enter_context(BrokerTap(rig.home, rig.registry, rig.broker.port, sightings))
        poller = stack.enter_context(ApiPoller(api, sightings, config.poll_ms / 1000.0))
        with running_agents(rig, config, workdir) as agents:
            deadline = time.monotonic() + config.seconds
            while time.monotonic() < deadline and not sightings.enough(config.stop_after_events):
                time.sleep(0.1)
            exit_codes = stop_agents(agents)
        deadline = time.monotonic() + config.settle_s
        stored = _stored(api, began)
        while not sightings.complete(stored) and time.monotonic() < deadline:
            time.sleep(0.2)
            stored = _stored(api, began)
        return {
            "benchmark": "latency",
            "agents": config.agents,
            "seconds": config.seconds,
            "fps": config.fps,
            "poll_ms": config.poll_ms,
            "hub_settings": config.hub,
            "agent_settings": config.agent,
            **sightings.figures(stored),
            "api_polls": poller.polls,
            "api_poll_errors": poller.errors,
            "webhook_refused": receiver.refused,
            "agent_exit_codes": exit_codes,
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "code": str(Path(roadside.__file__).resolve().parent),
        }


def _client(api_url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _stored(api: httpx.Client, began: float) -> set[str]:
    """The ids of every event the API returns for the run (from a minute before it began)."""
    return {str(e["event_id"]) for e, _ in events_since(api, began - 60, time.time() + 60)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the agents run")
    parser.add_argument("--fps", type=float, default=10.0, help="each agent's camera rate")
    parser.add_argument("--poll-ms", type=float, default=25.0, help="the API client's polling period")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to wait for stragglers")
    parser.add_argument("--hub-setting", action="append", default=[], metavar="KEY=JSON",
                        help="an extra hub setting, e.g. batch_wait_s=0.1 (repeat)")  # fmt: skip
    parser.add_argument("--agent-setting", action="append", default=[], metavar="KEY=JSON",
                        help="an extra agent setting, e.g. frame_queue=1 (repeat)")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=None, help="a new folder to run in and keep")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    hub = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.hub_setting)}
    agent = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.agent_setting)}
    config = RunConfig(args.agents, args.seconds, args.fps, args.poll_ms, args.settle, hub, agent)
    if args.workdir is not None:  # kept afterwards: the hub's and agents' logs
        args.workdir.mkdir(parents=True, exist_ok=False)
        print(json.dumps(run(config, args.workdir)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        print(json.dumps(run(config, Path(tmp))))


if __name__ == "__main__":
    main()
