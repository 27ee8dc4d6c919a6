"""The whole loop on loopback: a Mosquitto with mTLS and ACLs, the hub on SQLite, enrolled devices."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from roadside.cloud.broker.mosquitto import MosquittoBroker
from roadside.cloud.home import HubHome, acl_devices, enroll_device, init_home
from roadside.cloud.hub import Hub
from roadside.cloud.registry import Registry
from roadside.cloud.settings import HubSettings
from roadside.shared.bundle import BrokerAddress, EnrollmentBundle
from tests.e2e.rig import Rig

SITE = "e2e-site"


@dataclass
class Loop:
    home: HubHome
    broker: MosquittoBroker
    hub: Hub
    registry: Registry
    token: str

    def enroll(self, device_id: str, site: str = SITE) -> EnrollmentBundle:
        bundle, _ = enroll_device(
            self.home, self.registry, device_id, site, BrokerAddress(host="127.0.0.1", port=self.broker.port)
        )
        self.broker.reload_acl(acl_devices(self.registry))
        return bundle

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.hub.api_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )


@contextmanager
def open_loop(tmp_path: Path, **settings: Any) -> Iterator[Loop]:
    """A hub home, Mosquitto and a started hub (``settings``: more hub settings)."""
    home = init_home(tmp_path / "hub", ["localhost"], ["127.0.0.1"])
    broker = MosquittoBroker(
        home.broker_dir, ca_cert_pem=home.ca_file.read_bytes(), server=home.broker_server_cert()
    )
    registry = Registry(home.registry_url)
    hub: Hub | None = None
    with broker:
        try:
            token = registry.api_clients.create("e2e", ["read:telemetry"])
            hub = Hub(
                HubSettings(
                    home=home.root, broker_port=broker.port, api_port=0, batch_wait_s=0.05, **settings
                )
            )
            hub.start()
            assert hub.wait_ready(10), broker.log_tail()
            yield Loop(home, broker, hub, registry, token)
        finally:
            if hub is not None:
                hub.stop()
            registry.close()


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    with open_loop(tmp_path) as opened:
        yield opened


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A hub home, its registry and a running Mosquitto, without a hub (tests start their own)."""
    rig = Rig(tmp_path)
    try:
        yield rig
    finally:
        rig.close()
