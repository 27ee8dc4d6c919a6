"""The retraining loop's decisions before any training: when to run, which version to make."""

from __future__ import annotations

from pathlib import Path

import pytest

from roadside.cloud.dataset.store import DatasetStore
from roadside.cloud.home import HubHome
from roadside.cloud.registry import Registry
from roadside.cloud.release.controller import RolloutController, change_rollout, create_rollout
from roadside.cloud.release.rollouts import RolloutSpec
from roadside.cloud.settings import RetrainConfig
from roadside.cloud.training.loop import RetrainLoop, next_version
from roadside.shared.errors import ConfigError
from roadside.shared.keys import KeyPair
from roadside.shared.schemas import LabeledBox
from tests.unit.test_dataset_store import example


class NoCommands:
    def send(self, device_id: str, command_type: str, args: dict[str, object] | None = None) -> object:
        raise AssertionError("the loop must not reach a rollout here")


def test_versions_count_up() -> None:
    assert next_version("0.1.0") == "0.1.1"
    assert next_version("2.0.9") == "2.0.10"
    assert next_version("1.0.0-fog3") == "1.0.0-fog4"
    assert next_version("stable") == "stable.1"


def test_no_run_without_enough_labelled_samples_or_while_a_rollout_is_in_progress(tmp_path: Path) -> None:
    home = HubHome(tmp_path)
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.create_schema()
    registry.devices.enroll("pole-1", "main-st", KeyPair.generate().public())
    registry.models.publish("detector", "0.1.0", "a" * 64, 100)
    store = DatasetStore(tmp_path / "datasets" / "detector")
    rollouts = RolloutController(registry, NoCommands(), lambda _d: None)
    loop = RetrainLoop(home, registry, store, rollouts, RetrainConfig(min_samples=3))
    try:
        # The operator vouches for this pole, and lets one device be the whole dataset.
        store.set_trusted("pole-1", True, "cli:test")
        store.set_max_device_share(1.0)
        box = LabeledBox(cls="car", box=(1.0, 2.0, 20.0, 30.0))
        store.add("pole-1", [example(1, [box]), example(2, [box]), example(3, None)])  # one unlabelled
        assert loop.waiting() == 2
        assert loop.run_once() is None  # 2 < 3
        store.add("pole-1", [example(4, [box])])
        assert loop.waiting() == 3
        record = create_rollout(registry, RolloutSpec("detector", "0.1.0", "all", 1, (100,), 10.0))
        assert loop.run_once() is None  # the rollout in progress is judged first
        assert store.versions() == []  # nothing committed, nothing trained
        change_rollout(registry, record.id, "abort")
        # Now it would train: the parent's file is not in a repository, so it stops with a clear error.
        with pytest.raises(ConfigError, match="no target in the repository"):
            loop.run_once()
    finally:
        store.close()
        registry.close()


def test_labels_from_an_untrusted_device_do_not_train_until_reviewed(tmp_path: Path) -> None:
    """A compromised pole floods the inbox with labels: no commit, no training, until a person approves."""
    home = HubHome(tmp_path)
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.create_schema()
    registry.devices.enroll("pole-evil", "main-st", KeyPair.generate().public())
    registry.models.publish("detector", "0.1.0", "a" * 64, 100)
    store = DatasetStore(tmp_path / "datasets" / "detector")
    rollouts = RolloutController(registry, NoCommands(), lambda _d: None)
    loop = RetrainLoop(home, registry, store, rollouts, RetrainConfig(min_samples=3))
    try:
        sky = LabeledBox(cls="pedestrian", box=(0.0, 0.0, 64.0, 10.0))  # "pedestrians" on the sky
        store.add("pole-evil", [example(i, [sky]) for i in range(10)])
        assert loop.waiting() == 0
        assert loop.run_once() is None
        assert store.versions() == []
        # Trusted but alone: the per-device cap still keeps it from being the whole dataset.
        store.set_trusted("pole-evil", True, "cli:test")
        assert loop.waiting() == 0
        assert loop.run_once() is None
        assert store.versions() == []
        # A reviewer approves three (say they looked right): now the loop would train on them.
        store.set_trusted("pole-evil", False, "cli:test")
        seqs = [e.seq for e in store.inbox()][:3]
        store.set_review(store.review_targets(seqs), "approved", "cli:test")
        assert loop.waiting() == 3
        with pytest.raises(ConfigError, match="no target in the repository"):
            loop.run_once()
    finally:
        store.close()
        registry.close()
