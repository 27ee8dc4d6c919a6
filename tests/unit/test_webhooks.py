"""Webhook signing, URL rules, retry policy and the dispatcher's queue, without a network.

The dispatcher runs against ``httpx.MockTransport`` and an in-memory store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.live import EventFilter, LiveEvent
from cloud.webhooks import (
    DELIVERY_HEADER,
    MAX_WEBHOOKS,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookDispatcher,
    WebhookLimitError,
    WebhookStore,
    check_url,
    delivery_body,
    is_retryable,
    redacted_url,
    retry_after_s,
    sign,
    verify_signature,
)
from shared.errors import ConfigError
from shared.schemas import DetectionEvent

NOW = 1_746_000_000
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
    ],
)
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        check_url(url)


def test_logs_and_the_audit_log_see_urls_without_queries() -> None:
    assert redacted_url("https://city.example:8443/in?token=abc") == "https://city.example:8443/in"
    assert redacted_url("http://city.example/in") == "http://city.example/in"


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
    store = WebhookStore(":memory:", refresh_s=3600)
    yield store
    store.close()


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
