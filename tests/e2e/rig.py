"""A hub home with a running Mosquitto and its registry: the bench for hub-side e2e tests."""

from __future__ import annotations

from pathlib import Path

from bench.fleet import enroll_fleet
from roadside.cloud.broker.mosquitto import MosquittoBroker
from roadside.cloud.home import acl_devices, init_home
from roadside.cloud.registry import Registry
from roadside.shared.bundle import EnrollmentBundle


class Rig:
    def __init__(self, root: Path) -> None:
        self.home = init_home(root / "hub", ["localhost"], ["127.0.0.1"])
        self.broker = MosquittoBroker(
            self.home.broker_dir,
            ca_cert_pem=self.home.ca_file.read_bytes(),
            server=self.home.broker_server_cert(),
        )
        self.broker.start()
        self.registry = Registry(self.home.registry_url)

    def fleet(self, count: int) -> list[EnrollmentBundle]:
        bundles = enroll_fleet(self.home, self.registry, count, self.broker.port)
        self.broker.reload_acl(acl_devices(self.registry))
        return bundles

    def close(self) -> None:
        self.registry.close()
        self.broker.stop()
