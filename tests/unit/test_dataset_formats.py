"""COCO and YOLO export/import: round trips, a CVAT-style relabel, refusals that write nothing, the CLI."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from roadside.cli import build
from roadside.cloud.dataset.formats import COCO_ANNOTATIONS, export, import_labels
from roadside.cloud.dataset.store import DatasetStore
from roadside.cloud.home import HubHome
from roadside.shared.dataset import DatasetManifest
from roadside.shared.errors import ConfigError
from roadside.shared.schemas import HardExample, LabeledBox
from tests.unit.test_dataset_store import approve_all


def jpeg(seed: int, w: int = 160, h: int = 120) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(".jpg", image)
    assert ok
    return bytes(buffer.tobytes())


def example(seed: int, labels: list[LabeledBox] | None) -> HardExample:
    return HardExample(
        sample_id=uuid.uuid4(),
        ts=datetime(2025, 1, 1, tzinfo=UTC),
        stream="cam0",
        model_version="det-1",
        reasons=["rare_class"],
        score=0.9,
        width=160,
        height=120,
        image_jpeg_b64=base64.b64encode(jpeg(seed)).decode(),
        redacted=True,
        labels=labels,
    )


LABELS = {
    1: [
        LabeledBox(cls="car", box=(10.25, 20.5, 80.125, 60.75)),
        LabeledBox(cls="cyclist", box=(0.0, 0.0, 160.0, 120.0)),
    ],
    2: [],  # labelled: nothing there
    3: None,  # not labelled yet
}


@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    store = DatasetStore(tmp_path / "hub" / "datasets" / "detector", "detector")
    store.add("dev-a", [example(seed, labels) for seed, labels in LABELS.items()])
    approve_all(store)
    store.commit("from devices")
    return store


def assert_same_boxes(a: DatasetManifest, b: DatasetManifest) -> None:
    assert [s.sha256 for s in a.samples] == [s.sha256 for s in b.samples]
    for x, y in zip(a.samples, b.samples, strict=True):
        assert (x.labels is None) == (y.labels is None)
        for p, q in zip(x.labels or (), y.labels or (), strict=True):
            assert p.cls == q.cls
            assert p.box == pytest.approx(q.box, rel=1e-6, abs=0.5)


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_export_then_import_gives_the_same_boxes(store: DatasetStore, tmp_path: Path, fmt: str) -> None:
    v1 = store.manifest()
    out = export(store, v1, fmt, tmp_path / "export")  # type: ignore[arg-type]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{s.sha256}.jpg" for s in v1.samples)
    path = out / COCO_ANNOTATIONS if fmt == "coco" else out
    v2 = import_labels(store, fmt, path)  # type: ignore[arg-type]
    assert (v2.version, v2.parent) == (2, 1)
    assert_same_boxes(v1, v2)
    if fmt == "coco":  # COCO keeps the floats exactly
        assert v2.samples[0].labels == v1.samples[0].labels


def test_yolo_export_layout(store: DatasetStore, tmp_path: Path) -> None:
    out = export(store, store.manifest(), "yolo", tmp_path / "y")
    assert (out / "classes.txt").read_text() == "car\ncyclist\n"
    assert 'names:\n  0: "car"\n  1: "cyclist"\n' in (out / "data.yaml").read_text()
    first, second, third = store.manifest().samples
    cx = (10.25 + 80.125) / 2 / 160
    line = (out / "labels" / f"{first.sha256}.txt").read_text().splitlines()[0].split()
    assert line[0] == "0"
    assert float(line[1]) == pytest.approx(cx)
    assert (out / "labels" / f"{second.sha256}.txt").read_text() == ""  # labelled empty
    assert not (out / "labels" / f"{third.sha256}.txt").exists()  # not labelled yet
    with pytest.raises(ConfigError, match="not empty"):
        export(store, store.manifest(), "yolo", out)


def test_a_cvat_relabel_replaces_labels_and_adds_new_images(store: DatasetStore, tmp_path: Path) -> None:
    v1 = store.manifest()
    unlabelled = v1.samples[2]
    new_image = tmp_path / "cvat" / "images" / "street_0001.png"
    new_image.parent.mkdir(parents=True)
    cv2.imwrite(str(new_image), np.full((90, 120, 3), 60, np.uint8))
    doc = {
        "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "pedestrian"}],
        "images": [
            {"id": 7, "file_name": f"{unlabelled.sha256}.jpg", "width": 160, "height": 120},
            {"id": 8, "file_name": "street_0001.png", "width": 120, "height": 90},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 2, "bbox": [5, 5, 20, 40]},
            {"id": 2, "image_id": 8, "category_id": 1, "bbox": [0, 10, 50, 30]},
        ],
    }
    path = tmp_path / "cvat" / "annotations" / "instances_default.json"
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    v2 = import_labels(store, "coco", path, note="labelled in CVAT")
    assert v2.note == "labelled in CVAT"
    assert v2.classes == ("car", "cyclist", "pedestrian")
    assert v2.samples[:2] == v1.samples[:2]  # not in the file: untouched
    assert v2.samples[2].labels == (LabeledBox(cls="pedestrian", box=(5.0, 5.0, 25.0, 45.0)),)
    added = v2.samples[3]
    assert (added.width, added.height, added.origin.imported_from) == (120, 90, "coco:instances_default.json")
    assert store.object_path(added).read_bytes()[:3] == b"\xff\xd8\xff"  # stored as JPEG
    assert store.manifest(1) == v1


def test_merge_adds_only_missing_boxes(store: DatasetStore, tmp_path: Path) -> None:
    first = store.manifest().samples[0]
    folder = tmp_path / "yolo"
    (folder / "labels").mkdir(parents=True)
    (folder / "classes.txt").write_text("car\ncyclist\n")
    (folder / "labels" / f"{first.sha256}.txt").write_text(
        "0 0.2824218750 0.3395833333 0.4367187500 0.3375000000\n"  # the car already there
        "1 0.5 0.5 0.1 0.1\n"
    )
    v2 = import_labels(store, "yolo", folder, mode="merge")
    assert v2.samples[0].labels is not None
    assert len(v2.samples[0].labels) == 3
    assert v2.samples[0].labels[2].box == pytest.approx((72.0, 54.0, 88.0, 66.0))


def _yolo_folder(tmp_path: Path, sha: str, line: str) -> Path:
    folder = tmp_path / "bad"
    (folder / "labels").mkdir(parents=True)
    (folder / "classes.txt").write_text("car\ncyclist\n")
    (folder / "labels" / f"{sha}.txt").write_text(f"0 0.5 0.5 0.1 0.1\n{line}\n")
    return folder


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("5 0.5 0.5 0.1 0.1", r":2: unknown class id 5 \(2 classes\)"),
        ("0 0.95 0.5 0.2 0.1", r":2: box \(.*\) is outside the 160x120 image"),
        ("0 0.5 0.5 0.1", r":2: expected `class cx cy w h`"),
    ],
)
def test_bad_yolo_lines_name_file_and_line_and_write_nothing(
    store: DatasetStore, tmp_path: Path, line: str, message: str
) -> None:
    sha = store.manifest().samples[0].sha256
    folder = _yolo_folder(tmp_path, sha, line)
    with pytest.raises(ConfigError, match=f"{sha}.txt{message}"):
        import_labels(store, "yolo", folder)
    assert store.versions() == [1]


def test_bad_coco_input_writes_nothing(store: DatasetStore, tmp_path: Path) -> None:
    objects_before = sorted(store.objects.iterdir())
    new_image = tmp_path / "images" / "new.jpg"
    new_image.parent.mkdir()
    new_image.write_bytes(jpeg(99))
    base = {
        "categories": [{"id": 1, "name": "car"}],
        "images": [{"id": 1, "file_name": "new.jpg", "width": 160, "height": 120}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}],
    }
    cases = [
        ({"images": [*base["images"], {"id": 2, "file_name": "gone.jpg"}]}, r"images\[1\]: image gone.jpg"),
        (
            {"annotations": [{"id": 9, "image_id": 1, "category_id": 4, "bbox": [0, 0, 5, 5]}]},
            r"annotations\[0\] \(id 9\): unknown category id 4",
        ),
        (
            {"annotations": [{"id": 3, "image_id": 1, "category_id": 1, "bbox": [150, 0, 30, 10]}]},
            r"annotations\[0\] \(id 3\): box .* outside the 160x120 image",
        ),
    ]
    for change, message in cases:
        path = tmp_path / "instances.json"
        path.write_text(json.dumps({**base, **change}))
        with pytest.raises(ConfigError, match=rf"instances.json: {message}"):
            import_labels(store, "coco", path, images_dir=tmp_path / "images")
    path.write_text('{"categories": [\n  oops')
    with pytest.raises(ConfigError, match=r"instances.json:2: not JSON"):
        import_labels(store, "coco", path)
    assert store.versions() == [1]
    assert sorted(store.objects.iterdir()) == objects_before  # the new image was not stored either


def test_the_dataset_cli(store: DatasetStore, tmp_path: Path) -> None:
    home = store.folder.parent.parent
    assert HubHome(home).datasets_dir() == store.folder
    runner = CliRunner()
    app = build()

    def run(*args: str) -> dict[str, object]:
        result = runner.invoke(app, ["dataset", *args, "--home", str(home), "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)  # type: ignore[no-any-return]

    listed = run("list")
    assert listed["pending"] == 0
    versions = listed["versions"]
    assert isinstance(versions, list)
    assert [v["version"] for v in versions] == [1]
    shown = run("show", "--version", "1")
    assert shown["samples"] == 3
    assert shown["labelled"] == 2
    assert shown["by_reason"] == {"rare_class": 3}
    assert shown["boxes_by_class"] == {"car": 1, "cyclist": 1}
    run("export", "--format", "yolo", "--out", str(tmp_path / "out"))
    imported = run("import", str(tmp_path / "out"), "--format", "yolo", "--note", "round trip")
    assert imported["version"] == 2
    assert imported["note"] == "round trip"
    failed = runner.invoke(app, ["dataset", "commit", "--home", str(home)])
    assert failed.exit_code == 2
    assert "nothing to commit" in failed.output
    text = runner.invoke(app, ["dataset", "list", "--home", str(home)])
    assert text.exit_code == 0
    assert text.output.startswith("v1\t")
