"""The model repository: a TUF repository on disk, signed with python-tuf's Metadata API.

Layout (consistent snapshots: every file a device fetches after the
timestamp is named by its version or its hash, so a device that reads while
the hub writes still sees one coherent state)::

    <repo>/metadata/1.root.json, 2.root.json ...  every root, for devices walking the chain
    <repo>/metadata/root.json                       the newest root (what a new device ships with)
    <repo>/metadata/<N>.targets.json                the signed list of model files
    <repo>/metadata/<N>.snapshot.json               which targets version is current
    <repo>/metadata/timestamp.json                  which snapshot is current; re-signed hourly
    <repo>/targets/models/<name>/<version>/<sha256>.<file>.onnx
    <repo>/targets/models/<name>/<version>/<sha256>.model.zst          the model, zstd-compressed
    <repo>/targets/models/<name>/<version>/<sha256>.patch-<base>.zst   a delta from the previous version
    <repo>/targets/models/<name>/<sha256>.index.json   the versions of <name> and the latest

The compressed file and the patch (:mod:`roadside.cloud.release.encodings`,
ADR 0027) are targets of their own; the model target lists them under
``transfers``. A device may fetch one of them instead of the model, and checks
what it rebuilds against the model target's hash.

A model target carries Roadside's fields in TUF's ``custom`` slot (name,
model_version, opset, input_shape, labels, min_agent_version) beside TUF's own
length and sha256. A publish writes the model file, then targets, then
snapshot, then timestamp (last, by rename): a reader never sees metadata that
names a file not yet there. Root keys are never read here: operations that
change root take the signers as arguments, brought from the offline keys for
the ceremony (see ``docs/releases.md``).
"""

from __future__ import annotations

import ast
import copy
import fcntl
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from securesystemslib.signer import CryptoSigner, Key, Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from roadside.cloud.broker.pki import write_public
from roadside.cloud.release import keys
from roadside.cloud.release.encodings import EncodedForm, encoded_forms
from roadside.shared.errors import ConfigError
from roadside.shared.topics import check_name

if TYPE_CHECKING:
    from roadside.cloud.registry import ModelRecord, Registry

log = logging.getLogger(__name__)

MODELS_DIR: Final = "models"
INDEX_FILE: Final = "index.json"
INDEX_FORMAT: Final = 1
# The registry's rule for versions; they also become file names on the device.
VERSION_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,31}")
_FILE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\.onnx")
_TOKEN_RE: Final = re.compile(r"\d+|\D+")
_SERIALIZER: Final = JSONSerializer(compact=True)
DEFAULT_ACTOR: Final = "system"

_S = TypeVar("_S", Root, Timestamp, Snapshot, Targets)


@dataclass(frozen=True, slots=True)
class Expiry:
    """How long each role's metadata stays valid after signing.

    The timestamp is short so a frozen mirror is noticed within a day; the
    hub re-signs it when half its life is gone (``refresh_timestamp``).
    Snapshot and targets are renewed the same way; root needs the offline
    keys, so it lives a year and is renewed at a ceremony.
    """

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class ModelManifest:
    """What the device needs to know about a model before it downloads it."""

    name: str
    version: str
    opset: int
    input_shape: tuple[int | str, ...]
    labels: tuple[str, ...]

    def custom(self, min_agent_version: str) -> dict[str, Any]:
        """The Roadside fields of the model's TUF target (beside TUF's length and sha256)."""
        return {
            "name": self.name,
            "model_version": self.version,
            "opset": self.opset,
            "input_shape": list(self.input_shape),
            "labels": list(self.labels),
            "min_agent_version": min_agent_version,
        }


@dataclass(frozen=True, slots=True)
class PublishedModel:
    """A model as signed into the repository."""

    name: str
    version: str
    target_path: str
    sha256: str
    length: int
    custom: Mapping[str, Any]
    targets_version: int


class AuditSink(Protocol):
    """Where changes of trust are recorded: the registry's :class:`roadside.cloud.fleet.audit.AuditLog` fits."""

    def append(
        self, actor: str, action: str, subject: str, details: Mapping[str, Any] | None = None
    ) -> object: ...


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Natural order for model versions: ``1.10.0`` after ``1.9.2``, ``det-2025.04.10`` after ``.2``.

    The same rule as the device's (``roadside.edge.ota.policy.version_key``).
    """
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in _TOKEN_RE.findall(version))


def model_target_path(name: str, version: str, filename: str) -> str:
    """``models/<name>/<version>/<file>.onnx``, after checking each part is a plain name."""
    check_name(name, "model name")
    if not VERSION_RE.fullmatch(version):
        raise ConfigError(f"model version {version!r} is not allowed: 1-32 of A-Z a-z 0-9 . _ + -")
    if not _FILE_RE.fullmatch(filename):
        raise ConfigError(f"model file name {filename!r} is not allowed: a plain name ending in .onnx")
    return f"{MODELS_DIR}/{name}/{version}/{filename}"


def index_target_path(name: str) -> str:
    return f"{MODELS_DIR}/{check_name(name, 'model name')}/{INDEX_FILE}"


def describe_onnx(path: Path, name: str, version: str | None = None) -> ModelManifest:
    """Read opset, input shape, labels (``names``) and ``model_version`` from an ONNX file."""
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError(
            "reading ONNX metadata needs the onnx package: pip install 'roadside[train]'"
        ) from exc
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable ONNX model: {exc}") from exc
    meta = {p.key: p.value for p in model.metadata_props}
    opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not opsets or not model.graph.input:
        raise ConfigError(f"{path} has no default-domain opset or no input")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)
    found_version = version or meta.get("model_version")
    if not found_version:
        raise ConfigError(f"{path} has no model_version metadata; pass the version explicitly")
    return ModelManifest(name, found_version, max(opsets), shape, _labels(meta.get("names"), path))


def _labels(names: str | None, path: Path) -> tuple[str, ...]:
    # Ultralytics writes ``names`` as a Python dict literal: "{0: 'car', 1: 'truck'}".
    if names is None:
        raise ConfigError(f"{path} has no 'names' metadata (class labels)")
    try:
        parsed = ast.literal_eval(names)
    except (ValueError, SyntaxError) as exc:
        raise ConfigError(f"{path}: 'names' metadata is not a dict of class labels") from exc
    if not isinstance(parsed, dict) or sorted(parsed) != list(range(len(parsed))):
        raise ConfigError(f"{path}: 'names' metadata must map 0..n-1 to labels")
    return tuple(str(parsed[i]) for i in range(len(parsed)))


def _now() -> datetime:
    return datetime.now(UTC)


def _dump(metadata: Metadata[Any]) -> bytes:
    return metadata.to_bytes(_SERIALIZER)


def _meta_file(version: int, data: bytes) -> MetaFile:
    return MetaFile(version=version, length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()})


class ModelRepository:
    """A TUF repository of models on disk. The hub holds the online keys; root keys come and go.

    Safe to use from several threads and processes at once: every change
    takes a lock file in the repository.
    """

    def __init__(
        self,
        directory: Path,
        online_keys: Path,
        *,
        expiry: Expiry | None = None,
        clock: Callable[[], datetime] = _now,
        audit: AuditSink | None = None,
    ) -> None:
        self.directory = directory
        self.metadata_dir = directory / "metadata"
        self.targets_dir = directory / "targets"
        self._online_keys = online_keys
        self._expiry = expiry or Expiry()
        self._clock = clock
        self._audit = audit
        self._thread_lock = threading.Lock()
        if not (self.metadata_dir / "root.json").is_file():
            raise ConfigError(f"no model repository at {directory}; create one with the root keys first")

    # Creation ----------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        online_keys: Path,
        *,
        root_keys: Sequence[Key],
        threshold: int,
        root_signers: Sequence[Signer],
        expiry: Expiry | None = None,
        clock: Callable[[], datetime] = _now,
        audit: AuditSink | None = None,
        actor: str = DEFAULT_ACTOR,
    ) -> ModelRepository:
        """Make a new repository: root v1 naming ``root_keys``, signed by ``threshold`` of them.

        ``root_signers`` are the root keys present at the ceremony (at least
        ``threshold``). Online keys are taken from ``online_keys`` or generated there.
        """
        metadata_dir = directory / "metadata"
        if (metadata_dir / "root.json").exists():
            raise ConfigError(f"{directory} already holds a model repository")
        public = list(root_keys)
        if not 1 <= threshold <= len(public):
            raise ConfigError(f"root threshold must be between 1 and the {len(public)} root keys")
        lifetimes = expiry or Expiry()
        root = Root(version=1, expires=clock() + lifetimes.root, consistent_snapshot=True)
        for key in public:
            root.add_key(key, keys.ROOT)
        root.roles[keys.ROOT].threshold = threshold
        for role in keys.ONLINE_ROLES:
            signers = keys.load_signers(online_keys, role) or [keys.generate_key(online_keys, role)]
            for signer in signers:
                root.add_key(signer.public_key, role)
        signed = _sign_root(root, None, root_signers)
        metadata_dir.mkdir(parents=True, exist_ok=True)
        (directory / "targets").mkdir(exist_ok=True)
        _write_root(metadata_dir, signed)
        repository = cls(directory, online_keys, expiry=lifetimes, clock=clock, audit=audit)
        with repository._locked():
            repository._publish(Targets(version=1, expires=clock() + lifetimes.targets))
        repository._record(
            actor, "release.create", {"root_keys": sorted(k.keyid for k in public), "threshold": threshold}
        )
        log.info(
            "created model repository at %s (root threshold %d of %d)", directory, threshold, len(public)
        )
        return repository

    # Reading -----------------------------------------------------------------

    def trusted_root(self) -> bytes:
        """The newest root metadata: what to put on a new device as its trust anchor."""
        return (self.metadata_dir / "root.json").read_bytes()

    def root(self) -> Root:
        return self._load(self.metadata_dir / "root.json", Root)

    def timestamp(self) -> Timestamp:
        return self._load(self.metadata_dir / "timestamp.json", Timestamp)

    def snapshot(self) -> Snapshot:
        return self._load(
            self.metadata_dir / f"{self.timestamp().snapshot_meta.version}.snapshot.json", Snapshot
        )

    def targets(self) -> Targets:
        version = self.snapshot().meta["targets.json"].version
        return self._load(self.metadata_dir / f"{version}.targets.json", Targets)

    def models(self, name: str) -> list[PublishedModel]:
        """The versions of ``name`` in the current targets, lowest version first."""
        targets = self.targets()
        found = [
            _published(target, targets.version)
            for target in targets.targets.values()
            if isinstance(target.custom, dict)
            and target.custom.get("name") == name
            and "model_version" in target.custom
        ]
        return sorted(found, key=lambda model: version_key(model.version))

    # Publishing --------------------------------------------------------------

    def add_model(
        self,
        model_path: Path,
        *,
        manifest: ModelManifest,
        min_agent_version: str,
        allow_lower_version: bool = False,
        actor: str = DEFAULT_ACTOR,
    ) -> PublishedModel:
        """Sign ``model_path`` in as ``models/<name>/<version>/<file>`` and make it the latest of its name.

        Refuses a version that already exists, and (unless told otherwise) one
        that is not above the newest: devices would refuse it anyway.
        """
        path = model_target_path(manifest.name, manifest.version, model_path.name)
        if not VERSION_RE.fullmatch(min_agent_version):
            raise ConfigError(f"min_agent_version {min_agent_version!r} is not a version")
        data = model_path.read_bytes()
        with self._locked():
            existing = self.models(manifest.name)
            if any(m.version == manifest.version for m in existing):
                raise ConfigError(
                    f"model {manifest.name} {manifest.version} is already published; publish a new version"
                )
            newest = max((m.version for m in existing), key=version_key, default=None)
            lower = newest is not None and version_key(manifest.version) <= version_key(newest)
            if lower and not allow_lower_version:
                raise ConfigError(
                    f"model {manifest.name} {manifest.version} is not above the newest ({newest}); "
                    "devices refuse rollbacks"
                )
            previous = max(existing, key=lambda m: version_key(m.version), default=None)
            forms = encoded_forms(data, self._bases(previous))
            target = self._add(path, data, manifest.custom(min_agent_version), forms)
            published = _published(target, self.targets().version)
        self._record(
            actor, "release.add_target", {"path": path, "sha256": published.sha256, "length": len(data)}
        )
        return published

    def add_target(
        self, path: str, data: bytes, custom: Mapping[str, Any], *, actor: str = DEFAULT_ACTOR
    ) -> TargetFile:
        """Store ``data`` as target ``path`` and sign it in; returns its TUF entry."""
        with self._locked():
            target = self._add(path, data, custom)
        self._record(
            actor,
            "release.add_target",
            {"path": path, "sha256": target.hashes["sha256"], "length": len(data)},
        )
        return target

    def _add(
        self, path: str, data: bytes, custom: Mapping[str, Any], forms: Sequence[EncodedForm] = ()
    ) -> TargetFile:
        """Store and sign ``data`` as ``path``, with its encoded ``forms`` beside it, in one targets version."""
        folder = path.rpartition("/")[0]
        derived = []
        for form in forms:
            encoded = TargetFile.from_data(f"{folder}/{form.filename}", form.data, ["sha256"])
            encoded.unrecognized_fields["custom"] = form.custom(path)
            self._store(encoded, form.data)
            derived.append(encoded)
        target = TargetFile.from_data(path, data, ["sha256"])
        target.unrecognized_fields["custom"] = dict(custom)
        if forms:
            target.unrecognized_fields["custom"]["transfers"] = [form.transfer(folder) for form in forms]
        self._store(target, data)
        self._commit(target, derived)
        log.info(
            "signed target %s (%d bytes; %s)",
            path,
            target.length,
            ", ".join(f"{t.path.rpartition('/')[2]} {t.length} bytes" for t in derived) or "no other forms",
        )
        return target

    def _bases(self, previous: PublishedModel | None) -> dict[str, bytes]:
        """The file of ``previous`` by its sha256, to build a patch from; none if it is not stored here."""
        if previous is None:
            return {}
        folder, _, name = previous.target_path.rpartition("/")
        try:
            data = (self.targets_dir / folder / f"{previous.sha256}.{name}").read_bytes()
        except OSError:
            return {}  # served from elsewhere (record_target): no patch
        return {previous.sha256: data} if hashlib.sha256(data).hexdigest() == previous.sha256 else {}

    def record_target(self, target: TargetFile, *, actor: str = DEFAULT_ACTOR) -> None:
        """Sign in a target whose file is served from elsewhere (a CDN, a bucket): metadata only."""
        with self._locked():
            self._commit(target)
        self._record(actor, "release.record_target", {"path": target.path, "length": target.length})

    def refresh_timestamp(self, *, force: bool = False) -> bool:
        """Re-sign whatever is past half its life (targets, snapshot, timestamp); call it every hour.

        Returns whether anything was signed. ``force`` always issues a new timestamp.
        """
        with self._locked():
            now = self._clock()
            targets = self.targets()
            if targets.expires - now < self._expiry.targets / 2:
                self._publish(self._next(targets, self._expiry.targets))
                return True
            snapshot = self.snapshot()
            if snapshot.expires - now < self._expiry.snapshot / 2:
                self._publish_snapshot()
                return True
            if force or self.timestamp().expires - now < self._expiry.timestamp / 2:
                self._publish_timestamp()
                return True
        return False

    # Key rotation ------------------------------------------------------------

    def rotate_root(
        self,
        new_keys: Sequence[Key],
        threshold: int,
        old_signers: Sequence[Signer],
        new_signers: Sequence[Signer],
        *,
        actor: str = DEFAULT_ACTOR,
    ) -> int:
        """Replace the root keys: root v(N+1) signed by a threshold of the old keys and of the new.

        Devices trust v(N+1) because v(N) vouches for it, and from then on
        only the new keys count. Returns the new root version.
        """
        if not 1 <= threshold <= len(new_keys):
            raise ConfigError(f"root threshold must be between 1 and the {len(new_keys)} new root keys")
        with self._locked():
            old = self.root()
            new = self._next(old, self._expiry.root)
            for keyid in list(new.roles[keys.ROOT].keyids):
                new.revoke_key(keyid, keys.ROOT)
            for key in new_keys:
                new.add_key(key, keys.ROOT)
            new.roles[keys.ROOT].threshold = threshold
            _write_root(self.metadata_dir, _sign_root(new, old, [*old_signers, *new_signers]))
        details = {
            "version": new.version,
            "root_keys": sorted(k.keyid for k in new_keys),
            "threshold": threshold,
        }
        self._record(actor, "release.rotate_root", details)
        log.info("rotated root keys: root v%d, threshold %d of %d", new.version, threshold, len(new_keys))
        return new.version

    def rotate_online_key(
        self, role: str, root_signers: Sequence[Signer], *, actor: str = DEFAULT_ACTOR
    ) -> str:
        """Replace the hub's key for ``role`` (targets, snapshot or timestamp); returns the new key id.

        Needs the root keys (root lists every role's keys), then re-signs
        ``role`` and those below it with the new key at once.
        """
        if role not in keys.ONLINE_ROLES:
            raise ConfigError(f"{role!r} is not an online role; choose from {list(keys.ONLINE_ROLES)}")
        fresh = CryptoSigner.generate_ed25519()
        with self._locked():
            old = self.root()
            retired = list(old.roles[role].keyids)
            new = self._next(old, self._expiry.root)
            for keyid in retired:
                new.revoke_key(keyid, role)
            new.add_key(fresh.public_key, role)
            signed_root = _sign_root(new, old, root_signers)
            # The key goes on disk before the root that names it: a crash in between leaves an unused key.
            keys.store_key(self._online_keys, role, fresh)
            _write_root(self.metadata_dir, signed_root)
            if role == keys.TARGETS:
                self._publish(self._next(self.targets(), self._expiry.targets))
            elif role == keys.SNAPSHOT:
                self._publish_snapshot()
            else:
                self._publish_timestamp()
        for keyid in retired:
            keys.retire_key(self._online_keys, role, keyid)
        details = {
            "role": role,
            "keyid": fresh.public_key.keyid,
            "retired": retired,
            "root_version": new.version,
        }
        self._record(actor, "release.rotate_key", details)
        log.info("rotated %s key to %s (root v%d)", role, fresh.public_key.keyid, new.version)
        return fresh.public_key.keyid

    # Internals ---------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock, (self.directory / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _next(self, signed: _S, lifetime: timedelta) -> _S:
        bumped = copy.deepcopy(signed)
        bumped.version += 1
        bumped.expires = self._clock() + lifetime
        return bumped

    def _store(self, target: TargetFile, data: bytes) -> None:
        # Consistent snapshots: the file is named by its hash, so a new version never overwrites one in use.
        (hashed,) = target.get_prefixed_paths()
        destination = (self.targets_dir / hashed).resolve()
        if (
            not destination.is_relative_to(self.targets_dir.resolve())
            or PurePosixPath(target.path).is_absolute()
        ):
            raise ConfigError(f"target path {target.path!r} leaves the repository's targets folder")
        destination.parent.mkdir(parents=True, exist_ok=True)
        if not destination.exists():
            write_public(destination, data)

    def _commit(self, target: TargetFile, derived: Sequence[TargetFile] = ()) -> None:
        targets = self._next(self.targets(), self._expiry.targets)
        for encoded in derived:
            targets.targets[encoded.path] = encoded
        targets.targets[target.path] = target
        name = target.custom.get("name") if isinstance(target.custom, dict) else None
        version = target.custom.get("model_version") if isinstance(target.custom, dict) else None
        if isinstance(name, str) and isinstance(version, str):
            index = self._index(targets, name, latest=version)
            self._store(index[0], index[1])
            targets.targets[index[0].path] = index[0]
        self._publish(targets)

    def _index(self, targets: Targets, name: str, latest: str) -> tuple[TargetFile, bytes]:
        versions = {
            t.custom["model_version"]: path
            for path, t in targets.targets.items()
            if isinstance(t.custom, dict) and t.custom.get("name") == name and "model_version" in t.custom
        }
        body = {"format": INDEX_FORMAT, "name": name, "latest": latest, "versions": versions}
        data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        index = TargetFile.from_data(index_target_path(name), data, ["sha256"])
        index.unrecognized_fields["custom"] = {"index_of": name}
        return index, data

    def _publish(self, targets: Targets) -> None:
        data = _dump(self._sign_online(targets))
        write_public(self.metadata_dir / f"{targets.version}.targets.json", data)
        self._publish_snapshot(_meta_file(targets.version, data))

    def _publish_snapshot(self, targets_meta: MetaFile | None = None) -> None:
        previous = self._maybe_snapshot()
        if previous is None:
            snapshot = Snapshot(version=1, expires=self._clock() + self._expiry.snapshot, meta={})
        else:
            snapshot = self._next(previous, self._expiry.snapshot)
        if targets_meta is not None:
            snapshot.meta["targets.json"] = targets_meta
        data = _dump(self._sign_online(snapshot))
        write_public(self.metadata_dir / f"{snapshot.version}.snapshot.json", data)
        self._publish_timestamp(_meta_file(snapshot.version, data))

    def _publish_timestamp(self, snapshot_meta: MetaFile | None = None) -> None:
        path = self.metadata_dir / "timestamp.json"
        if path.exists():
            timestamp = self._next(self._load(path, Timestamp), self._expiry.timestamp)
        else:
            timestamp = Timestamp(version=1, expires=self._clock() + self._expiry.timestamp)
        if snapshot_meta is not None:
            timestamp.snapshot_meta = snapshot_meta
        # The rename of timestamp.json is the moment the new state becomes visible.
        write_public(path, _dump(self._sign_online(timestamp)))

    def _maybe_snapshot(self) -> Snapshot | None:
        return self.snapshot() if (self.metadata_dir / "timestamp.json").exists() else None

    def _sign_online(self, signed: _S) -> Metadata[_S]:
        metadata = Metadata(signed)
        root = self.root()
        role = root.roles[signed.type]
        signers = keys.load_signers(self._online_keys, signed.type, role.keyids)
        if len(signers) < role.threshold:
            raise ConfigError(
                f"the hub holds {len(signers)} of the {role.threshold} {signed.type} keys root requires "
                f"(in {self._online_keys / signed.type}); restore them or rotate the {signed.type} key"
            )
        for signer in signers:
            metadata.sign(signer, append=True)
        return metadata

    def _load(self, path: Path, kind: type[_S]) -> _S:
        try:
            signed = Metadata.from_bytes(path.read_bytes()).signed
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read repository metadata {path}: {exc}") from exc
        if not isinstance(signed, kind):
            raise ConfigError(f"{path} holds {signed.type} metadata, not {kind.type}")
        return signed

    def _record(self, actor: str, action: str, details: Mapping[str, Any]) -> None:
        if self._audit is not None:
            self._audit.append(actor, action, str(self.directory), details)


def _sign_root(root: Root, previous: Root | None, signers: Sequence[Signer]) -> Metadata[Root]:
    """Sign ``root`` with each distinct signer and check it would verify on a device."""
    metadata = Metadata(root)
    seen: set[str] = set()
    for signer in signers:
        if signer.public_key.keyid not in seen:
            seen.add(signer.public_key.keyid)
            metadata.sign(signer, append=True)
    try:
        result = root.get_root_verification_result(previous, metadata.signed_bytes, metadata.signatures)
    except (ValueError, UnsignedMetadataError) as exc:
        raise ConfigError(f"root v{root.version} cannot be verified: {exc}") from exc
    if not result.verified:
        # first: checked against the previous root (itself for v1); second: against the new one.
        raise ConfigError(
            f"root v{root.version} needs {result.first.threshold} signatures from the current root keys "
            f"and {result.second.threshold} from the new ones; it has {len(result.first.signed)} and "
            f"{len(result.second.signed)}: bring more root key holders"
        )
    return metadata


def _write_root(metadata_dir: Path, metadata: Metadata[Root]) -> None:
    data = _dump(metadata)
    write_public(metadata_dir / f"{metadata.signed.version}.root.json", data)
    write_public(metadata_dir / "root.json", data)


def _published(target: TargetFile, targets_version: int) -> PublishedModel:
    custom = target.custom if isinstance(target.custom, dict) else {}
    return PublishedModel(
        name=str(custom.get("name", "")),
        version=str(custom.get("model_version", "")),
        target_path=target.path,
        sha256=target.hashes["sha256"],
        length=target.length,
        custom=custom,
        targets_version=targets_version,
    )


def release_model(
    repository: ModelRepository,
    registry: Registry,
    model_path: Path,
    *,
    name: str,
    min_agent_version: str,
    version: str | None = None,
    parent: str | None = None,
    actor: str = DEFAULT_ACTOR,
    extra_metadata: Mapping[str, Any] | None = None,
) -> ModelRecord:
    """Sign an ONNX model into the repository and record it (with lineage) in the registry.

    The registry entry carries the target path and the signed fields (plus
    ``extra_metadata``, e.g. the held-out evaluation and lineage, which are
    not signed), and its ``model.publish`` audit entry is written in the
    same transaction.
    """
    manifest = describe_onnx(model_path, name, version)
    if registry.models.get(name, manifest.version) is not None:
        raise ConfigError(
            f"model {name} {manifest.version} is already in the registry; publish a new version"
        )
    published = repository.add_model(
        model_path, manifest=manifest, min_agent_version=min_agent_version, actor=actor
    )
    metadata = {
        **(extra_metadata or {}),
        **published.custom,
        "target_path": published.target_path,
        "targets_version": published.targets_version,
    }
    return registry.models.publish(
        name, manifest.version, published.sha256, published.length, metadata, parent, actor=actor
    )
