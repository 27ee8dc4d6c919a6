"""Webhook signing, URL and destination rules, retry policy and the dispatcher's queue, without a network.

The dispatcher runs against ``httpx.MockTransport`` and an in-memory store;
names resolve through a stub resolver (``city.example`` to a global address).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from ipaddress import ip_address, ip_network
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadside.cloud.api.webhooks import (
    DELIVERY_HEADER,
    MASK,
    MAX_WEBHOOKS,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    IPAddress,
    UnresolvedHostError,
    WebhookDestinationError,
    WebhookDestinations,
    WebhookDispatcher,
    WebhookLimitError,
    WebhookStore,
    address_refusal,
    check_url,
    delivery_body,
    is_retryable,
    masked_url,
    retry_after_s,
    sign,
    verify_signature,
)
from roadside.cloud.fleet.live import EventFilter, LiveEvent
from roadside.shared.errors import ConfigError
from roadside.shared.schemas import DetectionEvent

NOW = 1_746_000_000
PUBLIC = ip_address("93.184.215.14")  # a globally routable address, standing in for city.example's
secrets_ = st.text(min_size=16, max_size=64)
bodies = st.binary(max_size=512)


def live(type_: str = "wrong_way", device: str = "cam-1") -> LiveEvent:
    event = DetectionEvent.model_validate(
        {
            "event_id": uuid.uuid4(),
            "ts": datetime(2025, 5, 1, 8, 0, tzinfo=UTC),
            "type": type_,
            "stream": "north",
            "model_version": "det-1",
        }
    )
    return LiveEvent(device, "site-a", event)


# Signing ----------------------------------------------------------------------------------------


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(b"s3cret-s3cret-s3cret", b'1746000000.{"a":1}', hashlib.sha256).hexdigest()
    assert sign("s3cret-s3cret-s3cret", NOW, b'{"a":1}') == "sha256=" + expected


@given(secret=secrets_, body=bodies, skew=st.integers(-300, 300))
def test_a_signature_verifies_within_the_tolerance(secret: str, body: bytes, skew: int) -> None:
    signature = sign(secret, NOW, body)
    assert verify_signature(secret, str(NOW), body, signature, now=NOW + skew)


@given(secret=secrets_, body=bodies, flip=st.integers(min_value=0))
def test_a_tampered_body_does_not_verify(secret: str, body: bytes, flip: int) -> None:
    signature = sign(secret, NOW, body)
    tampered = bytearray(body or b"\x00")
    tampered[flip % len(tampered)] ^= 0x01
    assert not verify_signature(secret, str(NOW), bytes(tampered), signature, now=NOW)


@given(secret=secrets_, other=secrets_, body=bodies)
def test_another_secret_does_not_verify(secret: str, other: str, body: bytes) -> None:
    if other != secret:
        assert not verify_signature(other, str(NOW), body, sign(secret, NOW, body), now=NOW)


def test_old_future_moved_or_malformed_timestamps_do_not_verify() -> None:
    body = b"{}"
    signature = sign("s3cret-s3cret-s3cret", NOW, body)
    assert not verify_signature("s3cret-s3cret-s3cret", str(NOW), body, signature, now=NOW + 301)
    assert not verify_signature("s3cret-s3cret-s3cret", str(NOW), body, signature, now=NOW - 301)
    # A replay under a fresh timestamp needs a fresh signature.
    assert not verify_signature("s3cret-s3cret-s3cret", str(NOW + 60), body, signature, now=NOW + 60)
    assert not verify_signature("s3cret-s3cret-s3cret", "soon", body, signature, now=NOW)
    assert not verify_signature("s3cret-s3cret-s3cret", str(NOW), body, signature.upper(), now=NOW)


# URLs, retry policy, bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["https://city.example/hook", "http://10.0.0.5:8080/in?x=1", "https://[::1]/a"]
)
def test_http_and_https_urls_are_accepted(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://city.example/hook",
        "https:///nohost",
        "city.example/hook",
        "https://user:pw@city.example/hook",
        "https://city.example/hook#part",
        "https://city.example/" + "a" * 2048,
        "https://city.example:70000/hook",
        "https://city.example:65536/hook",
        "https://city.example:0/hook",
        "https://city.example:-1/hook",
        "https://city.example:http/hook",
        "https://[::1/hook",
        "https://city.example/ho ok",
        "https://city.example/hook\n",
    ],
)
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        check_url(url)


def test_logs_and_the_audit_log_see_the_whole_url_with_secrets_masked() -> None:
    assert masked_url("https://city.example:8443/in/x?token=abc&site=main&Sig=zz&api_key=k&k=v") == (
        "https://city.example:8443/in/x?token=***&site=main&Sig=***&api_key=***&k=v"
    )
    assert (
        masked_url("https://user:pw@city.example/in?password=p") == "https://***@city.example/in?password=***"
    )
    assert masked_url("http://[::1]:8080/in") == "http://[::1]:8080/in"
    assert masked_url("http://city.example/in") == "http://city.example/in"


_SECRET_KEYS = ["token", "access_token", "key", "apikey", "secret", "sig", "signature", "password", "auth"]


@given(
    params=st.lists(
        st.tuples(
            st.sampled_from([*_SECRET_KEYS, "site", "a", "page"]),
            st.text(st.characters(codec="utf-8"), min_size=1, max_size=20),
        ),
        max_size=6,
    )
)
def test_no_secret_query_value_survives_masking(params: list[tuple[str, str]]) -> None:
    url = "https://city.example/in?" + urlencode(params)
    shown = parse_qsl(urlsplit(masked_url(url)).query, keep_blank_values=True)
    assert shown == [(key, MASK if key in _SECRET_KEYS else value) for key, value in params]


# Destinations: no SSRF -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.9.9.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped: judged as the IPv4 address it is
        ("169.254.169.254", "link-local"),  # cloud metadata services
        ("fe80::1", "link-local"),
        ("10.0.0.5", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address to refuse, not one to bind
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "private|reserved"),  # which one depends on the Python version's tables
        ("100.64.0.1", "non-global"),  # carrier-grade NAT
        ("192.0.2.10", "private|non-global"),  # documentation
    ],
)
def test_non_global_addresses_are_refused(address: str, kind: str) -> None:
    refusal = address_refusal(ip_address(address))
    assert refusal is not None
    assert refusal.split(" address ")[0] in kind.split("|")


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_global_addresses_are_fine(address: str) -> None:
    assert address_refusal(ip_address(address)) is None


def test_allow_listed_networks_are_fine() -> None:
    allowed = (ip_network("127.0.0.0/8"), ip_network("10.20.0.0/16"))
    assert address_refusal(ip_address("127.0.0.1"), allowed) is None
    assert address_refusal(ip_address("::ffff:127.0.0.1"), allowed) is None
    assert address_refusal(ip_address("10.20.3.4"), allowed) is None
    assert address_refusal(ip_address("10.21.0.1"), allowed) is not None
    assert address_refusal(ip_address("::1"), allowed) is not None


def resolver(*answers: Sequence[IPAddress] | OSError) -> Callable[[str, int], Sequence[IPAddress]]:
    """A stub resolver answering from a script, then repeating its last answer; it records each call."""
    script = list(answers)
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> Sequence[IPAddress]:
        calls.append((host, port))
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, OSError):
            raise answer
        return answer

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def test_a_pin_resolves_once_and_keeps_host_port_and_address() -> None:
    resolve = resolver([PUBLIC])
    pinned = WebhookDestinations(resolve=resolve).pin("https://City.Example:8443/in?x=1")
    assert (pinned.host, pinned.port, pinned.address) == ("city.example", 8443, PUBLIC)
    assert str(pinned.request_url()) == "https://93.184.215.14:8443/in?x=1"
    assert pinned.host_header() == "city.example:8443"
    assert pinned.sni_hostname() == "city.example"
    assert resolve.calls == [("city.example", 8443)]  # type: ignore[attr-defined]


def test_a_literal_address_is_not_resolved_and_has_no_sni() -> None:
    pinned = WebhookDestinations(resolve=resolver(OSError("no DNS here"))).pin("https://[2606:4700::1111]/in")
    assert pinned.address == ip_address("2606:4700::1111")
    assert pinned.host_header() == "[2606:4700::1111]"
    assert pinned.sni_hostname() is None


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/", "http://[::1]:8080/", "http://169.254.169.254/latest/meta-data", "http://0x7f.1/"],
)
def test_internal_literals_are_refused(url: str) -> None:
    # 0x7f.1 is not an IP literal to Python, but the resolver (inet_aton) reads it as 127.0.0.1.
    destinations = WebhookDestinations(resolve=resolver([ip_address("127.0.0.1")]))
    with pytest.raises(WebhookDestinationError, match="webhook_allow_networks"):
        destinations.pin(url)


def test_a_name_with_any_internal_address_is_refused() -> None:
    destinations = WebhookDestinations(resolve=resolver([PUBLIC, ip_address("10.0.0.7")]))
    with pytest.raises(WebhookDestinationError, match=r"city\.example resolves to 10\.0\.0\.7"):
        destinations.pin("https://city.example/in")


def test_a_name_that_does_not_resolve_is_a_transport_error() -> None:
    with pytest.raises(UnresolvedHostError):
        WebhookDestinations(resolve=resolver(OSError("NXDOMAIN"))).pin("https://nowhere.example/in")
    with pytest.raises(UnresolvedHostError):
        WebhookDestinations(resolve=resolver([])).pin("https://nowhere.example/in")


def test_the_allow_list_lets_a_loopback_receiver_in() -> None:
    destinations = WebhookDestinations(allowed=(ip_network("127.0.0.0/8"),), resolve=resolver(OSError()))
    assert destinations.pin("http://127.0.0.1:9000/in").address == ip_address("127.0.0.1")


@pytest.mark.parametrize(
    ("status", "retry"),
    [(None, True), (408, True), (425, True), (429, True), (500, True), (503, True),
     (400, False), (401, False), (404, False), (410, False), (422, False)],
)  # fmt: skip
def test_what_is_retried(status: int | None, retry: bool) -> None:
    assert is_retryable(status) is retry


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, 0.0),
        ("3", 3.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("9999", 60.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_retry_after_in_seconds_is_respected_up_to_the_cap(header: str | None, seconds: float) -> None:
    assert retry_after_s(header, 60.0) == seconds


def test_the_body_names_webhook_delivery_and_events_in_the_api_shape() -> None:
    event = live()
    document = json.loads(delivery_body("wh_1", "d-1", [event]))
    assert document["webhook_id"] == "wh_1"
    assert document["delivery_id"] == "d-1"
    assert document["events"] == [
        {"device": "cam-1", "site": "site-a", **json.loads(event.event.model_dump_json())}
    ]


# The store -------------------------------------------------------------------------------------------


@pytest.fixture
def store() -> Iterator[WebhookStore]:
    store = WebhookStore(
        ":memory:", refresh_s=3600, destinations=WebhookDestinations(resolve=resolver([PUBLIC]))
    )
    yield store
    store.close()


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("https://city.example:70000/hook", ConfigError),
        ("http://127.0.0.1:8080/hook", WebhookDestinationError),
        ("http://169.254.169.254/latest/meta-data", WebhookDestinationError),
    ],
)
def test_the_store_refuses_a_destination_before_writing_anything(
    store: WebhookStore, url: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        store.create(url, EventFilter(), created_by="t")
    assert store.list() == []


def test_the_store_keeps_webhooks_their_filters_and_outcomes(store: WebhookStore) -> None:
    wanted = EventFilter("cam-1", None, frozenset({"wrong_way", "stopped_vehicle"}))
    hook = store.create("https://city.example/hook", wanted, created_by="api:ops", secret="s" * 16)

    assert store.active() == (hook,)  # a local change refreshes at once
    store.record_attempt(hook.id, ok=False, status=503, error=None)
    store.record_attempt(hook.id, ok=True, status=204, error=None)
    got = store.get(hook.id)
    assert got is not None
    assert (got.filter, got.delivered, got.failed, got.last_status) == (wanted, 1, 1, 204)
    assert got.secret == "s" * 16
    assert "s" * 16 not in repr(got)
    assert store.delete(hook.id)
    assert not store.delete(hook.id)
    assert store.active() == ()


def test_the_store_generates_secrets_and_refuses_weak_ones(store: WebhookStore) -> None:
    assert store.create("https://city.example/a", EventFilter(), created_by="t").secret.startswith("whsec_")
    with pytest.raises(ConfigError):
        store.create("https://city.example/a", EventFilter(), created_by="t", secret="short")


def test_the_store_holds_a_bounded_number_of_webhooks(store: WebhookStore) -> None:
    for i in range(MAX_WEBHOOKS):
        store.create(f"https://city.example/{i}", EventFilter(), created_by="t")
    with pytest.raises(WebhookLimitError):
        store.create("https://city.example/one-too-many", EventFilter(), created_by="t")
    assert len(store.list()) == MAX_WEBHOOKS


# The dispatcher --------------------------------------------------------------------------------------


class Endpoint:
    """A MockTransport handler answering from a script (then 204), recording every request."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            answer = self.answers.pop(0) if self.answers else 204
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer)


def dispatcher_for(store: WebhookStore, endpoint: Endpoint, **options: float) -> WebhookDispatcher:
    settings = {"backoff_base_s": 0.001, "backoff_cap_s": 0.005, "max_attempts": 3, "workers": 1, **options}
    return WebhookDispatcher(store, transport=httpx.MockTransport(endpoint), **settings)  # type: ignore[arg-type]


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_deliveries_are_retried_until_a_2xx(store: WebhookStore) -> None:
    hook = store.create("https://city.example/hook", EventFilter(), created_by="t", secret="k" * 16)
    endpoint = Endpoint(503, httpx.ConnectError("refused"))
    dispatcher = dispatcher_for(store, endpoint)
    dispatcher.start()
    try:
        dispatcher.offer([live()])
        wait_for(lambda: dispatcher.stats().delivered == 1)
    finally:
        dispatcher.stop()
    assert len(endpoint.requests) == 3
    assert len({r.headers[DELIVERY_HEADER] for r in endpoint.requests}) == 1
    for request in endpoint.requests:
        assert verify_signature(
            "k" * 16, request.headers[TIMESTAMP_HEADER], request.content, request.headers[SIGNATURE_HEADER],
            now=time.time(),
        )  # fmt: skip
    record = store.get(hook.id)
    assert record is not None
    assert (record.delivered, record.failed, record.last_status) == (1, 2, 204)


def test_deliveries_are_given_up_after_max_attempts_or_a_refusal(store: WebhookStore) -> None:
    store.create("https://city.example/a", EventFilter(types=frozenset({"wrong_way"})), created_by="t")
    store.create("https://city.example/b", EventFilter(types=frozenset({"stopped_vehicle"})), created_by="t")
    endpoint = Endpoint(500, 500, 500, 400)
    dispatcher = dispatcher_for(store, endpoint)
    dispatcher.start()
    try:
        dispatcher.offer([live("wrong_way")])
        wait_for(lambda: dispatcher.stats().gave_up == 1)
        dispatcher.offer([live("stopped_vehicle")])
        wait_for(lambda: dispatcher.stats().gave_up == 2)
    finally:
        dispatcher.stop()
    assert [r.url.path for r in endpoint.requests] == ["/a", "/a", "/a", "/b"]
    assert dispatcher.stats().delivered == 0


def test_only_matching_webhooks_get_a_delivery(store: WebhookStore) -> None:
    store.create("https://city.example/cam-2", EventFilter(device_id="cam-2"), created_by="t")
    endpoint = Endpoint()
    dispatcher = dispatcher_for(store, endpoint)
    dispatcher.offer([live(device="cam-1")])
    assert dispatcher.stats().queued == 0


def test_a_full_queue_drops_its_oldest_deliveries(store: WebhookStore) -> None:
    store.create("https://city.example/hook", EventFilter(), created_by="t")
    endpoint = Endpoint()
    dispatcher = dispatcher_for(store, endpoint, max_pending=3)
    events = [live() for _ in range(5)]
    for event in events:  # nothing is sending yet: the queue fills
        dispatcher.offer([event])
    stats = dispatcher.stats()
    assert (stats.queued, stats.dropped, stats.pending) == (5, 2, 3)

    dispatcher.start()
    try:
        wait_for(lambda: dispatcher.stats().delivered == 3)
    finally:
        dispatcher.stop()
    sent = [json.loads(r.content)["events"][0]["event_id"] for r in endpoint.requests]
    assert sent == [str(e.event.event_id) for e in events[2:]]


def test_stop_returns_with_retries_still_queued(store: WebhookStore) -> None:
    store.create("https://city.example/hook", EventFilter(), created_by="t")
    endpoint = Endpoint(503)
    dispatcher = dispatcher_for(store, endpoint, backoff_base_s=60.0, backoff_cap_s=60.0)
    dispatcher.start()
    dispatcher.offer([live()])
    wait_for(lambda: len(endpoint.requests) == 1 and dispatcher.stats().pending == 1)
    started = time.monotonic()
    dispatcher.stop()
    assert time.monotonic() - started < 2
    assert len(endpoint.requests) == 1


def test_a_delivery_connects_to_the_pinned_address_with_the_host_as_host_and_sni() -> None:
    rebinding = resolver(
        [PUBLIC], [PUBLIC], [ip_address("127.0.0.1")]
    )  # registration, delivery, then rebound
    store = WebhookStore(":memory:", refresh_s=3600, destinations=WebhookDestinations(resolve=rebinding))
    store.create("https://city.example:8443/in?x=1", EventFilter(), created_by="t")
    endpoint = Endpoint(503, 503)
    dispatcher = dispatcher_for(store, endpoint)
    dispatcher.start()
    try:
        dispatcher.offer([live()])
        wait_for(lambda: dispatcher.stats().delivered == 1)
    finally:
        dispatcher.stop()
        store.close()
    # Three attempts, one resolution: the retries went where the first attempt's answer said.
    assert len(rebinding.calls) == 2  # type: ignore[attr-defined]
    assert [str(r.url) for r in endpoint.requests] == ["https://93.184.215.14:8443/in?x=1"] * 3
    assert {r.headers["host"] for r in endpoint.requests} == {"city.example:8443"}
    assert {r.extensions["sni_hostname"] for r in endpoint.requests} == {"city.example"}


def test_a_name_rebound_to_an_internal_address_is_not_delivered_to() -> None:
    rebinding = resolver([PUBLIC], [ip_address("169.254.169.254")])
    store = WebhookStore(":memory:", refresh_s=3600, destinations=WebhookDestinations(resolve=rebinding))
    hook = store.create("https://city.example/in", EventFilter(), created_by="t")
    endpoint = Endpoint()
    dispatcher = dispatcher_for(store, endpoint)
    dispatcher.start()
    try:
        dispatcher.offer([live()])
        wait_for(lambda: dispatcher.stats().gave_up == 1)
        record = store.get(hook.id)
    finally:
        dispatcher.stop()
        store.close()
    assert endpoint.requests == []  # given up at once, not retried
    assert record is not None
    assert (record.failed, record.last_status, record.last_error) == (1, None, "refused destination")


def test_a_name_that_stops_resolving_is_retried() -> None:
    flaky = resolver([PUBLIC], OSError("SERVFAIL"), [PUBLIC])
    store = WebhookStore(":memory:", refresh_s=3600, destinations=WebhookDestinations(resolve=flaky))
    hook = store.create("https://city.example/in", EventFilter(), created_by="t")
    endpoint = Endpoint()
    dispatcher = dispatcher_for(store, endpoint)
    dispatcher.start()
    try:
        dispatcher.offer([live()])
        wait_for(lambda: dispatcher.stats().delivered == 1)
        record = store.get(hook.id)
    finally:
        dispatcher.stop()
        store.close()
    assert len(endpoint.requests) == 1
    assert record is not None
    assert (record.failed, record.delivered) == (1, 1)
