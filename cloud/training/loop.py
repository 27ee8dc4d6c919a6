"""The closed loop on the hub: hard examples in, a retrained, gated, published model rolled out.

When enough admitted labelled hard examples wait in the dataset inbox,
:class:`RetrainLoop` commits them as a new dataset version, fine-tunes the
published model on that version (:mod:`roadside.models.retrain`: parity-checked export,
evaluation on the fixed held-out set, model card with lineage), publishes it only
if it beats the published one (:mod:`roadside.cloud.release.publishing`), and starts a
staged rollout (canary first, gates, automatic rollback). Every step is in the
audit log (``retrain.run`` with what happened and why).

Labels from devices are admitted by the dataset's trust policy
(:mod:`roadside.cloud.dataset.trust`): an operator approves them (``roadside dataset review``)
or marks their device trusted, and no device holds more than the per-device cap of a
version. That is the human step: a compromised device cannot train a model on its own
labels. The held-out set the publish gate scores on is rendered from fixed seeds in
code (:mod:`roadside.models.evaluate`), never read from the dataset, so no device can reach it.

Off by default (``retrain.enabled``); it runs in the hub process that serves
the API, and needs the ``train`` extra (PyTorch).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

from roadside.cloud.dataset.store import DatasetStore
from roadside.cloud.home import HubHome
from roadside.cloud.registry import Registry
from roadside.cloud.release.controller import RolloutController
from roadside.cloud.release.publishing import latest_published, publish_candidate, published_file
from roadside.cloud.release.rollouts import FINAL_STATES, RolloutSpec
from roadside.cloud.settings import RetrainConfig
from roadside.shared.errors import ConfigError, RoadsideError

log = logging.getLogger(__name__)

ACTOR: Final = "retrain-loop"
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def next_version(version: str) -> str:
    """``0.1.0`` → ``0.1.1``; ``2.0.0-fog3`` → ``2.0.0-fog4``: the last number goes up by one."""
    match = _LAST_NUMBER.search(version)
    if match is None:
        return f"{version}.1"
    return f"{version[: match.start()]}{int(match.group(1)) + 1}{version[match.end() :]}"


@dataclass(frozen=True, slots=True)
class RetrainSnapshot:
    """The state a retraining decision is made on."""

    waiting: int  # labelled hard examples the trust policy admits to the next dataset version
    last_publish: float | None  # monotonic end of the last run that published; None: none yet
    now: float  # monotonic
    rollout_statuses: tuple[str, ...] = ()  # of the policy's model, any age


@dataclass(frozen=True, slots=True)
class RetrainDecision:
    run: bool
    reason: str


def decide_retrain(snapshot: RetrainSnapshot, policy: RetrainConfig) -> RetrainDecision:
    """Whether the loop retrains now, and why (not): a pure function of its arguments."""
    if snapshot.last_publish is not None:
        since = snapshot.now - snapshot.last_publish
        if since < policy.min_interval_s:
            # A fleet is not retrained in a loop: a published run is given min_interval_s.
            return RetrainDecision(
                False, f"published {since:.0f} s ago; next after {policy.min_interval_s:.0f} s"
            )
    if snapshot.waiting < policy.min_samples:
        return RetrainDecision(False, f"{snapshot.waiting} of {policy.min_samples} labelled samples waiting")
    if any(status not in FINAL_STATES for status in snapshot.rollout_statuses):
        # One change at a time: a rollout in progress is judged on the fleet as it is, and
        # training beside it would load the machines its health gate measures.
        return RetrainDecision(False, f"a {policy.name} rollout is in progress")
    return RetrainDecision(True, f"{snapshot.waiting} labelled samples waiting")


@dataclass(frozen=True)
class RetrainRun:
    dataset_version: int
    samples: int
    parent_version: str
    version: str
    published: bool
    reason: str
    rollout_id: int | None
    train_seconds: float
    candidate: dict[str, Any]  # evaluation summary of the candidate

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset_version": self.dataset_version,
            "samples": self.samples,
            "parent": self.parent_version,
            "version": self.version,
            "published": self.published,
            "reason": self.reason,
            "rollout_id": self.rollout_id,
            "train_seconds": round(self.train_seconds, 1),
        }


class RetrainLoop:
    """Checks the inbox every ``policy.check_s``; one run at a time, on a thread named ``retrain``."""

    def __init__(
        self,
        home: HubHome,
        registry: Registry,
        datasets: DatasetStore,
        rollouts: RolloutController,
        policy: RetrainConfig,
    ) -> None:
        self.home = home
        self.registry = registry
        self.datasets = datasets
        self.rollouts = rollouts
        self.policy = policy
        self.runs: list[RetrainRun] = []
        self._last_publish: float | None = None  # monotonic, end of the last run that published
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retrain", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=300)  # a fine-tune in progress finishes its step budget

    def _loop(self) -> None:
        while not self._stop.wait(self.policy.check_s):
            try:
                run = self.run_once()
            except RoadsideError as exc:
                log.error("retraining failed: %s; trying again when more samples arrive", exc)
                self._audit("retrain.failed", {"error": str(exc)[:500]})
                continue
            except Exception:
                log.exception("retraining crashed; trying again later")
                continue
            if run is not None:
                self.runs.append(run)

    def waiting(self) -> int:
        """Labelled hard examples the trust policy admits to the next dataset version."""
        return self.datasets.selection().labelled()

    def snapshot(self) -> RetrainSnapshot:
        """What the decision needs, read from the dataset inbox, the registry and the clock."""
        statuses = tuple(r.status for r in self.registry.rollouts.list() if r.model_name == self.policy.name)
        return RetrainSnapshot(self.waiting(), self._last_publish, time.monotonic(), statuses)

    def run_once(self) -> RetrainRun | None:
        """One run if :func:`decide_retrain` says so; ``None`` otherwise."""
        snapshot = self.snapshot()
        decision = decide_retrain(snapshot, self.policy)
        if not decision.run:
            log.debug("not retraining %s: %s", self.policy.name, decision.reason)
            return None
        waiting = snapshot.waiting
        from roadside.models.card import DatasetRef, ParentRef
        from roadside.models.evaluate import CONDITIONS
        from roadside.models.finetune import FinetuneConfig, samples_from_manifest
        from roadside.models.retrain import RetrainRequest, file_sha256, retrain

        policy = self.policy
        current = latest_published(self.registry, policy.name)
        if current is None:
            raise ConfigError(f"no published {policy.name} to retrain from; publish one first")
        parent_path = published_file(self.home, current)
        if file_sha256(parent_path) != current.sha256:
            raise ConfigError(f"{parent_path} does not match the registry's sha256 for {current.version}")
        manifest = self.datasets.commit(note=f"{waiting} admitted hard examples for the retraining loop")
        frames = samples_from_manifest(self.datasets.folder, manifest)
        version = self._free_version(next_version(current.version))
        log.info(
            "retraining %s %s on dataset v%d (%d labelled samples) as %s",
            policy.name, current.version, manifest.version, len(frames), version,
        )  # fmt: skip
        finetune = (
            FinetuneConfig(steps=None, seconds=policy.finetune_seconds)
            if policy.finetune_seconds
            else FinetuneConfig()
        )
        # Scored where the published model was (SUMO's frames too, if it was released for them),
        # so the gate compares like with like.
        judged = current.metadata.get("evaluation")
        judged_on: tuple[str, ...] = tuple(judged.get("conditions", {})) if isinstance(judged, dict) else ()
        request = RetrainRequest(
            parent_path=parent_path,
            parent=ParentRef(
                sha256=current.sha256, name=current.name, version=current.version, path=str(parent_path)
            ),
            dataset=DatasetRef(manifest.name, manifest.version, manifest.digest(), len(frames)),
            out_dir=self.home.root / "training" / f"{policy.name}-{version}",
            name=policy.name,
            version=version,
            finetune=finetune,
            eval_frames=policy.eval_frames,
            conditions=judged_on or tuple(CONDITIONS),
        )
        started = time.monotonic()
        card = retrain(request, frames)
        train_seconds = time.monotonic() - started
        assert card is not None  # single process: this rank exports
        candidate = dict(card.variants[0].evaluation)
        outcome = publish_candidate(
            self.home,
            self.registry,
            request.out_dir / f"{policy.name}.onnx",
            name=policy.name,
            version=version,
            actor=ACTOR,
            parent=current.version,
            eval_frames=policy.eval_frames,
            candidate_summary=candidate,
        )
        rollout_id = None
        if outcome.record is not None:
            self._last_publish = time.monotonic()
            spec = RolloutSpec.of(policy.name, version, policy.rollout)
            rollout_id = self.rollouts.create(spec, actor=ACTOR).id
        run = RetrainRun(
            manifest.version, len(frames), current.version, version, outcome.record is not None,
            outcome.decision.reason, rollout_id, train_seconds, candidate,
        )  # fmt: skip
        self._audit("retrain.run", run.as_dict())
        log.info("retraining run: %s", run.as_dict())
        return run

    def _free_version(self, version: str) -> str:
        # A refused candidate leaves no registry row, but its training folder stays for inspection.
        while (
            self.registry.models.get(self.policy.name, version) is not None
            or (self.home.root / "training" / f"{self.policy.name}-{version}").exists()
        ):
            version = next_version(version)
        return version

    def _audit(self, action: str, details: dict[str, Any]) -> None:
        try:
            self.registry.record_audit(ACTOR, action, self.policy.name, details)
        except RoadsideError as exc:
            log.error("cannot audit %s: %s", action, exc)
