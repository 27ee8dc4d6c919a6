"""COCO and YOLO: export a dataset version for labelling (CVAT), import the labels back.

Export writes ``images/<sha256>.jpg`` beside the labels, so a file's name is its hash
and an import matches it to the dataset without the image (CVAT's annotation-only
exports work). An image whose name is not a known hash is read from ``--images``,
checked, and added.

Import is validated completely before anything is written: a missing image, an unknown
class id, a box outside its image or a malformed line raises ``ConfigError`` naming the
file and the line (YOLO) or entry (COCO: ``annotations[i]``, since JSON entries have no
lines of their own); no object and no version is written then.

Merging, per image matched by hash: ``replace`` (default) takes the imported boxes as
the labels; ``merge`` adds imported boxes that the labels lack. An image with no boxes
in the import keeps its labels when it had none (exports list unlabelled frames too, so
"nothing drawn" there means "not labelled yet", not "empty"); a labelled image with no
boxes in a ``replace`` import becomes labelled-empty.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import ValidationError

from roadside.cloud.dataset.images import ALL_FORMATS
from roadside.cloud.dataset.paths import check_member_name, require_inside
from roadside.cloud.dataset.store import DatasetStore, SampleRejectedError, image_size
from roadside.shared.dataset import DatasetManifest, DatasetSample, SampleOrigin
from roadside.shared.errors import ConfigError
from roadside.shared.schemas import LabeledBox

MergeMode = Literal["replace", "merge"]
Format = Literal["coco", "yolo"]

_SHA = re.compile(r"^[0-9a-f]{64}$")
_EDGE_TOLERANCE_PX = 0.5  # a box may overhang its image by this much (rounding in labelling tools)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_NOT_LABEL_FILES = {"classes.txt", "train.txt", "val.txt", "valid.txt", "test.txt"}
COCO_ANNOTATIONS = Path("annotations") / "instances_default.json"  # CVAT's own export name


# -- export ------------------------------------------------------------------------------


def export(store: DatasetStore, manifest: DatasetManifest, fmt: Format, out: Path) -> Path:
    """Write ``manifest`` to the new folder ``out`` in ``fmt``; written beside it, then renamed in."""
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose a new folder to export to")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    for sample in manifest.samples:
        shutil.copyfile(store.object_path(sample), tmp / "images" / f"{sample.sha256}.jpg")
    if fmt == "coco":
        (tmp / COCO_ANNOTATIONS).parent.mkdir()
        (tmp / COCO_ANNOTATIONS).write_text(json.dumps(to_coco(manifest), indent=1))
    else:
        write_yolo_labels(manifest, tmp)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def to_coco(manifest: DatasetManifest) -> dict[str, Any]:
    """COCO instances JSON: categories numbered from 1 in the manifest's class order."""
    category = {name: i + 1 for i, name in enumerate(manifest.classes)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index, sample in enumerate(manifest.samples, start=1):
        images.append(
            {"id": index, "file_name": f"{sample.sha256}.jpg", "width": sample.width, "height": sample.height}
        )
        for box in sample.labels or ():
            x1, y1, x2, y2 = box.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index,
                    "category_id": category[box.cls],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                    "segmentation": [],
                }
            )
    return {
        "info": {
            "description": f"roadside dataset {manifest.name} v{manifest.version}",
            "version": str(manifest.version),
        },
        "licenses": [],
        "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in category.items()],
        "images": images,
        "annotations": annotations,
    }


def write_yolo_labels(manifest: DatasetManifest, folder: Path) -> None:
    """``labels/<sha>.txt`` (class cx cy w h, normalised) for labelled samples, ``classes.txt``, ``data.yaml``."""
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    index = {name: i for i, name in enumerate(manifest.classes)}
    for sample in manifest.samples:
        if sample.labels is None:
            continue  # no file: not labelled yet (an empty file means "labelled, nothing there")
        lines = [_yolo_line(index[b.cls], b.box, sample.width, sample.height) for b in sample.labels]
        (folder / "labels" / f"{sample.sha256}.txt").write_text("".join(lines))
    (folder / "classes.txt").write_text("".join(f"{c}\n" for c in manifest.classes))
    names = "".join(f"  {i}: {json.dumps(c)}\n" for i, c in enumerate(manifest.classes))
    (folder / "data.yaml").write_text(f"path: .\ntrain: images\nval: images\nnames:\n{names}")


def _yolo_line(cls: int, box: tuple[float, float, float, float], width: int, height: int) -> str:
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
    return f"{cls} {cx:.10f} {cy:.10f} {(x2 - x1) / width:.10f} {(y2 - y1) / height:.10f}\n"


# -- import ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportedImage:
    """One image of an import: matched by hash, or new (``data`` holds its JPEG bytes)."""

    sha256: str
    width: int
    height: int
    boxes: tuple[LabeledBox, ...]
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class ParsedImport:
    classes: tuple[str, ...]
    images: tuple[ImportedImage, ...]
    source: str  # "coco:<file>" or "yolo:<folder>"


def import_labels(
    store: DatasetStore,
    fmt: Format,
    path: Path,
    images_dir: Path | None = None,
    mode: MergeMode = "replace",
    note: str = "",
) -> DatasetManifest:
    """Read COCO or YOLO labels and write them as the dataset's next version."""
    parent = store.latest()
    known = {s.sha256: s for s in parent.samples} if parent is not None else {}
    parsed = parse_coco(path, known, images_dir) if fmt == "coco" else parse_yolo(path, known, images_dir)
    samples = merge(parent.samples if parent is not None else (), parsed, mode)
    for image in parsed.images:  # everything is valid: only now is anything written
        if image.data is not None:
            store.put_object(image.data, image.sha256)
    return store.write_version(
        parent.version if parent is not None else None,
        samples,
        parsed.classes,
        note or f"import {parsed.source} ({mode})",
    )


def merge(current: Sequence[DatasetSample], parsed: ParsedImport, mode: MergeMode) -> list[DatasetSample]:
    """The samples after an import: matched ones relabelled, new ones appended (pure)."""
    by_sha = {image.sha256: image for image in parsed.images}
    out: list[DatasetSample] = []
    for sample in current:
        image = by_sha.pop(sample.sha256, None)
        out.append(
            sample
            if image is None
            else sample.model_copy(update={"labels": _labels(sample.labels, image.boxes, mode)})
        )
    for image in by_sha.values():  # new images, in the order of the import
        out.append(
            DatasetSample(
                sha256=image.sha256,
                file=f"objects/{image.sha256}.jpg",
                width=image.width,
                height=image.height,
                labels=image.boxes or None,
                origin=SampleOrigin(imported_from=parsed.source),
            )
        )
    return out


def _labels(
    old: tuple[LabeledBox, ...] | None, new: tuple[LabeledBox, ...], mode: MergeMode
) -> tuple[LabeledBox, ...] | None:
    if not new:
        return old if old is None or mode == "merge" else ()
    if mode == "replace" or old is None:
        return new
    extra = tuple(b for b in new if not any(_same(b, o) for o in old))
    return old + extra


def _same(a: LabeledBox, b: LabeledBox) -> bool:
    return a.cls == b.cls and all(abs(p - q) <= _EDGE_TOLERANCE_PX for p, q in zip(a.box, b.box, strict=True))


# -- COCO --------------------------------------------------------------------------------


def parse_coco(path: Path, known: dict[str, DatasetSample], images_dir: Path | None) -> ParsedImport:
    """Validate a COCO instances file completely; ``ConfigError`` naming the file and entry."""
    doc = _read_json(path)
    where = str(path)
    try:
        categories = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
        entries = list(doc["images"])
        annotations = list(doc.get("annotations", []))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: not a COCO instances file (categories, images): {exc}") from exc
    folders = _image_folders(images_dir, [path.parent, path.parent / "images", path.parent.parent / "images"])
    images: dict[int, ImportedImage] = {}
    for i, entry in enumerate(entries):
        at = f"{where}: images[{i}]"
        try:
            image_id, name = int(entry["id"]), str(entry["file_name"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{at}: needs an integer id and a file_name") from exc
        images[image_id] = _resolve_image(name, known, folders, at, entry.get("width"), entry.get("height"))
    boxes: dict[int, list[LabeledBox]] = {k: [] for k in images}
    for i, ann in enumerate(annotations):
        at = f"{where}: annotations[{i}] (id {ann.get('id') if isinstance(ann, dict) else '?'})"
        try:
            image_id, category_id = int(ann["image_id"]), int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{at}: needs image_id, category_id and a 4-number bbox") from exc
        if image_id not in images:
            raise ConfigError(f"{at}: image_id {image_id} is not in images")
        if category_id not in categories:
            raise ConfigError(f"{at}: unknown category id {category_id} (known: {sorted(categories)})")
        image = images[image_id]
        boxes[image_id].append(_box(categories[category_id], (x, y, x + w, y + h), image, at))
    classes = tuple(categories[k] for k in sorted(categories))
    return ParsedImport(
        classes,
        tuple(_with_boxes(images[k], boxes[k]) for k in images),
        f"coco:{path.name}",
    )


def _read_text(path: Path) -> str:
    """An imported file's text; ``ConfigError`` when it cannot be read or is not UTF-8 (which
    used to escape as ``UnicodeDecodeError``: found by fuzz/, issue 14)."""
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not JSON: {exc.msg}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: not a COCO instances file (expected a JSON object)")
    return doc


# -- YOLO --------------------------------------------------------------------------------


def parse_yolo(folder: Path, known: dict[str, DatasetSample], images_dir: Path | None) -> ParsedImport:
    """Validate a YOLO folder (classes.txt, obj.names or data.yaml; ``*.txt`` label files)."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: a YOLO import is a folder with label files and classes.txt")
    classes = _yolo_classes(folder)
    images: list[ImportedImage] = []
    for label_file in sorted(p for p in folder.rglob("*.txt") if p.name not in _NOT_LABEL_FILES):
        require_inside(folder, label_file, str(label_file))
        mirrored = [label_file.parent]
        if "labels" in label_file.parts:  # Ultralytics layout: labels/x/... beside images/x/...
            parts = list(label_file.parent.parts)
            parts[len(parts) - 1 - parts[::-1].index("labels")] = "images"
            mirrored.insert(0, Path(*parts))
        folders = _image_folders(images_dir, mirrored)
        image = _resolve_image(label_file.stem, known, folders, f"{label_file}", None, None)
        images.append(_with_boxes(image, _yolo_boxes(label_file, classes, image)))
    return ParsedImport(classes, tuple(images), f"yolo:{folder.name}")


def _yolo_classes(folder: Path) -> tuple[str, ...]:
    for name in ("classes.txt", "obj.names"):
        path = folder / name
        if path.is_file():
            return tuple(line.strip() for line in _read_text(path).splitlines() if line.strip())
    data = folder / "data.yaml"
    if data.is_file():
        import yaml

        names = (yaml.safe_load(_read_text(data)) or {}).get("names")
        if isinstance(names, dict):
            return tuple(str(names[k]) for k in sorted(names, key=int))
        if isinstance(names, list):
            return tuple(str(n) for n in names)
        raise ConfigError(f"{data}: has no names list")
    raise ConfigError(f"{folder}: no classes.txt, obj.names or data.yaml names the classes")


def _yolo_boxes(path: Path, classes: Sequence[str], image: ImportedImage) -> list[LabeledBox]:
    boxes = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        at = f"{path}:{number}"
        fields = line.split()
        try:
            if len(fields) != 5:
                raise ValueError(f"expected 5 fields, got {len(fields)}")
            cls = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError as exc:
            raise ConfigError(f"{at}: expected `class cx cy w h`: {exc}") from exc
        if not 0 <= cls < len(classes):
            raise ConfigError(f"{at}: unknown class id {cls} ({len(classes)} classes)")
        x1, x2 = (cx - w / 2) * image.width, (cx + w / 2) * image.width
        y1, y2 = (cy - h / 2) * image.height, (cy + h / 2) * image.height
        boxes.append(_box(classes[cls], (x1, y1, x2, y2), image, at))
    return boxes


# -- shared checks -----------------------------------------------------------------------


def _image_folders(images_dir: Path | None, fallbacks: Iterable[Path]) -> list[Path]:
    return [images_dir] if images_dir is not None else [p for p in fallbacks if p.is_dir()]


def _resolve_image(
    name: str,
    known: dict[str, DatasetSample],
    folders: Sequence[Path],
    at: str,
    width: object,
    height: object,
) -> ImportedImage:
    stem = check_member_name(name, at).stem
    if _SHA.match(stem) and stem in known:
        sample = known[stem]
        if width is not None and (width, height) != (sample.width, sample.height):
            raise ConfigError(
                f"{at}: {name} is {sample.width}x{sample.height} in the dataset, {width}x{height} here"
            )
        return ImportedImage(stem, sample.width, sample.height, ())
    path = _find_image(name, folders, at)
    if path is None:
        looked = ", ".join(str(f) for f in folders) or "nowhere (pass --images)"
        raise ConfigError(f"{at}: image {name} is not in the dataset and not found in {looked}")
    data = _as_jpeg(path, at)
    w, h = image_size(data)
    if width is not None and (width, height) != (w, h):
        raise ConfigError(f"{at}: {name} is declared {width}x{height} but the file is {w}x{h}")
    return ImportedImage(hashlib.sha256(data).hexdigest(), w, h, (), data)


def _find_image(name: str, folders: Sequence[Path], at: str) -> Path | None:
    member = check_member_name(name, at)
    candidates = [member] if member.suffix else [member.with_name(member.name + s) for s in _IMAGE_SUFFIXES]
    for folder in folders:
        for candidate in candidates:
            for path in (folder / candidate, folder / PurePosixPath(candidate.name)):
                if path.is_file():
                    return require_inside(folder, path, at)
    return None


def _as_jpeg(path: Path, at: str) -> bytes:
    """The image's bytes if JPEG, else re-encoded as JPEG (quality 95; the pixels' geometry is kept)."""
    data = path.read_bytes()
    try:
        image_size(data, formats=ALL_FORMATS)
    except SampleRejectedError as exc:
        raise ConfigError(f"{at}: image {path} is refused: {exc}") from exc
    if data[:3] == b"\xff\xd8\xff":
        return data
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None  # image_size decoded it just above
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise ConfigError(f"{at}: image {path} cannot be re-encoded as JPEG")
    return bytes(buffer.tobytes())


def _box(cls: str, xyxy: tuple[float, float, float, float], image: ImportedImage, at: str) -> LabeledBox:
    x1, y1, x2, y2 = xyxy
    if not all(math.isfinite(v) for v in xyxy) or x2 <= x1 or y2 <= y1:
        raise ConfigError(f"{at}: box {xyxy} has no area")
    t = _EDGE_TOLERANCE_PX
    if x1 < -t or y1 < -t or x2 > image.width + t or y2 > image.height + t:
        raise ConfigError(
            f"{at}: box ({x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}) is outside the {image.width}x{image.height} image"
        )
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(image.width)), min(y2, float(image.height)))
    try:
        return LabeledBox(cls=cls, box=clipped)
    except ValidationError as exc:
        raise ConfigError(f"{at}: class name {cls!r} is not a valid name") from exc


def _with_boxes(image: ImportedImage, boxes: list[LabeledBox]) -> ImportedImage:
    return ImportedImage(image.sha256, image.width, image.height, tuple(boxes), image.data)
