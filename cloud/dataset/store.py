"""One dataset folder on the hub (format: :mod:`roadside.shared.dataset`), plus its durable inbox.

::

    objects/<sha256>.jpg   images, content-addressed, fsynced and renamed into place
    v<N>.json              immutable manifests, linked into place (never overwritten)
    inbox.db               SQLite (WAL, synchronous=FULL): samples received, the version
                           that took each in (NULL while pending), review decisions,
                           trusted devices and the per-device cap (cloud.dataset.trust)
    .lock                  flock: one commit or import at a time, across processes

A sample is acknowledged (``add`` returns) only once its image and its inbox row are
on disk. ``commit`` writes version N+1 = version N's samples + what the trust policy
admits from the inbox (:func:`roadside.cloud.dataset.trust.select_for_version`: labelled
samples need an operator's approval or a trusted device, and stay under the per-device
cap), then marks those rows; a crash between the two is healed by the next commit,
which skips rows whose image the parent already holds.
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

from roadside.cloud.dataset.images import (
    MAX_IMAGE_PIXELS,
    ImageFormat,
    ImageRefusedError,
    checked_header_size,
)
from roadside.cloud.dataset.trust import (
    DEFAULT_MAX_DEVICE_SHARE,
    InboxEntry,
    Review,
    Selection,
    TrustPolicy,
    check_share,
    select_for_version,
)
from roadside.shared.dataset import DatasetManifest, DatasetSample, SampleOrigin, load_manifest, manifest_path
from roadside.shared.errors import ConfigError
from roadside.shared.schemas import HardExample

log = logging.getLogger(__name__)

MAX_DEVICE_FILTER: Final = 1000  # devices named in one newest_images query (SQLite's variable limit)

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
CREATE TABLE IF NOT EXISTS device_trust (
    device_id TEXT PRIMARY KEY,
    set_by TEXT NOT NULL,
    set_at TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trust_policy (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
# Added after the first release: an inbox from before gets them, every old row unreviewed.
_REVIEW_COLUMNS = {"review": "TEXT", "reviewed_by": "TEXT", "reviewed_at": "TEXT"}


@dataclass(frozen=True)
class TrustedDevice:
    device_id: str
    set_by: str
    set_at: str
    note: str


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
            have = {row[1] for row in self._db.execute("PRAGMA table_info(inbox)")}
            for column, kind in _REVIEW_COLUMNS.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE inbox ADD COLUMN {column} {kind}")
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
        """Samples received but not yet in a version (rejected ones aside), oldest first."""
        return [e.sample for e in self.inbox() if e.review != "rejected"]

    def inbox(self) -> list[InboxEntry]:
        """Every row not yet in a version, with its review decision, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, device_id, sample, review FROM inbox WHERE committed_in IS NULL ORDER BY seq"
            ).fetchall()
        return [
            InboxEntry(seq, device, DatasetSample.model_validate_json(raw), review)
            for seq, device, raw, review in rows
        ]

    def newest_images(self, device_ids: Collection[str] | None = None, limit: int = 1) -> list[InboxEntry]:
        """The newest samples received (in a version or not), of ``device_ids`` when given, newest first.

        Every one was redacted on its device (``add`` refuses the rest), so the console may show it.
        """
        if device_ids is not None and not device_ids:
            return []
        where, params = "", ()  # type: tuple[str, tuple[str, ...]]
        if device_ids is not None:
            ids = tuple(sorted(device_ids))[:MAX_DEVICE_FILTER]
            where, params = f" WHERE device_id IN ({','.join('?' * len(ids))})", ids
        with self._lock:
            rows = self._db.execute(
                f"SELECT seq, device_id, sample FROM inbox{where} ORDER BY seq DESC LIMIT ?",  # noqa: S608 (placeholders only)
                (*params, limit),
            ).fetchall()
        return [InboxEntry(seq, device, DatasetSample.model_validate_json(raw)) for seq, device, raw in rows]

    def image(self, sha256: str) -> bytes | None:
        """The stored image with this SHA-256 (``None`` for an unknown or malformed hash)."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            return None
        path = self.objects / f"{sha256}.jpg"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def selection(self) -> Selection:
        """What ``commit`` would take now, and what it would leave waiting and why."""
        latest = self.latest()
        have = {s.sha256 for s in latest.samples} if latest is not None else set()
        fresh = [e for e in self.inbox() if e.sample.sha256 not in have]
        return select_for_version(latest.samples if latest else (), fresh, self.trust_policy())

    # -- review and trust (the CLI audits each change in the hub's audit log) -----------

    def review_targets(self, seqs: Sequence[int] = (), device_id: str | None = None) -> list[InboxEntry]:
        """Labelled samples waiting in the inbox: by seq, or a device's not yet reviewed.

        ``ConfigError`` for a seq that is not a labelled sample waiting in the inbox.
        """
        waiting = {e.seq: e for e in self.inbox() if e.sample.labels is not None}
        if device_id is not None:
            return [e for e in waiting.values() if e.device_id == device_id and e.review is None]
        unknown = sorted(set(seqs) - set(waiting))
        if unknown:
            raise ConfigError(
                f"dataset {self.name}: no labelled sample waits in the inbox as {unknown}; "
                "see `roadside dataset review list`"
            )
        return [waiting[q] for q in dict.fromkeys(seqs)]

    def set_review(self, entries: Sequence[InboxEntry], decision: Review, actor: str) -> list[InboxEntry]:
        """Record an operator's decision on ``entries`` (still in the inbox); return them as changed."""
        now = datetime.now(UTC).isoformat()
        with self._lock:
            self._db.executemany(
                "UPDATE inbox SET review = ?, reviewed_by = ?, reviewed_at = ? WHERE seq = ? AND committed_in IS NULL",
                [(decision, actor, now, e.seq) for e in entries],
            )
        return [InboxEntry(e.seq, e.device_id, e.sample, decision) for e in entries]

    def trust_policy(self) -> TrustPolicy:
        with self._lock:
            trusted = frozenset(r[0] for r in self._db.execute("SELECT device_id FROM device_trust"))
            row = self._db.execute("SELECT value FROM trust_policy WHERE key = 'max_device_share'").fetchone()
        return TrustPolicy(trusted, float(row[0]) if row else DEFAULT_MAX_DEVICE_SHARE)

    def trusted_devices(self) -> list[TrustedDevice]:
        with self._lock:
            rows = self._db.execute(
                "SELECT device_id, set_by, set_at, note FROM device_trust ORDER BY device_id"
            ).fetchall()
        return [TrustedDevice(*row) for row in rows]

    def set_trusted(self, device_id: str, trusted: bool, actor: str, note: str = "") -> bool:
        """Mark a device's labels as trusted (admitted without review) or not; whether anything changed."""
        with self._lock:
            if trusted:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO device_trust (device_id, set_by, set_at, note) VALUES (?, ?, ?, ?)",
                    (device_id, actor, datetime.now(UTC).isoformat(), note),
                )
            else:
                cursor = self._db.execute("DELETE FROM device_trust WHERE device_id = ?", (device_id,))
        return cursor.rowcount > 0

    def set_max_device_share(self, share: float) -> None:
        """The most any one device may hold of a version's labelled samples (1: no cap)."""
        check_share(share)
        with self._lock:
            self._db.execute(
                "INSERT INTO trust_policy (key, value) VALUES ('max_device_share', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (repr(float(share)),),
            )

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
        """A new immutable version: the latest one's samples plus what the trust policy admits."""
        with self._exclusive():
            parent = self.latest()
            have = {s.sha256 for s in parent.samples} if parent is not None else set()
            entries = self.inbox()
            # Rows whose image the parent holds: a crash after the manifest, or the same image twice.
            settled = [e.seq for e in entries if e.sample.sha256 in have]
            selection = select_for_version(
                parent.samples if parent is not None else (),
                [e for e in entries if e.sample.sha256 not in have],
                self.trust_policy(),
            )
            fresh: list[DatasetSample] = []
            for entry in selection.taken:
                if entry.sample.sha256 not in have:
                    have.add(entry.sample.sha256)
                    fresh.append(entry.sample)
                settled.append(entry.seq)
            if not fresh:
                self._mark(settled, parent.version if parent is not None else 0)
                raise ConfigError(f"dataset {self.name}: nothing to commit; {_waiting_text(selection)}")
            parent_samples = parent.samples if parent is not None else ()
            manifest = next_manifest(self.name, parent, [*parent_samples, *fresh], note, datetime.now(UTC))
            self._write_manifest(manifest)
            self._mark(settled, manifest.version)
        log.info(
            "dataset %s: version %s with %d new samples; still waiting: %s",
            self.name, manifest.version, len(fresh), selection.held_counts(),
        )  # fmt: skip
        return manifest

    def _mark(self, seqs: Sequence[int], version: int) -> None:
        with self._lock:
            self._db.executemany(
                "UPDATE inbox SET committed_in = ? WHERE seq = ?", [(version, seq) for seq in seqs]
            )

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


def _waiting_text(selection: Selection) -> str:
    held = selection.held_counts()
    if not held:
        return "the inbox has no sample to add"
    parts = []
    if "needs_review" in held:
        parts.append(
            f"{held['needs_review']} labelled sample(s) wait for review "
            "(`roadside dataset review list`, or trust their device)"
        )
    if "device_cap" in held:
        parts.append(
            f"{held['device_cap']} are held by the per-device cap "
            "(more samples from other devices, or `roadside dataset policy --max-device-share`)"
        )
    return "; ".join(parts)


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
    "TrustedDevice",
    "image_size",
    "next_manifest",
    "sample_of",
]
