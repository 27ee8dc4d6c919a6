"""The hub's dataset store: durable inbox, dedup, refusals, immutable versions (on a temporary folder)."""

from __future__ import annotations

import base64
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from roadside.cloud.dataset.store import DatasetStore
from roadside.shared.dataset import load_manifest
from roadside.shared.errors import ConfigError
from roadside.shared.schemas import HardExample, LabeledBox


def jpeg(seed: int, w: int = 64, h: int = 48) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(".jpg", image)
    assert ok
    return bytes(buffer.tobytes())


def example(seed: int, labels: list[LabeledBox] | None = None, **kw: object) -> HardExample:
    fields: dict[str, object] = {
        "sample_id": uuid.uuid4(),
        "ts": datetime(2025, 1, 1, tzinfo=UTC),
        "stream": "cam0",
        "model_version": "det-1",
        "reasons": ["low_confidence"],
        "score": 0.8,
        "width": 64,
        "height": 48,
        "image_jpeg_b64": base64.b64encode(jpeg(seed)).decode(),
        "redacted": True,
        "labels": labels,
    }
    return HardExample.model_validate({**fields, **kw})


CAR = LabeledBox(cls="car", box=(1.0, 2.0, 30.0, 20.0))


def approve_all(store: DatasetStore) -> None:
    """What an operator does after looking at every labelled sample (``roadside dataset review approve``)."""
    waiting = [e.seq for e in store.inbox() if e.sample.labels is not None and e.review is None]
    store.set_review(store.review_targets(waiting), "approved", "cli:test")


def test_added_samples_are_pending_until_commit_makes_a_version(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "detector")
    assert store.add("dev-a", [example(1, [CAR]), example(2)]) == 2
    assert len(store.pending()) == 2
    assert store.versions() == []
    approve_all(store)
    v1 = store.commit("first")
    assert (v1.version, v1.parent, v1.note, v1.classes) == (1, None, "first", ("car",))
    assert [s.labels for s in v1.samples] == [(CAR,), None]
    assert v1.samples[0].origin.device_id == "dev-a"
    assert v1.samples[0].origin.reasons == ("low_confidence",)
    for sample in v1.samples:  # content-addressed, and the bytes are the device's
        assert (store.folder / sample.file).name == f"{sample.sha256}.jpg"
    assert (store.folder / v1.samples[0].file).read_bytes() == jpeg(1)
    assert store.pending() == []
    assert load_manifest(store.folder) == v1  # what training reads


def test_a_new_version_grows_from_its_parent_and_the_old_one_is_unchanged(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "detector")
    store.add("dev-a", [example(1)])
    v1 = store.commit()
    raw_v1 = (store.folder / "v1.json").read_bytes()
    store.add("dev-b", [example(2, [LabeledBox(cls="truck", box=(0, 0, 10, 10))])])
    approve_all(store)
    v2 = store.commit()
    assert (v2.version, v2.parent) == (2, 1)
    assert [s.sha256 for s in v2.samples[:1]] == [s.sha256 for s in v1.samples]
    assert len(v2.samples) == 2
    assert v2.classes == ("truck",)
    assert (store.folder / "v1.json").read_bytes() == raw_v1
    assert store.manifest(1).digest() == v1.digest() != v2.digest()
    assert store.versions() == [1, 2]


def test_versions_are_never_overwritten(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "detector")
    store.add("dev-a", [example(1)])
    v1 = store.commit()
    with pytest.raises(ConfigError, match="already exists"):
        store._write_manifest(v1)
    with pytest.raises(ConfigError, match="nothing to commit"):
        store.commit()


def test_duplicates_by_sample_id_and_by_image(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "detector")
    first = example(1)
    assert store.add("dev-a", [first]) == 1
    assert store.add("dev-a", [first]) == 0  # redelivered (at-least-once)
    assert store.add("dev-b", [example(1)]) == 0  # another id, the same image
    store.commit()
    assert store.add("dev-a", [example(1)]) == 0  # already in a version
    report = store.add_report("dev-a", [example(1), example(3)])
    assert (report.added, report.duplicates) == (1, 1)
    assert store.counts["duplicate"] == 4


def test_undecodable_unredacted_and_mis_sized_images_are_refused_not_crashed(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "detector")
    garbage = example(1, image_jpeg_b64=base64.b64encode(b"not a jpeg at all").decode())
    unredacted = example(2, redacted=False)
    wrong_size = example(3, width=100)
    report = store.add_report("dev-a", [garbage, unredacted, wrong_size, example(4)])
    assert report.added == 1
    assert dict(report.rejected) == {"undecodable": 1, "not_redacted": 1, "size_mismatch": 1}
    assert any("does not decode" in e for e in report.errors)
    assert any("declared 100x48 but the image is 64x48" in e for e in report.errors)
    assert len(store.pending()) == 1
    assert len(list(store.objects.iterdir())) == 1  # nothing written for the refused ones


def test_the_inbox_survives_a_restart_and_a_crash_between_manifest_and_inbox(tmp_path: Path) -> None:
    folder = tmp_path / "detector"
    store = DatasetStore(folder)
    store.add("dev-a", [example(1), example(2)])
    store.close()
    store = DatasetStore(folder)  # a new process
    assert len(store.pending()) == 2
    v1 = store.commit()
    # Simulate a crash after v1.json was linked but before the inbox rows were marked.
    store._db.execute("UPDATE inbox SET committed_in = NULL")
    store.add("dev-a", [example(3)])
    v2 = store.commit()
    assert len(v2.samples) == 3  # the two already in v1 are not added twice
    assert [s.sha256 for s in v2.samples[:2]] == [s.sha256 for s in v1.samples]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert os.stat(folder / "v2.json").st_nlink == 1  # the temporary link is gone
