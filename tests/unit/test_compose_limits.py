"""The compose broker may hold a city's fleet: its open-files limit is one file per device (issue 14)."""

from __future__ import annotations

from pathlib import Path

import yaml

from roadside.cloud.broker.limits import FLEET_FILES

COMPOSE = Path(__file__).resolve().parents[2] / "compose" / "docker-compose.yml"


def test_the_compose_broker_may_open_a_file_per_device_of_a_city() -> None:
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    nofile = services["mosquitto"]["ulimits"]["nofile"]
    assert nofile["soft"] >= FLEET_FILES
    assert nofile["hard"] >= nofile["soft"]
