"""What a device accepts as a model update: pure decisions, no I/O.

python-tuf's ngclient answers "is this exactly what the repository's keys
signed, and is the signed view fresh and coherent?". This module answers the
rest, over plain values: is a signed target one *this* agent may install?

- the path stays inside ``models/<name>/<version>/`` (no ``..``, no absolute
  path, no backslash, no percent-escapes, plain ASCII names);
- the version is strictly above the running one (equal: up to date; lower:
  a rollback, refused);
- it fits the download cap;
- it needs no newer agent, keeps the labels the configuration relies on, and
  takes the input shape the configuration feeds.

It also plans how to fetch an accepted model (:func:`plan_transfers`): a
signed patch from a model the device holds, else the signed compressed file,
else the model file itself (ADR 0027). A malformed or unknown form is skipped,
never a refusal: the model file is always there to fall back to.

It also turns python-tuf's exceptions into refusals with a stable ``reason``
(the same word as the matching :mod:`roadside.shared.errors` class), so every refusal
is counted and reported the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from tuf.api import exceptions as tuf_errors

from roadside.shared.errors import (
    BadMetadataError,
    BadSignatureError,
    ExpiredMetadataError,
    IncompatibleModelError,
    InconsistentMetadataError,
    IntegrityError,
    OversizeError,
    RollbackError,
    TamperedTargetError,
    UnsafePathError,
)

MODELS_DIR: Final = "models"
INDEX_FILE: Final = "index.json"
INDEX_FORMAT: Final = 1
INDEX_MAX_BYTES: Final = 1024 * 1024
# The registry's rule: versions become file names on the device, so they stay plain.
VERSION_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,31}")
_SEGMENT_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")  # shared.topics.check_name's charset
_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
_TOKEN_RE: Final = re.compile(r"\d+|\D+")

Dim = int | str  # an ONNX dimension: a size, or a name for a dynamic axis

REFUSAL_ERRORS: Final[Mapping[str, type[IntegrityError]]] = {
    cls.reason: cls
    for cls in (
        TamperedTargetError,
        BadSignatureError,
        ExpiredMetadataError,
        InconsistentMetadataError,
        RollbackError,
        UnsafePathError,
        OversizeError,
        IncompatibleModelError,
        BadMetadataError,
    )
}


@dataclass(frozen=True, slots=True)
class OtaRefusal:
    """Why an update was not installed. ``reason`` is one of ``REFUSAL_ERRORS``' keys."""

    reason: str
    detail: str

    def error(self) -> IntegrityError:
        """The :class:`IntegrityError` subclass for this refusal, to raise or count."""
        return REFUSAL_ERRORS.get(self.reason, IntegrityError)(self.detail)


class Verdict(StrEnum):
    INSTALL = "install"
    UP_TO_DATE = "up_to_date"


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """What this agent is and what its configuration needs from a model."""

    version: str
    max_bytes: int
    labels: frozenset[str] | None = None  # labels the configuration refers to; None: any
    input_shape: tuple[Dim, ...] | None = None  # what the pipeline feeds; None: any
    max_opset: int | None = None  # the newest opset the runtime supports; None: any


ZSTD: Final = "zstd"
ZSTD_PATCH: Final = "zstd-patch"
ENCODINGS: Final = frozenset({ZSTD, ZSTD_PATCH})


@dataclass(frozen=True, slots=True)
class Transfer:
    """A signed encoded form of a model target (``transfers`` in its fields): where, how, from what."""

    path: str
    encoding: str  # one of ENCODINGS
    base_sha256: str | None = None  # a patch: the sha256 of the model it applies to


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """A model file as signed in the repository's targets metadata."""

    path: str
    name: str
    version: str
    sha256: str
    length: int
    opset: int
    input_shape: tuple[Dim, ...]
    labels: tuple[str, ...]
    min_agent_version: str
    transfers: tuple[Transfer, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelIndex:
    """``models/<name>/index.json``: every signed version of a model and the one to run."""

    name: str
    latest: str
    versions: Mapping[str, str]  # version -> target path


# -- versions ----------------------------------------------------------------


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Natural order: digit runs compare as numbers (``1.10`` > ``1.9``), the rest as text."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in _TOKEN_RE.findall(version))


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` is below, equal to or above ``b`` in natural order."""
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)


# -- paths ---------------------------------------------------------------------


def index_path(name: str) -> str:
    return f"{MODELS_DIR}/{name}/{INDEX_FILE}"


def check_target_path(path: str, name: str) -> OtaRefusal | None:
    """Refuse any path but ``models/<name>/<version>/<file>.onnx`` made of plain ASCII names."""
    if not _NAME_RE.fullmatch(name):
        return OtaRefusal(UnsafePathError.reason, f"model name {name!r} is not a plain name")
    if any(bad in path for bad in ("\\", "%", ":", "\x00")) or path.startswith("/"):
        return OtaRefusal(UnsafePathError.reason, f"target path {path!r} is absolute or escaped")
    parts = path.split("/")
    if any(part in ("", ".", "..") or not _SEGMENT_RE.fullmatch(part) for part in parts):
        return OtaRefusal(
            UnsafePathError.reason, f"target path {path!r} has an empty, dot or unusual segment"
        )
    if len(parts) != 4 or parts[:2] != [MODELS_DIR, name] or not parts[3].endswith(".onnx"):
        return OtaRefusal(
            UnsafePathError.reason, f"target path {path!r} is not {MODELS_DIR}/{name}/<version>/<file>.onnx"
        )
    return None


# -- parsing what the repository signed ----------------------------------------


def parse_target(path: str, length: int, hashes: Mapping[str, str], custom: Any) -> ModelTarget | OtaRefusal:
    """Read a model target's TUF length and sha256 and Roadside's custom fields, strictly."""
    sha256 = hashes.get("sha256", "")
    # Not a string at all (found by fuzz/, issue 14): refused like a malformed hash, not a TypeError.
    if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
        problem: str | None = "no sha256 hash"
    elif not isinstance(custom, dict):
        problem = "no Roadside fields"
    else:
        problem = _custom_problem(custom)
    if problem is not None:
        return OtaRefusal(BadMetadataError.reason, f"target {path!r}: {problem}")
    return ModelTarget(
        path=path,
        name=custom["name"],
        version=custom["model_version"],
        sha256=sha256,
        length=length,
        opset=custom["opset"],
        input_shape=tuple(custom["input_shape"]),
        labels=tuple(custom["labels"]),
        min_agent_version=custom["min_agent_version"],
        transfers=parse_transfers(custom.get("transfers"), path),
    )


def parse_transfers(entries: Any, model_path: str) -> tuple[Transfer, ...]:
    """The well-formed entries of a model target's ``transfers``; the rest are left out.

    Well-formed: a known encoding, a plain file in the model's own folder, and
    for a patch a sha256 of its base. Leaving an entry out costs only bytes.
    """
    if not isinstance(entries, list):
        return ()
    folder = model_path.rpartition("/")[0]
    found = []
    for entry in entries[:16]:
        if not isinstance(entry, dict):
            continue
        path, encoding, base = entry.get("path"), entry.get("encoding"), entry.get("base_sha256")
        if not isinstance(path, str) or not isinstance(encoding, str) or encoding not in ENCODINGS:
            continue
        directory, _, filename = path.rpartition("/")
        if directory != folder or not _SEGMENT_RE.fullmatch(filename) or path == model_path:
            continue
        if encoding == ZSTD_PATCH and not (isinstance(base, str) and _SHA256_RE.fullmatch(base)):
            continue
        found.append(Transfer(path, encoding, base if encoding == ZSTD_PATCH else None))
    return tuple(found)


def plan_transfers(target: ModelTarget, held: Collection[str]) -> list[Transfer]:
    """The forms to try before the model file, best first: patches from a model in ``held`` (sha256s), then zstd."""
    patches = [t for t in target.transfers if t.encoding == ZSTD_PATCH and t.base_sha256 in held]
    return patches[:1] + [t for t in target.transfers if t.encoding == ZSTD][:1]


def form_problem(transfer: Transfer, custom: Any, target: ModelTarget) -> str | None:
    """What is wrong with the signed target of ``transfer`` (its own fields must name the model), or None."""
    if not isinstance(custom, dict) or custom.get("encoding_of") != target.path:
        return f"{transfer.path} does not say it encodes {target.path}"
    if custom.get("encoding") != transfer.encoding or custom.get("base_sha256") != transfer.base_sha256:
        return f"{transfer.path} is signed as another encoding or base than the model lists"
    return None


def _custom_problem(custom: Mapping[str, Any]) -> str | None:
    """The first thing wrong with a target's Roadside fields, or None."""
    opset, shape, labels = custom.get("opset"), custom.get("input_shape"), custom.get("labels")
    checks = (
        (_is_version(custom.get("model_version")), "model_version is not a version"),
        (_is_version(custom.get("min_agent_version")), "min_agent_version is not a version"),
        (
            isinstance(custom.get("name"), str) and _NAME_RE.fullmatch(custom["name"]),
            "name is not a plain name",
        ),
        (
            isinstance(opset, int) and not isinstance(opset, bool) and opset >= 1,
            "opset is not a positive integer",
        ),
        (
            isinstance(shape, list) and all(_is_dim(d) for d in shape),
            "input_shape is not a list of sizes and axis names",
        ),
        (
            isinstance(labels, list) and labels and all(isinstance(x, str) and x for x in labels),
            "labels is not a list of names",
        ),
    )
    return next((what for ok, what in checks if not ok), None)


def _is_version(value: object) -> bool:
    return isinstance(value, str) and VERSION_RE.fullmatch(value) is not None


def _is_dim(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
        isinstance(value, str) and 0 < len(value) <= 64
    )


def parse_index(data: bytes, name: str) -> ModelIndex | OtaRefusal:
    """Read ``models/<name>/index.json`` (already verified against its signed hash)."""

    def bad(what: str) -> OtaRefusal:
        return OtaRefusal(BadMetadataError.reason, f"index of {name!r}: {what}")

    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return bad("not JSON")
    if not isinstance(body, dict) or body.get("format") != INDEX_FORMAT or body.get("name") != name:
        return bad(f"not a format-{INDEX_FORMAT} index of this model")
    latest, versions = body.get("latest"), body.get("versions")
    if not isinstance(versions, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in versions.items()
    ):
        return bad("versions is not a map of version to path")
    if not isinstance(latest, str) or latest not in versions:
        return bad("latest is not one of its versions")
    return ModelIndex(name, latest, dict(versions))


# -- the decision --------------------------------------------------------------


def decide(
    target: ModelTarget, *, name: str, running_version: str | None, agent: AgentProfile
) -> Verdict | OtaRefusal:
    """Install, already up to date, or refuse (and why). ``running_version``: None when unknown."""
    if (unsafe := check_target_path(target.path, name)) is not None:
        return unsafe
    if target.name != name or target.path.split("/")[2] != target.version:
        return OtaRefusal(
            BadMetadataError.reason, f"target {target.path!r} says it is {target.name} {target.version}"
        )
    if running_version is not None:
        order = compare_versions(target.version, running_version)
        if order == 0:
            return Verdict.UP_TO_DATE
        if order < 0:
            return OtaRefusal(
                RollbackError.reason, f"{name} {target.version} is older than the running {running_version}"
            )
    if target.length > agent.max_bytes:
        return OtaRefusal(
            OversizeError.reason, f"{target.length} bytes is over the {agent.max_bytes}-byte cap"
        )
    return _compatibility(target, agent) or Verdict.INSTALL


def _compatibility(target: ModelTarget, agent: AgentProfile) -> OtaRefusal | None:
    def incompatible(why: str) -> OtaRefusal:
        return OtaRefusal(IncompatibleModelError.reason, f"{target.name} {target.version} {why}")

    if compare_versions(agent.version, target.min_agent_version) < 0:
        return incompatible(f"needs agent {target.min_agent_version} or newer (this is {agent.version})")
    if agent.max_opset is not None and target.opset > agent.max_opset:
        return incompatible(f"uses opset {target.opset}; the runtime supports up to {agent.max_opset}")
    if agent.labels is not None and (missing := agent.labels - set(target.labels)):
        return incompatible(f"lacks labels the configuration uses: {sorted(missing)}")
    if agent.input_shape is not None and not shapes_compatible(agent.input_shape, target.input_shape):
        return incompatible(f"takes input {list(target.input_shape)}, not {list(agent.input_shape)}")
    return None


def shapes_compatible(fed: tuple[Dim, ...], taken: tuple[Dim, ...]) -> bool:
    """Same rank, and every fixed size equal; a named (dynamic) axis on either side matches any."""
    return len(fed) == len(taken) and all(
        isinstance(a, str) or isinstance(b, str) or a == b for a, b in zip(fed, taken, strict=True)
    )


# -- python-tuf's verdicts -----------------------------------------------------


# Checked in order: the first class that matches gives the reason.
_TUF_REFUSALS: Final = (
    (tuf_errors.DownloadLengthMismatchError, OversizeError.reason),
    (tuf_errors.UnsignedMetadataError, BadSignatureError.reason),
    (tuf_errors.ExpiredMetadataError, ExpiredMetadataError.reason),
    # Older than trusted (metadata rollback), or not the version its parent role names (mix-and-match).
    (tuf_errors.BadVersionNumberError, InconsistentMetadataError.reason),
    (tuf_errors.RepositoryError, BadMetadataError.reason),
)


def refusal_for(exc: Exception, *, downloading_target: bool) -> OtaRefusal | None:
    """The refusal a python-tuf exception means; ``None`` for transport trouble (retry later).

    ``downloading_target``: the error came while fetching the model file itself,
    where a hash mismatch means tampered bytes (in metadata it means mix-and-match).
    """
    if isinstance(exc, tuf_errors.LengthOrHashMismatchError):
        reason: str | None = (
            TamperedTargetError.reason if downloading_target else InconsistentMetadataError.reason
        )
    else:
        reason = next((r for kind, r in _TUF_REFUSALS if isinstance(exc, kind)), None)
    return OtaRefusal(reason, f"{type(exc).__name__}: {exc}") if reason is not None else None
