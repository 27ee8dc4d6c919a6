"""The dataset manifest: one version of a labelled image set, named by its hashes.

A dataset lives in a folder::

    objects/<sha256>.jpg      images, content-addressed (written once, never changed)
    v<N>.json                 the manifest of version N (this model), written atomically

A version is immutable once written; a new sample, label or import makes a
new version whose ``parent`` is the one it grew from. Training names the
version and its ``digest`` (the hash of the canonical manifest), so a model
card says exactly which images and labels it learned from.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from roadside.shared.errors import ConfigError
from roadside.shared.schemas import LabeledBox, Name, SampleReason

MANIFEST_FORMAT = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SampleOrigin(_Frozen):
    """Where a sample came from: a device's hard example, or an import."""

    device_id: str | None = None
    model_version: str | None = None
    reasons: tuple[SampleReason, ...] = ()
    score: float | None = None
    captured_at: datetime | None = None
    sample_id: str | None = None
    imported_from: str | None = None  # "coco:<file>" or "yolo:<folder>"


class DatasetSample(_Frozen):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    file: str  # relative to the dataset folder: objects/<sha256>.jpg
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    labels: tuple[LabeledBox, ...] | None = None  # None: not labelled yet; () : labelled, nothing there
    origin: SampleOrigin = Field(default_factory=SampleOrigin)


class DatasetManifest(_Frozen):
    format: int = MANIFEST_FORMAT
    name: Name
    version: int = Field(ge=1)
    parent: int | None = None
    created_at: AwareDatetime
    classes: tuple[str, ...]
    samples: tuple[DatasetSample, ...]
    note: str = ""

    def canonical(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> str:
        """sha256 of the canonical manifest: what a model card records as its data version."""
        return hashlib.sha256(self.canonical()).hexdigest()

    def labelled(self) -> tuple[DatasetSample, ...]:
        return tuple(s for s in self.samples if s.labels is not None)


def manifest_path(folder: Path, version: int) -> Path:
    return folder / f"v{version}.json"


def load_manifest(folder: Path, version: int | None = None) -> DatasetManifest:
    """Read version ``version`` (default: the latest) of the dataset in ``folder``; ``ConfigError`` if absent."""
    if version is None:
        versions = sorted(int(p.stem[1:]) for p in folder.glob("v*.json") if p.stem[1:].isdigit())
        if not versions:
            raise ConfigError(f"dataset {folder} has no versions yet")
        version = versions[-1]
    path = manifest_path(folder, version)
    try:
        return DatasetManifest.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"dataset version {path} cannot be read: {exc.strerror}") from exc
    except ValidationError as exc:
        raise ConfigError(f"dataset manifest {path} is invalid: {exc.error_count()} errors") from exc
