"""HTTP conformance the outside schemathesis run checked (issue 9, item 14), against a real app.

Problems name the parameters the client sent, spelled as it sent them, and say
when a default the server filled in took part; a 405 lists every method of the
path in ``Allow``; what OpenAPI can say about a parameter, the document says.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from roadside.cloud.api import cursor
from roadside.cloud.api.app import create_app
from roadside.cloud.registry import Registry
from roadside.cloud.storage.sqlite import SqliteStore

PROBLEM = "application/problem+json"
WINDOW_ROUTES = [
    "/v1/counts",
    "/v1/speeds",
    "/v1/events",
    "/v1/sensors",
    "/v1/sensors/latest",
    "/v1/devices/cam-1/health",
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
# A value for each path parameter that passes its own validation, so only the method is wrong.
PATH_VALUES = {
    "device_id": "cam-1",
    "webhook_id": "wh_0",
    "rollout_id": "1",
    "signal": "sig-1",
    "channel": "1",
    "location_id": "main-5th",
    "sensor_id": "cam-1.pm-1.pm25",
    "alert_id": "device_offline:cam-1:0",
}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[FastAPI]:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.create_schema()
    store = SqliteStore(tmp_path / "telemetry.db")
    yield create_app(store=store, registry=registry, metrics_registry=CollectorRegistry(), rate_limit=None)
    store.close()
    registry.close()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture
def auth(app: FastAPI) -> dict[str, str]:
    token = app.state.resources.registry.api_clients.create("ops", ["admin"])
    return {"Authorization": f"Bearer {token}"}


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    return body


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


# Problems name what the client sent -----------------------------------------------------------


@pytest.mark.parametrize("route", WINDOW_ROUTES)
def test_only_from_far_in_the_past_names_from_and_the_defaulted_to(
    client: TestClient, auth: dict[str, str], route: str
) -> None:
    sent = {"from": iso(datetime.now(UTC) - timedelta(days=40))}

    body = problem(client.get(route, params=sent, headers=auth), 422)

    assert [(p["name"], p["in"]) for p in body["invalid_params"]] == [("from", "query")]
    reason = body["invalid_params"][0]["reason"].replace("`", "")
    assert "31 days" in reason
    assert "to defaults to now" in reason
    assert "end" not in body["detail"]
    assert "from" in body["detail"]


@pytest.mark.parametrize("route", WINDOW_ROUTES)
def test_only_from_in_the_future_names_from_and_the_defaulted_to(
    client: TestClient, auth: dict[str, str], route: str
) -> None:
    sent = {"from": iso(datetime.now(UTC) + timedelta(hours=1))}

    body = problem(client.get(route, params=sent, headers=auth), 422)

    assert [p["name"] for p in body["invalid_params"]] == ["from"]
    assert "to defaults to now" in body["invalid_params"][0]["reason"].replace("`", "")


@pytest.mark.parametrize(
    ("sent", "named"),
    [
        ({"from": "2025-01-01T00:00:00Z", "to": "2025-03-01T00:00:00Z"}, ["to"]),
        ({"from": "2025-05-01T10:00:00Z", "to": "2025-05-01T09:00:00Z"}, ["to"]),
        ({"to": "2025-05-01T09:00:00Z", "bucket": "1s", "from": "2025-04-30T09:00:00Z"}, ["bucket"]),
        ({"from": "2025-01-01T00:00:00Z", "to": "2025-03-01T00:00:00Z", "bucket": "1s"}, ["to"]),
    ],
)
def test_window_problems_name_only_parameters_the_client_sent(
    client: TestClient, auth: dict[str, str], sent: dict[str, str], named: list[str]
) -> None:
    body = problem(client.get("/v1/counts", params=sent, headers=auth), 422)

    assert [p["name"] for p in body["invalid_params"]] == named
    assert set(named) <= set(sent)


def test_times_at_the_ends_of_the_calendar_are_named_problems_not_server_errors(
    client: TestClient, auth: dict[str, str]
) -> None:
    # A default `from` a day before `to`, or a +14:00 offset, would have overflowed Python's dates (a 500).
    cases = [
        ({"from": "0001-01-01T00:00:00+14:00", "to": "0001-01-01T12:00:00Z"}, ["from", "to"]),
        ({"from": "9999-12-30T00:00:00Z", "to": "9999-12-31T00:00:00Z"}, ["from", "to"]),
        ({"to": "0001-01-02T00:00:00Z"}, ["to"]),
    ]
    for route in WINDOW_ROUTES:
        for sent, named in cases:
            body = problem(client.get(route, params=sent, headers=auth), 422)
            assert [p["name"] for p in body["invalid_params"]] == named, (route, sent)
            assert "0001-01-03 and 9999-12-29" in body["invalid_params"][0]["reason"]


def test_a_cursor_problem_names_the_cursor(client: TestClient, auth: dict[str, str]) -> None:
    body = problem(client.get("/v1/events", params={"cursor": "bm9wZQ"}, headers=auth), 422)
    assert [p["name"] for p in body["invalid_params"]] == ["cursor"]


# 405 lists every method of the path ----------------------------------------------------------


def test_a_405_allows_every_method_the_path_has(client: TestClient, auth: dict[str, str]) -> None:
    spec = client.get("/openapi.json").json()
    checked = 0
    for template, item in spec["paths"].items():
        path = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], template)
        documented = {method.upper() for method in item}
        for method in (m for m in METHODS if m not in documented):
            response = client.request(method, path, headers=auth)
            problem(response, 405)
            allowed = {m.strip() for m in response.headers["allow"].split(",")}
            assert allowed == documented, (method, template)
            checked += 1
    assert checked >= 60


# What OpenAPI can express is in the document ---------------------------------------------------


def _parameters(spec: dict[str, Any], path: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in spec["paths"][path]["get"]["parameters"]}


def _string_schema(parameter: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = parameter["schema"]
    return next((s for s in schema.get("anyOf", [schema]) if s.get("type") == "string"), schema)


def test_openapi_declares_window_cursor_and_bucket_rules(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for route in WINDOW_ROUTES:
        parameters = _parameters(spec, route.replace("cam-1", "{device_id}"))
        assert "31 days" in parameters["from"]["description"], route
        assert "31 days" in parameters["to"]["description"], route
        assert "after `from`" in parameters["to"]["description"], route
    events = _parameters(spec, "/v1/events")
    cursor_schema = _string_schema(events["cursor"])
    assert cursor_schema["maxLength"] == cursor.MAX_LENGTH
    assert cursor_schema["minLength"] == 1
    assert re.fullmatch(cursor_schema["pattern"], "WzEsMTc0NjA4NzQ2")
    assert not re.fullmatch(cursor_schema["pattern"], "not/base64url")
    assert "same `device`, `site` and `type`" in events["cursor"]["description"]
    bucket = _string_schema(_parameters(spec, "/v1/counts")["bucket"])
    assert not re.search(bucket["pattern"], "1234567890s")  # parse_bucket reads at most 9 digits
    assert re.search(bucket["pattern"], "15m")
    assert "20000" in bucket["description"] or "20 000" in bucket["description"]
    health = _parameters(spec, "/v1/devices/{device_id}/health")
    assert (health["step"]["schema"]["anyOf"][0]["minimum"], health["limit"]["schema"]["maximum"]) == (0, 10_000)
    assert "reports" in spec["components"]["schemas"]["HealthHistory"]["required"]


def test_a_repeated_query_parameter_is_named_as_sent(client: TestClient, auth: dict[str, str]) -> None:
    response = client.get("/v1/events/stream", params=[("type", "wrong_way"), ("type", "ufo")], headers=auth)

    body = problem(response, 422)

    assert [p["name"] for p in body["invalid_params"]] == ["type"]
    assert body["invalid_params"][0]["reason"].startswith("value 2 of type:")
