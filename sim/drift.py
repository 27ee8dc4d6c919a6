"""``roadside demo --scenario drift``: the model loop closes on one machine, without a human step.

Without a human step because the demo marks its two agents trusted for the dataset
(``roadside dataset trust set`` does the same), which a real fleet should not do
for devices in the field: see docs/retraining-trust.md.

Two agents (separate processes, as on poles) watch synthetic streets in clear
weather; after ``drift_at_s`` fog rolls in and the deployed detector starts
missing road users. The agents pick hard examples (uncertain detections),
blur faces and plates, and upload them with the scene's ground truth as
labels. The hub's retraining loop commits them as a dataset version,
fine-tunes the published model, publishes it only if it beats it on the
fixed held-out set, and rolls it out canary first with shadow gates. The
agents switch; accuracy on fog recovers.

Accuracy is mAP@0.5 against ground truth on the fixed held-out frames of
:mod:`roadside.models.evaluate` (the same frames the publish gate uses):
``map_before`` is the deployed model in clear weather, ``map_drift`` the
same model in fog, ``map_after`` the model the agents run at the end, in fog.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from rich.console import Console

from roadside.cloud.broker.mosquitto import MosquittoBroker
from roadside.cloud.home import HubHome, acl_devices, enroll_device, init_home
from roadside.cloud.hub import Hub
from roadside.cloud.registry import Registry
from roadside.cloud.release import keys as tuf_keys
from roadside.cloud.release.publishing import publish_candidate
from roadside.cloud.release.repository import ModelRepository
from roadside.cloud.release.rollouts import GateThresholds, RolloutPlan
from roadside.cloud.settings import HubSettings, RetrainConfig
from roadside.edge.inference.engine import DEFAULT_MODEL
from roadside.shared.bundle import BrokerAddress
from roadside.shared.errors import RoadsideError
from roadside.sim.demo import start_agent, stop_agents

log = logging.getLogger(__name__)

DRIFT_DEVICES: Final = (("pole-01", "main-st"), ("pole-02", "main-st"))
CLEAR: Final = "day"
DRIFT: Final = "fog"  # models.evaluate.CONDITIONS["fog"]: light 1.0, fog 0.6
FPS: Final = 5.0


def _agent_config(workdir: Path, device_id: str, seed: int, drift_at_s: float) -> Path:
    config = {
        "sources": [
            {
                "type": "synthetic",
                "name": "cam0",
                "seed": seed,
                "fps": FPS,
                "realtime": True,
                "drift": {"after_frames": round(drift_at_s * FPS), "light": 1.0, "fog": 0.6},
            }
        ],
        "interval_s": 5,
        "heartbeat_s": 2,
        "outbox": {"path": str(workdir / "agents" / device_id / "outbox.db")},
        # Uncertain detections are the hard examples; one per stream every 2 s keeps redaction (CPU) affordable.
        "samples": {
            "enabled": True,
            "min_interval_s": 2.0,
            "budget_bytes_per_hour": 2_000_000_000,
            "confidence_band": [0.25, 0.6],
            "privacy": {"images_leave_device": True},
        },
        "ota": {"shadow_every": 1},
    }
    path = workdir / "agents" / device_id / "agent.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path


def _repository(home: HubHome, registry: Registry, eval_frames: int) -> dict[str, Any]:
    """A TUF repository (demo root keys in the home) holding the shipped detector as 0.1.0; its scores."""
    signers = tuf_keys.generate_root_keys(home.root / "release" / "DEMO-root-keys", 3)
    ModelRepository.create(
        home.repository_dir,
        home.online_keys_dir,
        root_keys=tuf_keys.public_keys(signers),
        threshold=2,
        root_signers=signers[:2],
        audit=registry.audit,
        actor="demo",
    )
    outcome = publish_candidate(
        home, registry, DEFAULT_MODEL, name="detector", version="0.1.0", actor="demo", eval_frames=eval_frames
    )
    return dict(outcome.candidate)


def run_drift(
    duration_s: float,
    workdir: Path | None = None,
    *,
    drift_at_s: float = 20.0,
    min_samples: int = 60,
    eval_frames: int = 96,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the scenario for at most ``duration_s`` (it ends early once the new model is everywhere)."""
    console = console or Console(stderr=True)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="roadside-drift-"))
    started = time.monotonic()
    home = init_home(workdir, ["localhost"], ["127.0.0.1"], force=True)
    registry = Registry(home.registry_url)
    registry.create_schema()
    console.print("scoring the deployed detector on the fixed held-out set...")
    deployed = _repository(home, registry, eval_frames)
    broker = MosquittoBroker(
        home.broker_dir, ca_cert_pem=home.ca_file.read_bytes(), server=home.broker_server_cert()
    )
    agents = []
    hub: Hub | None = None
    try:
        broker.start()
        settings = HubSettings(
            home=workdir,
            broker_port=broker.port,
            api_port=0,
            repo_port=0,
            rollout_tick_s=0.5,
            retrain=RetrainConfig(
                enabled=True,
                min_samples=min_samples,
                check_s=2.0,
                min_interval_s=600.0,
                eval_frames=eval_frames,
                rollout=RolloutPlan(
                    canary=1,
                    waves=(100,),
                    soak_s=5.0,
                    min_frames=10,
                    # One shared machine runs the broker, the hub (training included) and both agents,
                    # so latencies swing with load; a real pole has its own CPU.
                    gates=GateThresholds(health_wait_s=20.0, install_timeout_s=120.0, max_latency_ratio=3.0),
                ),
            ),
        )
        hub = Hub(settings)
        hub.start()
        if not hub.wait_ready(15):
            raise RoadsideError(f"the hub did not connect to the broker; see {broker.log_file}")
        for seed, (device_id, site) in enumerate(DRIFT_DEVICES):
            _, bundle = enroll_device(
                home, registry, device_id, site, BrokerAddress(host="127.0.0.1", port=broker.port),
                repo_url=hub.repo_url,
            )  # fmt: skip
            broker.reload_acl(acl_devices(registry))
            _trust_own_agent(hub, registry, device_id)
            agents.append(
                start_agent(workdir, device_id, bundle, _agent_config(workdir, device_id, seed, drift_at_s))
            )
        console.print(
            f"agents started; fog rolls in after {drift_at_s:.0f} s. API {hub.api_url}, state in {workdir}"
        )
        result = _follow(hub, registry, started + duration_s, console)
    finally:
        stop_agents(agents)
        if hub is not None:
            hub.stop()
        broker.stop()
    final = _final_model(registry)
    summary = {
        "map_before": round(deployed["conditions"][CLEAR]["map50"], 4),
        "map_drift": round(deployed["conditions"][DRIFT]["map50"], 4),
        "map_after": round(final[DRIFT]["map50"], 4)
        if final
        else round(deployed["conditions"][DRIFT]["map50"], 4),
        **result,
        "eval_frames_per_condition": eval_frames,
        "seconds": round(time.monotonic() - started, 1),
        "state": str(workdir),
    }
    registry.close()
    return summary


def _trust_own_agent(hub: Hub, registry: Registry, device_id: str) -> None:
    """The demo's agents run here and label with the scene's ground truth: trusted, explicitly, on record.

    A real fleet's labels wait for an operator's review (docs/retraining-trust.md); the
    per-device cap still applies to these two.
    """
    note = "drift demo: its own agent on this machine"
    registry.record_audit(
        "demo", "dataset.trust.set", hub.datasets.name, {"device_id": device_id, "note": note}
    )
    hub.datasets.set_trusted(device_id, True, actor="demo", note=note)


def _follow(hub: Hub, registry: Registry, deadline: float, console: Console) -> dict[str, Any]:
    """Watch samples, retraining and rollouts until the new model is everywhere or time is up."""
    assert hub.retrainer is not None
    shown = ""
    while time.monotonic() < deadline:
        rollouts = registry.rollouts.list()
        done = [r for r in rollouts if r.status == "completed"]
        line = (
            f"samples waiting {hub.retrainer.waiting()}, dataset versions {hub.datasets.versions()}, "
            f"runs {len(hub.retrainer.runs)}, rollouts {[(r.id, r.model_version, r.status) for r in rollouts]}"
        )
        if line != shown:
            console.print(line)
            shown = line
        if done:
            break
        time.sleep(1.0)
    return _outcome(hub, registry)


def _outcome(hub: Hub, registry: Registry) -> dict[str, Any]:
    rollouts = registry.rollouts.list()
    completed = [r for r in rollouts if r.status == "completed"]
    rollout_seconds = None
    if completed:
        r = completed[-1]
        rollout_seconds = round((r.updated_at - r.created_at).total_seconds(), 1)
    runs = hub.retrainer.runs if hub.retrainer is not None else []
    devices_on_new = 0
    if completed:
        devices_on_new = sum(1 for d in registry.rollouts.devices(completed[-1].id) if d.state == "active")
    return {
        "rollout_seconds": rollout_seconds,
        "rolled_back": sum(1 for r in rollouts if r.status == "rolled_back"),
        "retrain_runs": [run.as_dict() for run in runs],
        "samples_received": _samples(hub),
        "new_version": completed[-1].model_version if completed else None,
        "devices_on_new": devices_on_new,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _samples(hub: Hub) -> int:
    latest = hub.datasets.latest()
    return (len(latest.samples) if latest is not None else 0) + len(hub.datasets.pending())


def _final_model(registry: Registry) -> dict[str, Any] | None:
    """Held-out scores of the newest model a rollout completed with (stored when it was published)."""
    completed = [r for r in registry.rollouts.list() if r.status == "completed"]
    if not completed:
        return None
    record = registry.models.get("detector", completed[-1].model_version)
    evaluation = record.metadata.get("evaluation") if record is not None else None
    conditions = evaluation.get("conditions") if isinstance(evaluation, dict) else None
    return dict(conditions) if isinstance(conditions, dict) else None
