"""The system under test, as real processes on this machine: Mosquitto, a hub, agents.

Each part can be killed with SIGKILL and started again on the same port, home
and outbox, which is all a fault needs. Nothing here decides when to break
what (that is :mod:`bench.chaos.faults`) or keeps books (:mod:`bench.chaos.ledger`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bench.chaos.collect import influx_ingest_marks, instrument_outbox, stored_messages, stored_records
from bench.chaos.ledger import RecordId
from bench.chaos.netns import AgentLink, AgentLinks
from bench.chaos.proxy import FaultProxy
from roadside.cloud.broker.mosquitto import MosquittoBroker, free_loopback_port
from roadside.cloud.home import HubHome, enroll_device, init_home
from roadside.cloud.registry import Registry
from roadside.shared.bundle import BrokerAddress, EnrollmentBundle, write_bundle

if TYPE_CHECKING:
    from bench.chaos.release import ChaosRelease
    from tests.component.influxd import InfluxServer
    from tests.component.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[2]
ROADSIDE = ["-c", "from roadside.cli import main; main()"]  # the ``roadside`` command, this interpreter
SITE = "chaos"
INFLUX_DATABASE = "roadside"


def wait_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.1) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes; whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()


class Child:
    """One Python command (``python ARGV...``) run as a child process, its output appended to ``log``."""

    def __init__(self, argv: list[str], log: Path, ready_mark: bytes | None = None) -> None:
        self.argv = argv
        self.log = log
        self.ready_mark = ready_mark
        self.process: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.prefix: list[str] = []  # e.g. ``ip netns exec NS``

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, ready_s: float = 60.0) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        command = [*self.prefix, sys.executable, *self.argv]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO), **self.env},
            )
        mark = self.ready_mark
        if mark is not None and not wait_until(lambda: mark in self.log.read_bytes()[offset:], ready_s):
            raise RuntimeError(f"{self.argv[2:4]} did not start:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM and wait (an agent drains its outbox first); SIGKILL past ``timeout_s``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class ChaosAgent(Child):
    """``roadside agent run`` on a synthetic camera, its outbox instrumented for the ledger."""

    def __init__(
        self,
        root: Path,
        bundle: EnrollmentBundle,
        seed: int,
        outbox_max_bytes: int,
        skewed: bool = False,
        ota: bool = False,
    ) -> None:
        """``skewed``: run :mod:`bench.chaos.skewed_agent`, its clock offset by what
        :attr:`clock_offset_file` says. ``ota``: take model updates (the bundle names the
        repository), shadowing every batch; a silent repository is retried as in production
        (4 times, 2 s doubling)."""
        root.mkdir(parents=True, exist_ok=True)
        self.device_id = bundle.device_id
        self.outbox = root / "outbox.db"
        bundle_path = root / "bundle.json"
        write_bundle(bundle, bundle_path)
        config = root / "agent.toml"
        config.write_text(
            "interval_s = 1\nheartbeat_s = 1.0\n"
            f'[outbox]\npath = "{self.outbox}"\nrecords_per_message = 5\nmax_bytes = {outbox_max_bytes}\n'
            f'[[sources]]\ntype = "synthetic"\nname = "cam0"\nseed = {seed}\nfps = 8.0\n'
            "width = 320\nheight = 240\nrealtime = true\n"
            + ("[ota]\nshadow_every = 1\nshadow_grace_s = 60\n" if ota else "")
        )
        instrument_outbox(self.outbox)
        self.clock_offset_file = root / "clock-offset-s"
        self.link: AgentLink | None = None  # its own network namespace, for the network faults
        argv = [*ROADSIDE, "agent", "run", "--bundle", str(bundle_path), "--config", str(config)]
        if skewed:
            argv = ["-m", "bench.chaos.skewed_agent", "--bundle", str(bundle_path), "--config", str(config)]
            argv += ["--offset-file", str(self.clock_offset_file)]
        # The log beside the agent's directory, not in it: a full disk there must not eat it.
        super().__init__(argv, root.with_name(f"{root.name}.log"), ready_mark=b"started with")


def child_pids(pid: int) -> list[int]:
    """The direct children of process ``pid`` (Linux ``/proc``)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def process_name(pid: int) -> str:
    """What ``ps`` shows as the process's name (Linux ``/proc/<pid>/comm``)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class HubProcess(Child):
    """``roadside hub run`` on the home, SQLite store, its API on a free port."""

    def __init__(
        self,
        home: HubHome,
        broker_port: int,
        root: Path,
        workers: int = 0,
        influx_url: str | None = None,
        extra_processes: int = 0,
        registry_url: str | None = None,
    ) -> None:
        config = root / "hub.json"
        settings: dict[str, object] = {
            "broker_port": broker_port,
            "api_port": 0,
            "client_id": "hub-chaos",
            "batch_size": 50,
            "repo_port": -1,  # the model repository has a process of its own (repo-kill)
        }
        if registry_url is not None:
            settings["registry_url"] = registry_url
        if workers:
            settings["ingest_workers"] = workers  # spawned processes the hub supervises
        if influx_url is not None:
            settings["store"] = {"type": "influx_v1", "url": influx_url, "database": INFLUX_DATABASE}
        config.write_text(json.dumps(settings))
        argv = [*ROADSIDE, "hub", "run", "--home", str(home.root), "--config", str(config)]
        if extra_processes:  # ingest-only hub processes, hub run's own children
            argv += ["--workers", str(extra_processes)]
        super().__init__(argv, root / "hub.log", ready_mark=b"hub subscribed")

    def extra_process_pids(self) -> list[int]:
        """``hub run --workers``' ingest-only hub processes."""
        if self.process is None:
            return []
        return [pid for pid in child_pids(self.process.pid) if "--client-id" in command_line(pid)]

    def worker_pids(self) -> list[int]:
        """The hub's ingest worker processes (multiprocessing's spawned children), spares too."""
        if self.process is None:
            return []
        return [pid for pid in child_pids(self.process.pid) if "spawn_main" in command_line(pid)]

    def owning_worker_pids(self) -> list[int]:
        """The ingest workers that own devices: ``ingest-<share>``, not ``ingest-spare`` (ADR 0032)."""
        return [
            pid
            for pid in self.worker_pids()
            if process_name(pid).startswith("ingest-") and process_name(pid) != "ingest-spare"
        ]


class Stack:
    """A hub home, its broker, one hub process and ``agents`` agent processes."""

    def __init__(
        self,
        root: Path,
        agents: int,
        outbox_max_bytes: int = 64 * 1024 * 1024,
        mount: Callable[[Path], None] | None = None,
        skewed: bool = False,
        hub_workers: int = 0,
        netns: bool = False,
        influx: bool = False,
        hub_processes: int = 0,
        postgres: bool = False,
        repository: bool = False,
    ) -> None:
        """``mount`` (if given) puts a filesystem of its own under the hub home and each agent;
        ``repository``: a model repository served by a process of its own, agents taking updates."""
        self.root = root
        self.hold_scale = 1.0  # how long faults stay in place: 1.0 in the benchmark, less in CI
        self.mounts: list[Path] = []
        if mount is not None:
            self.mounts = [root / "hub", *(root / f"agent-{i}" for i in range(agents))]
            for where in self.mounts:
                mount(where)
        # Agents in namespaces reach the broker through a proxy on their veth's host address,
        # which the broker's certificate must name.
        self.links = AgentLinks() if netns else None
        extra_ips = [self.links.host_ip(i) for i in range(agents)] if self.links else []
        self.home = init_home(root / "hub", ["localhost"], ["127.0.0.1", *extra_ips])
        self.broker = MosquittoBroker(
            self.home.broker_dir,
            ca_cert_pem=self.home.ca_file.read_bytes(),
            server=self.home.broker_server_cert(),
        )
        self.broker.start()
        self.postgres: PostgresServer | None = None
        registry_url = None
        if postgres:
            from tests.component.postgres import PostgresServer  # the tests' throwaway cluster

            self.postgres = PostgresServer(root)
            self.postgres.__enter__()
            registry_url = self.postgres.create_database("registry")
        self.registry = Registry(registry_url or self.home.registry_url)
        if registry_url is not None:
            self.registry.create_schema()
        self.release: ChaosRelease | None = None
        if repository:
            from bench.chaos.release import ChaosRelease  # it runs its server as a Child of this module

            # Agents in namespaces reach it on their veth's host address; the others on loopback.
            host = "0.0.0.0" if self.links else "127.0.0.1"  # noqa: S104 - a test machine's harness
            self.release = ChaosRelease(
                root / "release", self.home, self.registry, host, free_loopback_port()
            )
        self.influx: InfluxServer | None = None
        if influx:
            from tests.component.influxd import InfluxServer  # the tests' throwaway influxd starter

            self.influx = InfluxServer(root)
            self.influx.__enter__()
        influx_url = self.influx.url if self.influx else None
        self.hub = HubProcess(
            self.home, self.broker.port, root, hub_workers, influx_url, hub_processes, registry_url
        )
        try:
            self.agents = [self._agent(i, outbox_max_bytes, skewed) for i in range(agents)]
        except BaseException:
            if self.links is not None:
                self.links.close()  # no namespace outlives a failed start
            self.broker.kill()
            raise

    def _agent(self, index: int, outbox_max_bytes: int, skewed: bool) -> ChaosAgent:
        address = BrokerAddress(host="127.0.0.1", port=self.broker.port)
        link = None
        if self.links is not None:
            link = self.links.add(index)
            link.proxy = FaultProxy((link.host_ip, 0), ("127.0.0.1", self.broker.port), seed=index)
            address = BrokerAddress(host=link.host_ip, port=link.proxy.port)
        bundle = self.enroll(f"chaos-{index:02d}", address)
        if self.release is not None:
            bundle = self.release.anchor(bundle, link.host_ip if link is not None else "127.0.0.1")
        ota = self.release is not None
        agent = ChaosAgent(self.root / f"agent-{index}", bundle, index + 1, outbox_max_bytes, skewed, ota)
        agent.link = link
        if link is not None:
            agent.prefix = link.exec_prefix()
        return agent

    def enroll(self, device_id: str, address: BrokerAddress | None = None) -> EnrollmentBundle:
        """Enroll as ``roadside device enroll`` does: the broker's ACL patterns let the new name
        in, so nothing is reloaded (a reload used to drop the hub's offline session, ADR 0022)."""
        address = address or BrokerAddress(host="127.0.0.1", port=self.broker.port)
        bundle, _ = enroll_device(self.home, self.registry, device_id, SITE, address)
        return bundle

    def stored_messages(self) -> set[tuple[str, int]]:
        """(device, seq) of every envelope the hub's store holds."""
        if self.influx is not None:
            return {(d, s) for d, s, _ in influx_ingest_marks(self.influx.url, INFLUX_DATABASE)}
        return stored_messages(self.home.telemetry_db)

    def stored_records(self) -> Iterator[RecordId]:
        """Every record the hub's store holds, by identity."""
        if self.influx is None:
            yield from stored_records(self.home.telemetry_db)
            return
        for device, seq, records in influx_ingest_marks(self.influx.url, INFLUX_DATABASE):
            for idx in range(records):
                yield RecordId(device, seq, idx)

    def start(self) -> None:
        if self.release is not None:
            self.release.server.start()
        self.hub.start()
        for agent in self.agents:
            agent.start()

    def close(self) -> None:
        """Stop the agents cleanly (each drains its outbox), then the hub and the broker."""
        for agent in self.agents:
            agent.stop()
        self.hub.stop()
        if self.release is not None:
            self.release.server.stop()
        self.broker.stop()
        self.registry.close()
        if self.influx is not None:
            self.influx.stop()

    def kill_everything(self) -> None:
        for child in (*self.agents, self.hub, *([self.release.server] if self.release else [])):
            child.kill()
        self.broker.kill()
        self.registry.close()
        if self.influx is not None:
            self.influx.stop()
        if self.postgres is not None:
            self.postgres.stop()
        if self.links is not None:
            self.links.close()
