"""Item 16 of the hardening issue: image sizes from headers before decoding, import names that stay inside."""

from __future__ import annotations

import base64
import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roadside.cloud.dataset.formats import import_labels
from roadside.cloud.dataset.images import (
    MAX_IMAGE_PIXELS,
    ImageRefusedError,
    check_pixels,
    checked_header_size,
    header_size,
)
from roadside.cloud.dataset.paths import check_member_name, is_inside
from roadside.cloud.dataset.store import DatasetStore
from roadside.shared.errors import ConfigError
from tests.unit.test_dataset_store import example


def png_bomb(width: int, height: int) -> bytes:
    """A 1-bit PNG of zeros: a few kilobytes that decode to width*height*3 bytes of BGR."""
    raw = zlib.compress((b"\x00" * (1 + (width + 7) // 8)) * height, 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def encoded(ext: str, w: int, h: int, params: tuple[int, ...] = ()) -> bytes:
    image = np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(ext, image, list(params))
    assert ok
    return bytes(buffer.tobytes())


@settings(max_examples=25, deadline=None)
@given(
    ext=st.sampled_from([".jpg", ".png", ".bmp"]),
    w=st.integers(1, 97),
    h=st.integers(1, 61),
)
def test_header_size_agrees_with_the_decoder(ext: str, w: int, h: int) -> None:
    data = encoded(ext, w, h)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    assert header_size(data) == (w, h) == (decoded.shape[1], decoded.shape[0])


def test_progressive_jpeg_and_exif_segments_are_walked() -> None:
    data = encoded(".jpg", 33, 17, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1))
    assert header_size(data) == (33, 17)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 20) + b"Exif\x00\x00" + b"\x00" * 14
    assert header_size(data[:2] + app1 + b"\xff\xff" + data[2:]) == (33, 17)  # an extra APP1 and fill bytes


def test_a_bomb_is_refused_from_its_header() -> None:
    bomb = png_bomb(16000, 16000)  # ~31 KB; decodes to 768 MB (1.5 GB peak) with cv2.imdecode
    assert len(base64.b64encode(bomb)) < 160_000  # fits in a hard example
    assert header_size(bomb) == (16000, 16000)
    with pytest.raises(ImageRefusedError) as refused:
        checked_header_size(bomb)
    assert refused.value.reason == "too_large"
    check_pixels(7680, 4320)  # 8K UHD is the limit, inclusive
    with pytest.raises(ImageRefusedError, match="limit"):
        check_pixels(7680, 4321)
    assert MAX_IMAGE_PIXELS == 7680 * 4320


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GIF89a" + b"\x00" * 40, "undecodable"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "undecodable"),
        (b"", "undecodable"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIDAT", "undecodable"),  # no IHDR first
        (b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 20, "undecodable"),  # scan data before a frame header
        (b"\xff\xd8\xff\xe0\x00\x01", "undecodable"),  # segment length below 2
        (b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x01\x00\x03", "undecodable"),  # height 0 (DNL)
        (b"\xff\xd8\xff\xe0\xff\xff", "undecodable"),  # a segment running past the end
        (b"BM" + b"\x00" * 12 + struct.pack("<Iii", 40, 0, 10), "undecodable"),  # width 0
    ],
)
def test_unreadable_or_foreign_headers_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRefusedError) as refused:
        header_size(data)
    assert refused.value.reason == reason


def test_only_the_allowed_formats() -> None:
    with pytest.raises(ImageRefusedError, match="is BMP, not JPEG/PNG") as refused:
        header_size(encoded(".bmp", 4, 4), formats={"jpeg", "png"})
    assert refused.value.reason == "unsupported_format"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64).map(lambda b: b"\xff\xd8\xff" + b))
def test_the_jpeg_walk_ends_on_any_bytes(data: bytes) -> None:
    try:
        w, h = header_size(data)
    except ImageRefusedError:
        return
    assert w > 0
    assert h > 0


# -- the store: no decode before the header is checked -------------------------------------


def test_the_store_refuses_a_bomb_without_decoding_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DatasetStore(tmp_path / "detector")
    decoded: list[int] = []
    real = cv2.imdecode

    def counting(buf: np.ndarray, flags: int) -> object:
        decoded.append(len(buf))
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", counting)
    try:
        bomb = base64.b64encode(png_bomb(16000, 16000)).decode()
        # Declared small (as the schema allows), declared at its real size: refused either way, undecoded.
        report = store.add_report(
            "dev-a",
            [
                example(1, image_jpeg_b64=bomb),
                example(2, image_jpeg_b64=bomb, width=8000, height=8000),
                # Under the limit but not what the sample says: refused from the header too.
                example(3, image_jpeg_b64=base64.b64encode(png_bomb(4000, 3000)).decode()),
            ],
        )
        assert dict(report.rejected) == {"too_large": 2, "size_mismatch": 1}
        assert decoded == []
        assert store.pending() == []
        assert store.add("dev-a", [example(4)]) == 1  # a normal sample is still decoded and kept
        assert len(decoded) == 1
    finally:
        store.close()


# -- names from an import ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "/etc/passwd",
        "/tmp/x.jpg",
        "../x.jpg",
        "images/../../x.jpg",
        "a/../b.jpg",
        "..",
        "C:x.jpg",
        "c:/Windows/x.jpg",
        "images\\x.jpg",
        "\\\\server\\share\\x.jpg",
        "",
        "x\x00.jpg",
    ],
)
def test_names_that_could_leave_the_folder_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"images\[3\]: file name"):
        check_member_name(name, "images[3]")


@pytest.mark.parametrize("name", ["x.jpg", "sub/x.jpg", "./x.jpg", "a..b.jpg", "..x.jpg"])
def test_relative_names_pass(name: str) -> None:
    assert not check_member_name(name, "at").is_absolute()


def test_is_inside_follows_symlinks(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "in.jpg").write_bytes(b"x")
    (tmp_path / "out.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "out.jpg", tmp_path / "root" / "link.jpg")
    os.symlink(tmp_path / "root" / "in.jpg", tmp_path / "root" / "ok.jpg")
    os.symlink(tmp_path / "root" / "loop", tmp_path / "root" / "loop")
    assert is_inside(tmp_path / "root", tmp_path / "root" / "in.jpg")
    assert is_inside(tmp_path / "root", tmp_path / "root" / "ok.jpg")
    assert not is_inside(tmp_path / "root", tmp_path / "root" / "link.jpg")
    assert not is_inside(tmp_path / "root", tmp_path / "root" / "loop")
    assert not is_inside(tmp_path / "root", tmp_path / "root" / "missing.jpg")


def _coco(path: Path, file_name: str, w: int = 40, h: int = 30) -> Path:
    doc = {
        "categories": [{"id": 1, "name": "car"}],
        "images": [{"id": 1, "file_name": file_name, "width": w, "height": h}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "backslash"])
def test_a_coco_import_never_reads_outside_its_folders(tmp_path: Path, how: str) -> None:
    secret = tmp_path / "home" / "operator" / "secret.png"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(encoded(".png", 40, 30))
    export = tmp_path / "vendor-export"
    (export / "images").mkdir(parents=True)
    name = {
        "absolute": str(secret),
        "dotdot": "../../home/operator/secret.png",  # from vendor-export/images
        "symlink": "photo.png",
        "backslash": "..\\..\\home\\operator\\secret.png",
    }[how]
    if how == "symlink":
        os.symlink(secret, export / "images" / "photo.png")
    store = DatasetStore(tmp_path / "datasets" / "detector", "detector")
    try:
        with pytest.raises(ConfigError, match=r"images\[0\]") as refused:
            import_labels(store, "coco", _coco(export / "instances.json", name), export / "images")
        assert "outside" in str(refused.value) or "file name" in str(refused.value)
        assert store.versions() == []
        assert list(store.objects.iterdir()) == []  # nothing of the secret was copied in
    finally:
        store.close()


def test_a_coco_import_with_a_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    export = tmp_path / "vendor-export"
    (export / "images").mkdir(parents=True)
    (export / "images" / "big.png").write_bytes(png_bomb(16000, 16000))
    store = DatasetStore(tmp_path / "datasets" / "detector", "detector")
    try:
        with pytest.raises(ConfigError, match=r"the limit is \d+"):
            import_labels(store, "coco", _coco(export / "instances.json", "big.png", 16000, 16000))
        assert store.versions() == []
    finally:
        store.close()


def test_a_yolo_label_file_symlinked_from_outside_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "yolo"
    folder.mkdir()
    (folder / "classes.txt").write_text("car\n")
    (tmp_path / "elsewhere.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    os.symlink(tmp_path / "elsewhere.txt", folder / "frame.txt")
    store = DatasetStore(tmp_path / "datasets" / "detector", "detector")
    try:
        with pytest.raises(ConfigError, match="outside"):
            import_labels(store, "yolo", folder)
    finally:
        store.close()
