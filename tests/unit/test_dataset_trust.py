"""Item 19 of the hardening issue: field labels train a model only when reviewed or trusted, under a cap."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from roadside.cli import build
from roadside.cloud.dataset.store import DatasetStore
from roadside.cloud.dataset.trust import InboxEntry, TrustPolicy, device_quota, select_for_version
from roadside.cloud.fleet.audit import AuditLog
from roadside.cloud.home import HubHome
from roadside.cloud.registry import Registry
from roadside.shared.dataset import DatasetSample, SampleOrigin
from roadside.shared.errors import ConfigError
from roadside.shared.schemas import LabeledBox
from tests.unit.test_dataset_store import CAR, example

BOX = LabeledBox(cls="car", box=(1.0, 1.0, 5.0, 5.0))


def sample(i: int, device: str | None, labelled: bool = True) -> DatasetSample:
    return DatasetSample(
        sha256=f"{i:064x}",
        file=f"objects/{i:064x}.jpg",
        width=64,
        height=48,
        labels=(BOX,) if labelled else None,
        origin=SampleOrigin(device_id=device) if device else SampleOrigin(imported_from="coco:x.json"),
    )


def entry(i: int, device: str, labelled: bool = True, review: str | None = None) -> InboxEntry:
    return InboxEntry(i, device, sample(i, device, labelled), review)  # type: ignore[arg-type]


# -- the pure policy -------------------------------------------------------------------------


def test_field_labels_need_review_unless_the_device_is_trusted() -> None:
    entries = [
        entry(1, "pole-1"),
        entry(2, "pole-1", labelled=False),
        entry(3, "pole-2", review="approved"),
        entry(4, "pole-2", review="rejected"),
        entry(5, "pole-3"),
    ]
    chosen = select_for_version([], entries, TrustPolicy(trusted=frozenset({"pole-3"}), max_device_share=1.0))
    assert [e.seq for e in chosen.taken] == [2, 3, 5]
    assert [e.seq for e in chosen.held["needs_review"]] == [1]
    assert [e.seq for e in chosen.rejected] == [4]
    # A rejection holds even for a trusted device.
    trusting = TrustPolicy(trusted=frozenset({"pole-2"}), max_device_share=1.0)
    assert 4 not in [e.seq for e in select_for_version([], entries, trusting).taken]


def test_the_cap_keeps_one_device_under_its_share() -> None:
    trusted = TrustPolicy(trusted=frozenset({"a", "b"}), max_device_share=0.5)
    entries = [entry(i, "a") for i in range(10)] + [entry(100 + i, "b") for i in range(4)]
    chosen = select_for_version([], entries, trusted)
    assert Counter(e.device_id for e in chosen.taken) == {"a": 4, "b": 4}
    assert [e.seq for e in chosen.held["device_cap"]] == list(range(4, 10))  # the newest wait
    # One device alone can never be more than half: with imports labelled by people it can add up to them.
    imports = [sample(1000 + i, None) for i in range(6)]
    alone = select_for_version(imports, [entry(i, "a") for i in range(10)], trusted)
    assert len(alone.taken) == 6
    assert select_for_version([], [entry(i, "a") for i in range(10)], trusted).taken == ()
    # What a parent version already holds stays; the device only gets no more.
    parent = [sample(2000 + i, "a") for i in range(8)] + [sample(3000, "b")]
    assert device_quota(parent, [entry(1, "a"), entry(2, "b")], 0.5) == {"a": 0, "b": 1}


def test_approved_samples_are_not_capped_but_count_in_the_total() -> None:
    entries = [entry(i, "a", review="approved") for i in range(3)] + [entry(10 + i, "b") for i in range(9)]
    chosen = select_for_version([], entries, TrustPolicy(trusted=frozenset({"b"}), max_device_share=0.5))
    assert Counter(e.device_id for e in chosen.taken) == {"a": 3, "b": 3}


def test_unlabelled_samples_are_not_capped_or_reviewed() -> None:
    chosen = select_for_version([], [entry(i, "a", labelled=False) for i in range(5)], TrustPolicy())
    assert len(chosen.taken) == 5
    assert chosen.labelled() == 0


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5, float("nan")])
def test_a_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(ConfigError, match="max device share"):
        TrustPolicy(max_device_share=share)


@settings(max_examples=150, deadline=None)
@given(
    offered=st.lists(st.sampled_from("abcd"), max_size=60),
    parent=st.lists(st.sampled_from(["a", "b", None]), max_size=30),
    share=st.sampled_from([0.2, 0.25, 1 / 3, 0.5, 0.75, 1.0]),
)
def test_no_device_grows_past_its_share_and_the_quota_is_maximal(
    offered: list[str], parent: list[str | None], share: float
) -> None:
    parent_samples = [sample(1000 + i, d) for i, d in enumerate(parent)]
    candidates = [entry(i, d) for i, d in enumerate(offered)]
    quota = device_quota(parent_samples, candidates, share)
    before = Counter(d for d in parent if d)
    offered_n = Counter(offered)
    total = len(parent) + sum(quota.values())
    for device, n in quota.items():
        assert 0 <= n <= offered_n[device]
        if n > 0:  # a device that grew is within the share of the version it grew into
            assert before[device] + n <= share * total + 1e-9
    # Maximal: no single device could take one more without breaking its own share.
    for device in offered_n:
        if quota[device] < offered_n[device]:
            assert before[device] + quota[device] + 1 > share * (total + 1) + 1e-9


# -- the store -------------------------------------------------------------------------------


def test_commit_takes_only_admitted_labels(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "detector")
    try:
        store.add("pole-1", [example(1, [CAR]), example(2, [CAR]), example(3)])  # two labelled, one not
        store.add("pole-2", [example(4, [CAR]), example(5, [CAR])])
        assert len(store.pending()) == 5
        assert store.selection().labelled() == 0  # nothing labelled is admitted by default
        v1 = store.commit("unlabelled only")
        assert [s.labels for s in v1.samples] == [None]
        assert len(store.pending()) == 4
        with pytest.raises(ConfigError, match=r"4 labelled sample\(s\) wait for review"):
            store.commit()
        waiting = {e.sample.origin.sample_id: e.seq for e in store.inbox()}
        one = waiting[store.inbox()[0].sample.origin.sample_id]
        store.set_review(store.review_targets([one]), "approved", "cli:alice")
        store.set_review(store.review_targets(device_id="pole-2"), "rejected", "cli:alice")
        v2 = store.commit()
        assert v2.labelled()[0].origin.device_id == "pole-1"
        assert len(v2.labelled()) == 1
        assert len(store.pending()) == 1  # pole-1's other sample; pole-2's are rejected, out of pending
        with pytest.raises(ConfigError, match="no labelled sample waits"):
            store.review_targets([9999])
        # Trusting pole-1 admits its waiting sample by trust alone: capped, and pole-1 already holds all.
        store.set_trusted("pole-1", True, "cli:alice")
        assert store.selection().held_counts() == {"device_cap": 1}
        store.set_max_device_share(1.0)
        assert len(store.commit().labelled()) == 2
        assert store.set_trusted("pole-1", False, "cli:alice")
        assert store.trust_policy().trusted == frozenset()
    finally:
        store.close()


def test_an_inbox_from_before_review_gets_the_columns_and_its_labels_wait(tmp_path: Path) -> None:
    folder = tmp_path / "detector"
    folder.mkdir()
    db = sqlite3.connect(folder / "inbox.db")
    db.executescript(
        """CREATE TABLE inbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, sample_id TEXT NOT NULL UNIQUE,
        sha256 TEXT NOT NULL, device_id TEXT NOT NULL, received_at TEXT NOT NULL, sample TEXT NOT NULL,
        committed_in INTEGER);"""
    )
    old = sample(7, "pole-9")
    db.execute(
        "INSERT INTO inbox (sample_id, sha256, device_id, received_at, sample) VALUES ('x', ?, 'pole-9', 'now', ?)",
        (old.sha256, old.model_dump_json()),
    )
    db.commit()
    db.close()
    store = DatasetStore(folder)
    try:
        assert [e.review for e in store.inbox()] == [None]
        assert store.selection().held_counts() == {"needs_review": 1}
    finally:
        store.close()


# -- the CLI, audited ------------------------------------------------------------------------


def _cli(home: Path, *args: str) -> str:
    result = CliRunner().invoke(build(), [*args, "--home", str(home)])
    assert result.exit_code == 0, result.output
    return result.output


def test_review_and_trust_from_the_cli_are_audited(tmp_path: Path) -> None:
    home = HubHome(tmp_path)
    registry = Registry(home.registry_url)
    registry.create_schema()
    store = DatasetStore(home.datasets_dir("detector"), "detector")
    try:
        store.add("pole-1", [example(1, [CAR]), example(2, [CAR])])
        store.add("pole-2", [example(3, [CAR])])
        listed = json.loads(_cli(tmp_path, "dataset", "review", "list", "--json"))
        assert [(r["device_id"], r["review"], r["device_trusted"]) for r in listed] == [
            ("pole-1", None, False),
            ("pole-1", None, False),
            ("pole-2", None, False),
        ]
        assert Path(listed[0]["image"]).is_file()  # what the reviewer opens
        _cli(tmp_path, "dataset", "review", "approve", str(listed[0]["seq"]), "--note", "boxes ok")
        _cli(tmp_path, "dataset", "review", "reject", "--device", "pole-2", "--note", "boxes on the sky")
        _cli(tmp_path, "dataset", "trust", "set", "pole-7", "--note", "bench pole in our lab")
        _cli(tmp_path, "dataset", "policy", "--max-device-share", "0.75")
        status = json.loads(_cli(tmp_path, "dataset", "list", "--json"))
        assert (status["pending"], status["admitted"], status["held"]) == (2, 1, {"needs_review": 1})
        assert "pole-7" in _cli(tmp_path, "dataset", "trust", "list")
        _cli(tmp_path, "dataset", "trust", "unset", "pole-7")
        bad = CliRunner().invoke(
            build(), ["dataset", "policy", "--max-device-share", "2", "--home", str(tmp_path)]
        )
        assert bad.exit_code == 2
        assert "max device share" in bad.output
        neither = CliRunner().invoke(build(), ["dataset", "review", "approve", "--home", str(tmp_path)])
        assert neither.exit_code == 2
        log = AuditLog(registry)
        entries = [e for e in log.entries(limit=None) if e.action.startswith("dataset.")]
        assert [e.action for e in entries] == [
            "dataset.review.approve",
            "dataset.review.reject",
            "dataset.trust.set",
            "dataset.policy.set",
            "dataset.trust.unset",
        ]
        assert all(e.actor.startswith("cli:") for e in entries)
        assert entries[0].details["seqs"] == [listed[0]["seq"]]
        assert entries[1].details["devices"] == ["pole-2"]
        assert entries[3].details["max_device_share"] == [0.5, 0.75]
        assert log.verify().ok
    finally:
        store.close()
        registry.close()
