"""Push: Server-Sent Events and webhooks, against a real uvicorn server and a real HTTP receiver.

Events enter as the ingest writer hands them over, through ``LiveFeed.publish``;
they leave over HTTP, through the API's SSE stream on a loopback port, and
through the webhook dispatcher to a small HTTP(S) server on another one. The
hubs allow-list loopback for webhooks (as an operator would for a receiver on
the hub's machine) unless a test says otherwise; names resolve through the
system resolver, except ``*.example`` and ``*.test`` names, which a stub maps.
"""

from __future__ import annotations

import json
import queue
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from roadside.cloud.api.app import create_app
from roadside.cloud.api.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    IPAddress,
    IPNetwork,
    WebhookDestinations,
    WebhookDispatcher,
    WebhookStore,
    resolve_host,
    verify_signature,
)
from roadside.cloud.broker.pki import CertificateAuthority, write_issued
from roadside.cloud.fleet.live import EventFilter, LiveEvent, LiveFeed
from roadside.cloud.registry import Registry
from roadside.cloud.storage.sqlite import SqliteStore
from roadside.shared.keys import KeyPair
from roadside.shared.schemas import DetectionEvent, EventType

WAIT_S = 5.0
SECRET = "a-shared-secret-of-some-length"
LOOPBACK: tuple[IPNetwork, ...] = (ip_network("127.0.0.0/8"), ip_network("::1/128"))
# Names that are not in any DNS here: the public one stands for a city system on the internet,
# the .test one for a receiver on this machine reached by name (for TLS SNI).
STUB_DNS: dict[str, IPAddress] = {
    "city.example": ip_address("93.184.215.14"),
    "hooks.test": ip_address("127.0.0.1"),
}


def resolve(host: str, port: int) -> Sequence[IPAddress]:
    if host in STUB_DNS:
        return [STUB_DNS[host]]
    return resolve_host(host, port)


def event(type_: EventType = "wrong_way") -> DetectionEvent:
    return DetectionEvent(
        event_id=uuid.uuid4(),
        ts=datetime.now(UTC),
        type=type_,
        stream="north",
        cls="car",
        speed_kmh=42.0,
        model_version="det-1",
    )


# The hub's API on a loopback port ---------------------------------------------------------


@dataclass
class Hub:
    url: str
    live: LiveFeed
    registry: Registry
    webhooks: WebhookStore
    reader: str
    admin: str


@pytest.fixture
def make_hub(tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    """Start the API (with the given LiveFeed and SSE settings) under uvicorn on a free port."""
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.create_schema()
    registry.devices.enroll("cam-1", "site-a", KeyPair.generate().public())
    store = SqliteStore(tmp_path / "telemetry.db")
    stores: list[WebhookStore] = []
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def make(
        live: LiveFeed | None = None,
        heartbeat_s: float = 5.0,
        max_duration_s: float = 30.0,
        allowed: tuple[IPNetwork, ...] = LOOPBACK,
    ) -> Hub:
        live = live or LiveFeed()
        destinations = WebhookDestinations(allowed=allowed, resolve=resolve)
        webhooks = WebhookStore(tmp_path / f"webhooks-{len(stores)}.db", destinations=destinations)
        stores.append(webhooks)
        app: FastAPI = create_app(
            store=store,
            registry=registry,
            metrics_registry=CollectorRegistry(),
            live=live,
            webhooks=webhooks,
            rate_limit=None,
            sse_heartbeat_s=heartbeat_s,
            sse_max_duration_s=max_duration_s,
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="api-under-test")
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + WAIT_S
        while not server.started:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.01)
        n = len(servers)
        return Hub(
            f"http://127.0.0.1:{port}",
            live,
            registry,
            webhooks,
            registry.api_clients.create(f"dashboard-{n}", ["read:telemetry"]),
            registry.api_clients.create(f"ops-{n}", ["admin"]),
        )

    yield make
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)
    for webhooks in stores:
        webhooks.close()
    store.close()
    registry.close()


# SSE ------------------------------------------------------------------------------------------------


class SseReader:
    """Reads an event stream message by message; every read is bounded by the client's timeout."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()

    def message(self) -> list[str]:
        """The lines of the next message or comment block (up to a blank line)."""
        lines: list[str] = []
        for line in self._lines:
            if line == "":
                if lines:
                    return lines
                continue
            lines.append(line)
        return lines

    def next_event(self) -> dict[str, Any]:
        """Skip comments; the next event's data, with its SSE id checked against it."""
        while True:
            lines = self.message()
            assert lines, "the stream ended"
            if lines[0].startswith(":"):
                continue
            fields = dict(line.split(": ", 1) for line in lines)
            data: dict[str, Any] = json.loads(fields["data"])
            assert fields["id"] == data["event_id"]
            return data


@pytest.fixture
def stream(make_hub: Callable[..., Hub]) -> Iterator[Callable[..., tuple[Hub, SseReader]]]:
    clients: list[httpx.Client] = []
    contexts: list[Any] = []

    def open_stream(hub: Hub, **params: Any) -> SseReader:
        client = httpx.Client(timeout=WAIT_S)
        clients.append(client)
        context = client.stream(
            "GET",
            f"{hub.url}/v1/events/stream",
            params=params,
            headers={"Authorization": f"Bearer {hub.reader}"},
        )
        contexts.append(context)
        response = context.__enter__()
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(response)
        assert reader.message() == ["retry: 3000", ": connected"]  # subscribed from here on
        return reader

    def start(live: LiveFeed | None = None, **settings: float) -> tuple[Hub, SseReader]:
        hub = make_hub(live, **settings)
        return hub, open_stream(hub)

    start.open = open_stream  # type: ignore[attr-defined]
    yield start
    for context in contexts:
        context.__exit__(None, None, None)
    for client in clients:
        client.close()


def test_sse_delivers_published_events_in_order(stream: Callable[..., tuple[Hub, SseReader]]) -> None:
    hub, reader = stream()
    first, second = event(), event("stopped_vehicle")

    hub.live.publish("cam-1", "site-a", [first, second])

    got = [reader.next_event(), reader.next_event()]
    assert [g["event_id"] for g in got] == [str(first.event_id), str(second.event_id)]
    assert got[0]["device"] == "cam-1"
    assert got[0]["site"] == "site-a"
    assert got[0]["type"] == "wrong_way"
    assert got[0]["speed_kmh"] == 42.0


def test_sse_filters_by_device_site_and_type(
    stream: Callable[..., tuple[Hub, SseReader]], make_hub: Callable[..., Hub]
) -> None:
    hub, _ = stream()
    reader = stream.open(hub, site="site-a", type=["wrong_way", "stopped_vehicle"])  # type: ignore[attr-defined]
    wanted = event()

    hub.live.publish("cam-2", "site-b", [event()])
    hub.live.publish("cam-1", "site-a", [event("pedestrian_in_roadway"), wanted])

    assert reader.next_event()["event_id"] == str(wanted.event_id)


def test_sse_sends_heartbeats_while_idle(stream: Callable[..., tuple[Hub, SseReader]]) -> None:
    _, reader = stream(heartbeat_s=0.1)
    assert reader.message() == [": heartbeat"]
    assert reader.message() == [": heartbeat"]


def test_a_slow_client_loses_its_oldest_events_and_is_told(
    stream: Callable[..., tuple[Hub, SseReader]],
) -> None:
    hub, reader = stream(LiveFeed(queue_size=3))
    events = [event() for _ in range(10)]

    hub.live.publish("cam-1", "site-a", events)

    assert reader.message() == [": dropped 7"]
    assert [reader.next_event()["event_id"] for _ in range(3)] == [str(e.event_id) for e in events[7:]]


def test_a_stream_ends_after_its_maximum_duration(stream: Callable[..., tuple[Hub, SseReader]]) -> None:
    _, reader = stream(heartbeat_s=0.05, max_duration_s=0.3)
    started = time.monotonic()
    lines = []
    while message := reader.message():
        lines += message
    assert lines[-1] == ": stream ends; reconnect"
    assert time.monotonic() - started < WAIT_S


def test_the_feed_refuses_streams_past_its_cap_and_frees_them(
    stream: Callable[..., tuple[Hub, SseReader]],
) -> None:
    hub, reader = stream(LiveFeed(max_subscribers=1))
    refused = httpx.get(f"{hub.url}/v1/events/stream", headers={"Authorization": f"Bearer {hub.reader}"})
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "/problems/too-many-streams"
    assert refused.headers["retry-after"]

    reader.response.close()
    deadline = time.monotonic() + WAIT_S
    while hub.live.subscribers:  # the server notices the client left at its next write
        hub.live.publish("cam-1", "site-a", [event()])
        assert time.monotonic() < deadline, "the subscription outlived its client"
        time.sleep(0.02)


def test_publish_survives_a_failing_sink() -> None:
    feed = LiveFeed()
    seen: list[LiveEvent] = []

    def broken(_: Any) -> None:
        raise RuntimeError("sink bug")

    feed.add_sink(broken)
    feed.add_sink(seen.extend)
    feed.publish("cam-1", "site-a", [event()])
    assert len(seen) == 1
    assert feed.published == 1


# Webhooks --------------------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A city system's endpoint: records each request, answers from a script (then 204)."""

    statuses: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    requests: queue.Queue[tuple[dict[str, str], bytes]] = field(default_factory=queue.Queue)
    url: str = ""
    sni: list[str] = field(default_factory=list)

    def next(self) -> tuple[dict[str, str], bytes]:
        return self.requests.get(timeout=WAIT_S)


@contextmanager
def serving(context: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    """A receiver on a free loopback port; over TLS with ``context`` (recording the SNI it was sent)."""
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            receiver.requests.put(({k.lower(): v for k, v in self.headers.items()}, body))
            time.sleep(receiver.delay_s)
            self.send_response(receiver.statuses.pop(0) if receiver.statuses else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if context is not None:

        def record_sni(_sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
            receiver.sni.append(name or "")

        context.sni_callback = record_sni
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="webhook-receiver", daemon=True
    )
    thread.start()
    receiver.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/roadside"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving() as receiver:
        yield receiver


@contextmanager
def dispatching(hub: Hub, verify: ssl.SSLContext | bool = True) -> Iterator[WebhookDispatcher]:
    dispatcher = WebhookDispatcher(
        hub.webhooks, backoff_base_s=0.02, backoff_cap_s=0.1, max_attempts=4, timeout_s=2.0, verify=verify
    )
    hub.live.add_sink(dispatcher.offer)
    dispatcher.start()
    try:
        yield dispatcher
    finally:
        dispatcher.stop()


@pytest.fixture
def dispatched(make_hub: Callable[..., Hub]) -> Iterator[tuple[Hub, WebhookDispatcher]]:
    hub = make_hub()
    with dispatching(hub) as dispatcher:
        yield hub, dispatcher


def register(hub: Hub, **body: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{hub.url}/v1/webhooks", json=body, headers={"Authorization": f"Bearer {hub.admin}"}
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def webhook_state(hub: Hub, webhook_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{hub.url}/v1/webhooks/{webhook_id}", headers={"Authorization": f"Bearer {hub.admin}"}
    )
    state: dict[str, Any] = response.json()
    return state


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_webhooks_are_signed_and_carry_the_matching_events(
    dispatched: tuple[Hub, WebhookDispatcher], receiver: Receiver
) -> None:
    hub, _ = dispatched
    hook = register(hub, url=receiver.url, secret=SECRET, types=["wrong_way"])
    wrong_way = event()

    hub.live.publish("cam-1", "site-a", [event("stopped_vehicle"), wrong_way])

    headers, body = receiver.next()
    assert verify_signature(
        SECRET, headers[TIMESTAMP_HEADER.lower()], body, headers[SIGNATURE_HEADER.lower()], now=time.time()
    )
    assert not verify_signature(
        "another-secret-entirely", headers[TIMESTAMP_HEADER.lower()], body, headers[SIGNATURE_HEADER.lower()],
        now=time.time(),
    )  # fmt: skip
    document = json.loads(body)
    assert document["webhook_id"] == hook["id"]
    assert document["delivery_id"] == headers[DELIVERY_HEADER.lower()]
    assert [e["event_id"] for e in document["events"]] == [str(wrong_way.event_id)]
    assert document["events"][0]["device"] == "cam-1"
    assert headers["content-type"] == "application/json"
    wait_for(lambda: webhook_state(hub, hook["id"])["delivered"] == 1)


def test_failed_deliveries_are_retried_with_the_same_delivery_id(
    dispatched: tuple[Hub, WebhookDispatcher], receiver: Receiver
) -> None:
    hub, dispatcher = dispatched
    receiver.statuses = [503, 500]
    hook = register(hub, url=receiver.url, secret=SECRET)

    hub.live.publish("cam-1", "site-a", [event()])

    attempts = [receiver.next() for _ in range(3)]
    assert len({h[DELIVERY_HEADER.lower()] for h, _ in attempts}) == 1
    assert len({body for _, body in attempts}) == 1
    for headers, body in attempts:  # each attempt is signed afresh
        assert verify_signature(
            SECRET,
            headers[TIMESTAMP_HEADER.lower()],
            body,
            headers[SIGNATURE_HEADER.lower()],
            now=time.time(),
        )
    wait_for(lambda: webhook_state(hub, hook["id"])["delivered"] == 1)
    state = webhook_state(hub, hook["id"])
    assert (state["failed"], state["last_status"], state["last_error"]) == (2, 204, None)
    assert dispatcher.stats().gave_up == 0


def test_a_refusing_receiver_is_not_retried(
    dispatched: tuple[Hub, WebhookDispatcher], receiver: Receiver
) -> None:
    hub, dispatcher = dispatched
    receiver.statuses = [400]
    hook = register(hub, url=receiver.url, secret=SECRET)

    hub.live.publish("cam-1", "site-a", [event()])

    receiver.next()
    wait_for(lambda: dispatcher.stats().gave_up == 1)
    assert receiver.requests.empty()
    assert webhook_state(hub, hook["id"])["last_status"] == 400


def test_an_unreachable_receiver_is_given_up_after_max_attempts(
    dispatched: tuple[Hub, WebhookDispatcher],
) -> None:
    hub, dispatcher = dispatched
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    hook = register(hub, url=f"http://127.0.0.1:{port}/gone", secret=SECRET)

    hub.live.publish("cam-1", "site-a", [event()])

    wait_for(lambda: dispatcher.stats().gave_up == 1)
    state = webhook_state(hub, hook["id"])
    assert (state["failed"], state["delivered"], state["last_status"]) == (4, 0, None)
    assert state["last_error"] == "ConnectError"


def test_publishing_never_waits_for_a_slow_receiver(
    dispatched: tuple[Hub, WebhookDispatcher], receiver: Receiver
) -> None:
    hub, dispatcher = dispatched
    receiver.delay_s = 1.0
    register(hub, url=receiver.url, secret=SECRET)

    started = time.monotonic()
    for _ in range(200):
        hub.live.publish("cam-1", "site-a", [event()])
    assert time.monotonic() - started < 0.5
    assert dispatcher.stats().queued == 200


def test_webhook_secrets_are_shown_once_and_never_audited(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub()
    auth = {"Authorization": f"Bearer {hub.admin}"}
    created = httpx.post(
        f"{hub.url}/v1/webhooks",
        json={"url": "https://city.example/hook?token=abc", "site": "site-a"},
        headers=auth,
    )
    assert created.status_code == 201
    assert created.headers["cache-control"] == "no-store"
    hook = created.json()
    assert hook["secret"].startswith("whsec_")
    assert hook["site"] == "site-a"
    assert hook["created_by"] == "api:ops-1"

    listed = httpx.get(f"{hub.url}/v1/webhooks", headers=auth)
    assert [w["id"] for w in listed.json()["webhooks"]] == [hook["id"]]
    assert hook["secret"] not in listed.text
    assert hook["secret"] not in httpx.get(f"{hub.url}/v1/webhooks/{hook['id']}", headers=auth).text

    assert httpx.delete(f"{hub.url}/v1/webhooks/{hook['id']}", headers=auth).status_code == 204
    assert httpx.get(f"{hub.url}/v1/webhooks/{hook['id']}", headers=auth).status_code == 404
    assert httpx.delete(f"{hub.url}/v1/webhooks/{hook['id']}", headers=auth).status_code == 404
    entries = [e for e in hub.registry.audit.entries() if e.action.startswith("webhook.")]
    assert [(e.actor, e.action, e.subject) for e in entries] == [
        ("api:ops-1", "webhook.create", hook["id"]),
        ("api:ops-1", "webhook.delete", hook["id"]),
    ]
    assert entries[0].details["url"] == "https://city.example/hook?token=***"  # whole, secrets masked
    assert all(hook["secret"] not in json.dumps(e.details) for e in entries)


def test_the_webhook_file_is_readable_by_the_hub_only(tmp_path: Path) -> None:
    store = WebhookStore(
        tmp_path / "hooks" / "webhooks.db", destinations=WebhookDestinations(resolve=resolve)
    )
    store.create("https://city.example/hook", EventFilter(), created_by="test")
    store.close()
    assert (tmp_path / "hooks" / "webhooks.db").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://city.example/hook"},
        {"url": "https://user:pass@city.example/hook"},
        {"url": "/relative"},
        {"url": "https://city.example/hook", "secret": "short"},
        {"url": "https://city.example/hook", "types": ["ufo"]},
        {"url": "https://city.example/hook", "extra": 1},
    ],
)
def test_invalid_webhooks_are_a_422(make_hub: Callable[..., Hub], body: dict[str, Any]) -> None:
    hub = make_hub()
    response = httpx.post(
        f"{hub.url}/v1/webhooks", json=body, headers={"Authorization": f"Bearer {hub.admin}"}
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


def test_event_filters_match_device_site_and_types() -> None:
    live = LiveEvent("cam-1", "site-a", event())
    assert EventFilter().matches(live)
    assert EventFilter(device_id="cam-1", site="site-a", types=frozenset({"wrong_way"})).matches(live)
    assert not EventFilter(device_id="cam-2").matches(live)
    assert not EventFilter(site="site-b").matches(live)
    assert not EventFilter(types=frozenset({"stopped_vehicle"})).matches(live)


# Webhook destinations: no SSRF (issue 9, item 15) -------------------------------------------------


def post_webhook(hub: Hub, url: str) -> httpx.Response:
    return httpx.post(
        f"{hub.url}/v1/webhooks", json={"url": url}, headers={"Authorization": f"Bearer {hub.admin}"}
    )


def webhook_audit(hub: Hub) -> list[tuple[str, dict[str, Any]]]:
    return [
        (e.action, dict(e.details)) for e in hub.registry.audit.entries() if e.action.startswith("webhook.")
    ]


@pytest.mark.parametrize(
    "url",
    [
        "http://city.example:70000/hook",
        "http://city.example:65536/hook",
        "http://city.example:0/hook",
        "http://city.example:http/hook",
        "http://[::1/hook",
    ],
)
def test_a_webhook_with_a_bad_port_is_a_422_before_anything_is_stored(
    make_hub: Callable[..., Hub], url: str
) -> None:
    hub = make_hub()

    response = post_webhook(hub, url)

    assert response.status_code == 422, response.text
    assert [p["name"] for p in response.json()["invalid_params"]] == ["url"]
    assert hub.webhooks.list() == []
    assert webhook_audit(hub) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost:8080/hook",  # the system resolver: /etc/hosts
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hook",
        "http://192.168.1.1/hook",
        "http://100.64.0.1/hook",
        "http://0.0.0.0:8080/hook",
        "http://224.0.0.1/hook",
        "http://[fe80::1]/hook",
        "http://hooks.test/hook",  # a name for 127.0.0.1
    ],
)
def test_webhooks_to_internal_addresses_are_refused_and_audited(
    make_hub: Callable[..., Hub], url: str
) -> None:
    hub = make_hub(allowed=())

    response = post_webhook(hub, url + "?token=abc")

    assert response.status_code == 422, response.text
    problem = response.json()
    assert [p["name"] for p in problem["invalid_params"]] == ["url"]
    assert "webhook_allow_networks" in problem["invalid_params"][0]["reason"]
    assert hub.webhooks.list() == []
    [(action, details)] = webhook_audit(hub)
    assert action == "webhook.refuse"
    assert details["url"] == url + "?token=***"
    assert "abc" not in json.dumps(details)


def test_the_allow_list_admits_a_loopback_receiver_and_nothing_else(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub(allowed=(ip_network("127.0.0.1/32"),))

    assert post_webhook(hub, "http://127.0.0.1:8080/hook").status_code == 201
    assert post_webhook(hub, "http://hooks.test:8080/hook").status_code == 201
    assert post_webhook(hub, "http://127.0.0.2:8080/hook").status_code == 422
    assert post_webhook(hub, "http://10.0.0.5/hook").status_code == 422


def test_the_audit_log_shows_the_whole_url_with_secrets_masked(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub()

    response = post_webhook(hub, "https://city.example:8443/in/roadside?site=main&token=t0k&sig=s1g&page=2")

    assert response.status_code == 201, response.text
    [(action, details)] = webhook_audit(hub)
    assert action == "webhook.create"
    assert details["url"] == "https://city.example:8443/in/roadside?site=main&token=***&sig=***&page=2"


def test_a_receiver_reached_by_name_gets_the_name_as_host(
    make_hub: Callable[..., Hub], receiver: Receiver
) -> None:
    hub = make_hub()
    port = urlsplit(receiver.url).port
    hook = register(hub, url=f"http://localhost:{port}/roadside", secret=SECRET)

    with dispatching(hub):
        hub.live.publish("cam-1", "site-a", [event()])
        headers, _ = receiver.next()
        wait_for(lambda: webhook_state(hub, hook["id"])["delivered"] == 1)

    assert headers["host"] == f"localhost:{port}"


def test_a_tls_receiver_is_verified_against_its_name_sent_as_sni(
    make_hub: Callable[..., Hub], tmp_path: Path
) -> None:
    ca = CertificateAuthority.create("webhook test CA")
    files = write_issued(tmp_path / "tls", "hooks", ca.issue_server("hooks.test", ["hooks.test"], []))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(files.cert, files.key)
    trusted = ssl.create_default_context(cadata=ca.cert_pem.decode())
    hub = make_hub()

    with serving(server_context) as receiver, dispatching(hub, verify=trusted) as dispatcher:
        port = urlsplit(receiver.url).port
        hook = register(hub, url=f"https://hooks.test:{port}/roadside", secret=SECRET)
        # The certificate names hooks.test, not 127.0.0.1: it verifies only if TLS checked the name.
        by_address = register(
            hub, url=f"https://127.0.0.1:{port}/roadside", secret=SECRET, types=["stopped_vehicle"]
        )
        hub.live.publish("cam-1", "site-a", [event()])
        headers, _ = receiver.next()
        wait_for(lambda: webhook_state(hub, hook["id"])["delivered"] == 1)
        hub.live.publish("cam-1", "site-a", [event("stopped_vehicle")])
        wait_for(lambda: dispatcher.stats().gave_up == 1)

    assert headers["host"] == f"hooks.test:{port}"
    assert receiver.sni[0] == "hooks.test"
    state = webhook_state(hub, by_address["id"])
    assert (state["delivered"], state["last_error"]) == (0, "ConnectError")
