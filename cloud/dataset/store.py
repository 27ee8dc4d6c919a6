"""One dataset folder on the hub (format: :mod:`shared.dataset`), plus its durable inbox.

::

    objects/<sha256>.jpg   images, content-addressed, fsynced and renamed into place
    v<N>.json              immutable manifests, linked into place (never overwritten)
    inbox.db               SQLite (WAL, synchronous=FULL): samples received, and the
                           version that took each in (NULL while pending)
    .lock                  flock: one commit or import at a time, across processes

A sample is acknowledged (``add`` returns) only once its image and its inbox row are
on disk. ``commit`` writes version N+1 = version N's samples + the pending inbox,
then marks those rows; a crash between the two is healed by the next commit, which
skips rows whose image the parent already holds.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import cv2
import numpy as np

from cloud.dataset.images import MAX_IMAGE_PIXELS, ImageFormat, ImageRefusedError, checked_header_size
from shared.dataset import DatasetManifest, DatasetSample, SampleOrigin, load_manifest, manifest_path
from shared.errors import ConfigError
from shared.schemas import HardExample

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sample_id TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    device_id TEXT NOT NULL,
    received_at TEXT NOT NULL,
    sample TEXT NOT NULL,
    committed_in INTEGER
);
CREATE INDEX IF NOT EXISTS inbox_sha ON inbox (sha256);
CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (committed_in, seq);
"""


SAMPLE_FORMATS: Final[frozenset[ImageFormat]] = frozenset({"jpeg", "png"})


class SampleRejectedError(ValueError):
    """A sample the store refuses; ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class AddReport:
    added: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


def image_size(
    data: bytes,
    max_pixels: int = MAX_IMAGE_PIXELS,
    formats: Collection[ImageFormat] = SAMPLE_FORMATS,
    expect: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """(width, height) of an encoded image; ``SampleRejectedError`` if it does not decode.

    The header is read first: an image of another format, above ``max_pixels`` or (with
    ``expect``) of another size than expected is refused before a byte is decompressed.
    """
    try:
        declared = checked_header_size(data, max_pixels, formats)
    except ImageRefusedError as exc:
        raise SampleRejectedError(exc.reason, str(exc)) from exc
    if expect is not None and declared not in (expect, expect[::-1]):  # EXIF may rotate when decoded
        raise SampleRejectedError(
            "size_mismatch",
            f"declared {expect[0]}x{expect[1]} but the image is {declared[0]}x{declared[1]} (from its header)",
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise SampleRejectedError("undecodable", "the image does not decode")
    h, w = image.shape[:2]
    return int(w), int(h)


def sample_of(example: HardExample, device_id: str, sha: str) -> DatasetSample:
    """The manifest entry of a device's hard example (its image stored as ``sha``)."""
    return DatasetSample(
        sha256=sha,
        file=f"objects/{sha}.jpg",
        width=example.width,
        height=example.height,
        labels=None if example.labels is None else tuple(example.labels),
        origin=SampleOrigin(
            device_id=device_id,
            model_version=example.model_version,
            reasons=tuple(example.reasons),
            score=example.score,
            captured_at=example.ts,
            sample_id=str(example.sample_id),
        ),
    )


def next_manifest(
    name: str,
    parent: DatasetManifest | None,
    samples: Sequence[DatasetSample],
    note: str,
    now: datetime,
    classes: Sequence[str] = (),
) -> DatasetManifest:
    """Version N+1 holding ``samples``; classes keep the parent's order, new ones appended as met."""
    known = list(parent.classes) if parent is not None else []
    for cls in [*classes, *(b.cls for s in samples for b in (s.labels or ()))]:
        if cls not in known:
            known.append(cls)
    return DatasetManifest(
        name=name,
        version=1 if parent is None else parent.version + 1,
        parent=None if parent is None else parent.version,
        created_at=now,
        classes=tuple(known),
        samples=tuple(samples),
        note=note,
    )


class DatasetStore:
    """The dataset in ``folder``: ``add`` from ingest, ``commit``/``write_version`` from the CLI."""

    def __init__(self, folder: Path, name: str | None = None) -> None:
        self.folder = folder
        self.name = name or folder.name
        self.objects = folder / "objects"
        try:
            self.objects.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                folder / "inbox.db", check_same_thread=False, isolation_level=None, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged sample survives power loss
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"cannot open dataset at {folder}: {exc}; check the directory is writable"
            ) from exc
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()  # added, duplicate, rejected:<reason>
        self._known_version = -1
        self._known_shas: frozenset[str] = frozenset()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- samples in ------------------------------------------------------------------

    def add(self, device_id: str, samples: Sequence[HardExample]) -> int:
        """Store hard examples durably; return how many were new (duplicates and refusals are counted)."""
        return self.add_report(device_id, samples).added

    def add_report(self, device_id: str, samples: Sequence[HardExample]) -> AddReport:
        report = AddReport()
        for example in samples:
            try:
                added = self._add_one(device_id, example)
            except SampleRejectedError as exc:
                report.rejected[exc.reason] += 1
                report.errors.append(f"sample {example.sample_id}: {exc}")
                self.counts[f"rejected:{exc.reason}"] += 1
                log.warning(
                    "dataset %s refused sample %s from %s: %s", self.name, example.sample_id, device_id, exc
                )
                continue
            report.added += added
            report.duplicates += 1 - added
            self.counts["added" if added else "duplicate"] += 1
        return report

    def _add_one(self, device_id: str, example: HardExample) -> int:
        if not example.redacted:
            raise SampleRejectedError("not_redacted", "the device says the image was not redacted")
        with self._lock:
            seen = self._db.execute(
                "SELECT 1 FROM inbox WHERE sample_id = ?", (str(example.sample_id),)
            ).fetchone()
        if seen is not None:
            return 0
        try:
            data = base64.b64decode(example.image_jpeg_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SampleRejectedError("bad_base64", f"image_jpeg_b64 is not base64: {exc}") from exc
        width, height = image_size(data, expect=(example.width, example.height))
        if (width, height) != (example.width, example.height):
            raise SampleRejectedError(
                "size_mismatch",
                f"declared {example.width}x{example.height} but the image is {width}x{height}",
            )
        sha = hashlib.sha256(data).hexdigest()
        if sha in self._committed_shas():
            return 0
        self.put_object(data, sha)
        sample = sample_of(example, device_id, sha)
        with self._lock:
            if self._db.execute("SELECT 1 FROM inbox WHERE sha256 = ?", (sha,)).fetchone() is not None:
                return 0
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO inbox (sample_id, sha256, device_id, received_at, sample) VALUES (?, ?, ?, ?, ?)",
                (
                    str(example.sample_id),
                    sha,
                    device_id,
                    datetime.now(UTC).isoformat(),
                    sample.model_dump_json(),
                ),
            )
        return cursor.rowcount

    def put_object(self, data: bytes, sha: str | None = None) -> str:
        """Write an image as ``objects/<sha256>.jpg`` (fsync, atomic rename); return its hash."""
        sha = sha or hashlib.sha256(data).hexdigest()
        path = self.objects / f"{sha}.jpg"
        if path.is_file() and path.stat().st_size == len(data):
            return sha
        tmp = self.objects / f".{sha}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.objects)
        return sha

    def pending(self) -> list[DatasetSample]:
        """Samples received but not yet in a version, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sample FROM inbox WHERE committed_in IS NULL ORDER BY seq"
            ).fetchall()
        return [DatasetSample.model_validate_json(r[0]) for r in rows]

    # -- versions ----------------------------------------------------------------------

    def versions(self) -> list[int]:
        return sorted(int(p.stem[1:]) for p in self.folder.glob("v*.json") if p.stem[1:].isdigit())

    def manifest(self, version: int | None = None) -> DatasetManifest:
        """Version ``version`` (default: the latest); ``ConfigError`` if there is none."""
        return load_manifest(self.folder, version)

    def latest(self) -> DatasetManifest | None:
        versions = self.versions()
        return load_manifest(self.folder, versions[-1]) if versions else None

    def object_path(self, sample: DatasetSample) -> Path:
        return self.folder / sample.file

    def commit(self, note: str = "") -> DatasetManifest:
        """A new immutable version: the latest one's samples plus everything pending in the inbox."""
        with self._exclusive():
            parent = self.latest()
            with self._lock:
                rows = self._db.execute(
                    "SELECT seq, sha256, sample FROM inbox WHERE committed_in IS NULL ORDER BY seq"
                ).fetchall()
            if not rows:
                raise ConfigError(f"dataset {self.name} has nothing pending in its inbox: nothing to commit")
            have = {s.sha256 for s in parent.samples} if parent is not None else set()
            fresh: list[DatasetSample] = []
            for _seq, sha, raw in rows:
                if sha not in have:
                    have.add(sha)
                    fresh.append(DatasetSample.model_validate_json(raw))
            parent_samples = parent.samples if parent is not None else ()
            manifest = next_manifest(self.name, parent, [*parent_samples, *fresh], note, datetime.now(UTC))
            self._write_manifest(manifest)
            with self._lock:
                self._db.executemany(
                    "UPDATE inbox SET committed_in = ? WHERE seq = ?",
                    [(manifest.version, r[0]) for r in rows],
                )
        log.info("dataset %s: version %s with %d new samples", self.name, manifest.version, len(fresh))
        return manifest

    def write_version(
        self, parent_version: int | None, samples: Sequence[DatasetSample], classes: Sequence[str], note: str
    ) -> DatasetManifest:
        """Write the version after ``parent_version`` holding ``samples`` (an import); the inbox is untouched.

        ``ConfigError`` if another version was made since ``parent_version`` was read, or an image is missing.
        """
        with self._exclusive():
            parent = self.latest()
            if (parent.version if parent is not None else None) != parent_version:
                raise ConfigError(
                    f"dataset {self.name} moved on to version {parent.version if parent else None} "
                    f"while this was prepared from {parent_version}; run it again"
                )
            for sample in samples:
                if not self.object_path(sample).is_file():
                    raise ConfigError(f"dataset {self.name}: image {sample.file} is missing")
            manifest = next_manifest(self.name, parent, samples, note, datetime.now(UTC), classes)
            self._write_manifest(manifest)
        return manifest

    def _write_manifest(self, manifest: DatasetManifest) -> None:
        """Write ``v<N>.json`` once: fsynced, then hard-linked into place, so it never overwrites."""
        final = manifest_path(self.folder, manifest.version)
        tmp = self.folder / f".v{manifest.version}.{os.getpid()}.tmp"
        body = json.dumps(manifest.model_dump(mode="json"), indent=1, sort_keys=True).encode()
        with open(tmp, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, final)
        except FileExistsError as exc:
            raise ConfigError(f"dataset version {final} already exists; versions are immutable") from exc
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.folder)
        self._known_version = -1

    def _committed_shas(self) -> frozenset[str]:
        """Hashes in the latest version (imports too), cached until a new version appears."""
        versions = self.versions()
        latest = versions[-1] if versions else 0
        if latest != self._known_version:
            manifest = load_manifest(self.folder, latest) if latest else None
            self._known_shas = frozenset(s.sha256 for s in manifest.samples) if manifest else frozenset()
            self._known_version = latest
        return self._known_shas

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        with open(self.folder / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "AddReport",
    "DatasetStore",
    "SampleRejectedError",
    "image_size",
    "next_manifest",
    "sample_of",
]
