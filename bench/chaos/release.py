"""OTA rollouts under fire: a model repository served by a process of its own, rollouts, their books.

Each rollout publishes the shipped detector under a new version (same weights,
its own ``model_version``, so its own hash: the gates pass on behaviour) and
plans it for every agent, canary first, through the hub's rollout controller,
as ``roadside rollout create`` does. What the harness then demands of it
(:meth:`ChaosRelease.outstanding`): the rollout reaches a final state and so
does every device in it, and each agent runs what the books say:

- ``completed``: every device ``active`` and, for the newest rollout, its
  latest health report (by envelope ``seq``, not by its clock) naming the new
  version;
- ``rolled_back`` or ``aborted``, with a reason: every device ``pending``
  (never commanded), ``refused``, ``failed`` or ``rolled_back`` (it confirmed),
  none of them reporting the rolled-back version.

Anything else after the harness's patience is a rollout that never ends or a
device stuck mid-install.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import onnx

from bench.chaos.stack import Child
from roadside.cloud.home import HubHome
from roadside.cloud.registry import Registry
from roadside.cloud.release import keys
from roadside.cloud.release.controller import create_rollout
from roadside.cloud.release.repository import ModelRepository, release_model
from roadside.cloud.release.rollouts import FINAL_STATES, GateThresholds, RolloutSpec
from roadside.edge.inference.engine import DEFAULT_MODEL
from roadside.shared.bundle import EnrollmentBundle, ModelRepoAnchor

MODEL = "detector"
# A device in a rollout that ended without it: never commanded, could not install, or went back.
SETTLED_WITHOUT = frozenset({"pending", "refused", "failed", "rolled_back"})


def detector_variant(path: Path, version: str) -> Path:
    """The shipped detector with ``model_version`` = ``version`` (same weights, another hash)."""
    model = onnx.load(str(DEFAULT_MODEL))
    for prop in model.metadata_props:
        if prop.key in ("model_version", "version"):
            prop.value = version
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@dataclass(frozen=True, slots=True)
class StartedRollout:
    rollout_id: int
    version: str


class RepoServerProcess(Child):
    """``python -m bench.chaos.repo_server`` on a fixed port (a restart comes back where devices look)."""

    def __init__(self, directory: Path, home: HubHome, host: str, port: int, log: Path) -> None:
        cert, key = home.cert("broker")  # names localhost, 127.0.0.1 and the agents' veth addresses
        argv = ["-m", "bench.chaos.repo_server", "--directory", str(directory), "--host", host]
        argv += ["--port", str(port), "--cert", str(cert), "--key", str(key)]
        super().__init__(argv, log, ready_mark=b"serving the model repository")


class ChaosRelease:
    """The stack's model repository (outside the hub's disk, which ``disk-full`` fills), its
    server process, and the rollouts the harness started."""

    def __init__(self, root: Path, home: HubHome, registry: Registry, host: str, port: int) -> None:
        self.root = root
        self.home = home
        self.registry = registry
        self.port = port
        signers = keys.generate_root_keys(root / "root-keys", 1)
        self.repository = ModelRepository.create(
            root / "repository",
            root / "online-keys",
            root_keys=keys.public_keys(signers),
            threshold=1,
            root_signers=signers,
            audit=registry.audit,
        )
        self.server = RepoServerProcess(root / "repository", home, host, port, root / "repo-server.log")
        self.rollouts: list[StartedRollout] = []

    def anchor(self, bundle: EnrollmentBundle, host: str) -> EnrollmentBundle:
        """``bundle`` with the repository's anchor, reached at ``host`` (an agent's view of this machine)."""
        root_json = (self.root / "repository" / "metadata" / "root.json").read_text()
        repo = ModelRepoAnchor(url=f"https://{host}:{self.port}", root_json=root_json)
        return bundle.model_copy(update={"model_repo": repo})

    def start_rollout(self) -> StartedRollout:
        """Publish the next version and plan its rollout to every agent (the hub's controller runs it)."""
        version = f"1.{len(self.rollouts) + 1}.0"
        path = detector_variant(self.root / "models" / version / "detector.onnx", version)
        release_model(
            self.repository, self.registry, path, name=MODEL, min_agent_version="0.1.0", version=version
        )
        # The behaviour gates are tested elsewhere (tests/e2e/test_rollout_e2e.py); on this shared,
        # loaded machine an agent's FPS and latency swing by half between two health reports (a
        # restart, a neighbour's benchmark), and a rollback for that would hide what a fault did.
        gates = GateThresholds(
            install_timeout_s=60, health_wait_s=20, min_fps_ratio=0.2, max_latency_ratio=5.0
        )
        spec = RolloutSpec(
            MODEL, version, "all", canary=1, waves=(100,), soak_s=3.0, min_frames=4, gates=gates
        )
        started = StartedRollout(create_rollout(self.registry, spec, actor="chaos").id, version)
        self.rollouts.append(started)
        return started

    def where(self, started: StartedRollout) -> str:
        """Where a rollout stands now (for the log of what a fault interrupted)."""
        record = self.registry.rollouts.get(started.rollout_id)
        devices = self.registry.rollouts.devices(started.rollout_id)
        states = ", ".join(f"{d.device_id} {d.state}" for d in devices)
        return f"{record.status if record else 'missing'}: {states}"

    def outstanding(self) -> dict[str, str]:
        """Per rollout, what keeps it from being settled on every device (empty: all settled)."""
        behind: dict[str, str] = {}
        for started in self.rollouts:
            problem = self._problem(started)
            if problem:
                behind[f"rollout {started.rollout_id} ({started.version})"] = problem
        return behind

    def _problem(self, started: StartedRollout) -> str:
        record = self.registry.rollouts.get(started.rollout_id)
        if record is None:
            return "missing from the registry"
        devices = self.registry.rollouts.devices(started.rollout_id)
        states = ", ".join(f"{d.device_id} {d.state}" for d in devices)
        if record.status not in FINAL_STATES:
            return f"{record.status} ({states})"
        if record.status != "completed" and not record.reason:
            return f"{record.status} without a reason"
        running = self.running_versions()
        newest = started == self.rollouts[-1]  # a later rollout may have replaced what this one installed
        for device in devices:
            now_running = running.get(device.device_id, "?")
            if record.status == "completed":
                if device.state != "active" or (newest and now_running != started.version):
                    return f"completed, but {device.device_id} is {device.state} running {now_running}"
            elif device.state not in SETTLED_WITHOUT or now_running == started.version:
                return f"{record.status}, but {device.device_id} is {device.state} running {now_running}"
        return ""

    def running_versions(self) -> dict[str, str]:
        """Each device's model version, as its latest stored health report (highest ``seq``) says."""
        db_path = self.home.telemetry_db
        if not db_path.exists():
            return {}
        query = (
            "SELECT device_id, model_version FROM health AS h WHERE seq = "
            "(SELECT MAX(seq) FROM health WHERE device_id = h.device_id)"
        )
        with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)) as db:
            return {str(d): str(v) for d, v in db.execute(query)}

    def books(self) -> list[dict[str, object]]:
        """What became of each rollout, for the JSON line."""
        found: list[dict[str, object]] = []
        for started in self.rollouts:
            record = self.registry.rollouts.get(started.rollout_id)
            devices = self.registry.rollouts.devices(started.rollout_id)
            counts: dict[str, int] = {}
            for device in devices:
                counts[device.state] = counts.get(device.state, 0) + 1
            found.append(
                {
                    "id": started.rollout_id,
                    "version": started.version,
                    "status": record.status if record else "missing",
                    "reason": record.reason if record else "",
                    "devices": counts,
                }
            )
        return found
