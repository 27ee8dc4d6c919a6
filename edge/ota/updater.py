"""Verified model updates on the device: python-tuf's ngclient, then our policy, then an atomic install.

The I/O shell around :mod:`roadside.edge.ota.policy`. It downloads (through a fetcher
that caps every response while it streams), asks ngclient and the policy,
and persists. Nothing here decides what is trustworthy.

State on disk (all under the agent's state directory)::

    ota/metadata/                       ngclient's trusted metadata (root history, timestamp, ...)
    models/staging/<name>/<version>.part    a download in progress
    models/staging/<name>/<version>.onnx    verified, fsynced, waiting for ``activate``
    models/staging/<name>/<version>.json    what the signed target said about it
    models/installed/<name>/<version>.onnx  models the pointer may name
    models/current                      JSON: the active and the previous model (file, sha256, length)

Power loss at any point leaves a device that boots a verified model: the
pointer changes by one ``os.replace`` (then a directory fsync), only after the
file it names is complete and fsynced; boot re-hashes the file the pointer
names and falls back to the previous model, then to the model shipped with
the agent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from roadside.edge.ota.decoding import decode_into
from roadside.edge.ota.policy import (
    INDEX_MAX_BYTES,
    AgentProfile,
    Dim,
    ModelTarget,
    OtaRefusal,
    Transfer,
    Verdict,
    check_target_path,
    decide,
    form_problem,
    index_path,
    parse_index,
    parse_target,
    plan_transfers,
    refusal_for,
)
from roadside.shared.errors import (
    BadMetadataError,
    ConfigError,
    OversizeError,
    TamperedTargetError,
    TransportError,
)

log = logging.getLogger(__name__)

POINTER_FORMAT: Final = 1
_HASH_CHUNK: Final = 1024 * 1024

Checkpoint = Callable[[str], None]
"""Called at each durable step ("downloaded", "staged", "moved", "swapped"); a test seam for power loss."""


class OtaStatus(StrEnum):
    STAGED = "staged"  # verified and on disk, waiting for activate()
    INSTALLED = "installed"  # the pointer names it: it runs from the next load
    UP_TO_DATE = "up_to_date"
    REFUSED = "refused"  # an integrity or compatibility refusal; the running model stays
    UNAVAILABLE = "unavailable"  # nothing to do: no such model or version published, nothing to roll back to


@dataclass(frozen=True, slots=True)
class OtaResult:
    status: OtaStatus
    name: str
    version: str | None
    reason: str | None = None  # for REFUSED: a shared.errors reason, e.g. "rollback"
    detail: str = ""
    # For STAGED: how the bytes came ("zstd-patch", "zstd", "full"; "" when staged earlier), and
    # the forms that failed first and were fallen back from, with why.
    transfer: str = ""
    fallbacks: tuple[str, ...] = ()

    @classmethod
    def refused(cls, name: str, version: str | None, refusal: OtaRefusal) -> OtaResult:
        return cls(OtaStatus.REFUSED, name, version, refusal.reason, refusal.detail)


@dataclass(frozen=True, slots=True)
class ShippedModel:
    """The model that came with the agent: the last resort at boot, trusted as part of the install."""

    path: Path
    name: str
    version: str


@dataclass(frozen=True, slots=True)
class InstalledModel:
    """A model file the pointer may name, with what it must hash to."""

    name: str
    version: str
    file: str  # relative to the models directory
    sha256: str
    length: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "file": self.file,
            "sha256": self.sha256,
            "length": self.length,
        }

    @classmethod
    def from_json(cls, body: Any) -> InstalledModel:
        if not isinstance(body, dict):
            raise ValueError("not an object")
        fields = (body["name"], body["version"], body["file"], body["sha256"])
        if not all(isinstance(f, str) for f in fields) or not isinstance(body["length"], int):
            raise ValueError("wrong field types")
        return cls(*fields, length=body["length"])


@dataclass(frozen=True, slots=True)
class BootChoice:
    path: Path
    name: str
    version: str
    source: Literal["active", "previous", "shipped"]


class CappedFetcher(FetcherInterface):
    """ngclient's HTTP(S) fetcher, refusing any response over ``max_bytes`` while it streams.

    A declared ``Content-Length`` over the cap is refused before the body is
    read; an undeclared or lying one is cut off at the first chunk past the
    cap. ``ca_file`` pins the CA for HTTPS (the Roadside CA); redirects are
    not followed. One connection is kept alive between requests (HTTP/1.1)
    while every body is read to its end; :meth:`close` drops it, which the
    updater does after each check, so an idle device holds no connection.
    """

    def __init__(
        self,
        max_bytes: int,
        *,
        ca_file: Path | None = None,
        timeout_s: float = 30.0,
        chunk_size: int = 64 * 1024,
    ) -> None:
        if max_bytes < 1:
            raise ConfigError("the OTA download cap must be at least one byte")
        self.max_bytes = max_bytes
        self._chunk_size = chunk_size
        tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED", "ca_certs": str(ca_file)} if ca_file else {}
        self._pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            retries=urllib3.Retry(total=2, redirect=0, raise_on_redirect=True),
            headers={"User-Agent": "roadside-agent"},
            **tls,
        )

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            response = self._pool.request("GET", url, preload_content=False, redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            raise tuf_errors.DownloadError(f"cannot fetch {url}: {exc}") from exc
        if response.status >= 400:
            _finish(response)
            raise tuf_errors.DownloadHTTPError(f"HTTP {response.status} for {url}", response.status)
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response.close()
            raise tuf_errors.DownloadLengthMismatchError(
                f"{url} is {declared} bytes, over the {self.max_bytes}-byte cap"
            )
        return self._chunks(url, response)

    def _chunks(self, url: str, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        received, complete = 0, False
        try:
            for chunk in response.stream(self._chunk_size):
                received += len(chunk)
                if received > self.max_bytes:
                    raise tuf_errors.DownloadLengthMismatchError(
                        f"{url} passed the {self.max_bytes}-byte cap"
                    )
                yield chunk
            complete = True
        except urllib3.exceptions.HTTPError as exc:
            raise tuf_errors.DownloadError(f"download of {url} broke off: {exc}") from exc
        finally:
            if complete:
                response.release_conn()  # read to the end: the connection serves the next request
            else:
                response.close()  # a body not read to its end: the connection cannot be reused

    def close(self) -> None:
        """Drop the kept-alive connection (the next request opens a new one)."""
        self._pool.clear()


_ERROR_BODY_MAX: Final = 64 * 1024


def _finish(response: urllib3.BaseHTTPResponse) -> None:
    """After an error status: read a short declared body to keep the connection, else drop it."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) <= _ERROR_BODY_MAX:
        try:
            response.drain_conn()
            response.release_conn()
            return
        except urllib3.exceptions.HTTPError:
            pass
    response.close()


class ModelUpdater:
    """Check the repository for a model, stage it verified, activate it atomically, boot safely.

    ``trusted_root`` is the root metadata the device was installed with (its
    trust anchor; newer roots are reached through the signed chain).
    ``repo_url`` serves ``metadata/`` and ``targets/``. Use one updater per
    state directory at a time (python-tuf's ngclient assumes a single user of its cache).
    """

    def __init__(
        self,
        state_dir: Path,
        repo_url: str,
        trusted_root: bytes,
        agent_version: str,
        max_bytes: int,
        *,
        shipped: ShippedModel | None = None,
        labels: Iterable[str] | None = None,
        input_shape: Iterable[Dim] | None = None,
        max_opset: int | None = None,
        ca_file: Path | None = None,
        fetcher: FetcherInterface | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self._repo_url = repo_url.rstrip("/")
        self._trusted_root = trusted_root
        self._agent = AgentProfile(
            version=agent_version,
            max_bytes=max_bytes,
            labels=frozenset(labels) if labels is not None else None,
            input_shape=tuple(input_shape) if input_shape is not None else None,
            max_opset=max_opset,
        )
        self._shipped = shipped
        self._fetcher = fetcher or CappedFetcher(max_bytes, ca_file=ca_file)
        self._checkpoint = checkpoint or (lambda _step: None)
        self._metadata_dir = state_dir / "ota" / "metadata"
        self._models = state_dir / "models"
        self._pointer = self._models / "current"
        self._last_transfer: tuple[str, tuple[str, ...]] = ("", ())
        self.form_failures: Counter[str] = Counter()  # by encoding: each fell back to the next form

    # Checking and staging ----------------------------------------------------

    def check_and_stage(self, name: str, *, version: str | None = None) -> OtaResult:
        """Find the latest (or the given) version of ``name``, verify it, and stage it for ``activate``.

        Refusals come back as ``OtaStatus.REFUSED`` with a reason (and are
        logged); the running model is untouched. Raises ``TransportError``
        when the repository cannot be reached.
        """
        try:
            return self._check_and_stage(name, version)
        finally:
            if isinstance(self._fetcher, CappedFetcher):
                self._fetcher.close()  # one connection per check, none held between them

    def _check_and_stage(self, name: str, version: str | None) -> OtaResult:
        target: ModelTarget | None = None
        try:
            updater = self._tuf_updater()
            updater.refresh()
            chosen = self._resolve(updater, name, version)
            if isinstance(chosen, OtaResult):
                return chosen
            info, target = chosen
            verdict = decide(
                target, name=name, running_version=self._running_version(name), agent=self._agent
            )
            if isinstance(verdict, OtaRefusal):
                return self._refuse(name, target.version, verdict)
            if verdict is Verdict.UP_TO_DATE:
                return OtaResult(OtaStatus.UP_TO_DATE, name, target.version)
            self._stage(updater, info, target)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            refusal = refusal_for(exc, downloading_target=False)
            if refusal is None:
                raise TransportError(f"model repository {self._repo_url} unreachable: {exc}") from exc
            return self._refuse(name, target.version if target else version, refusal)
        except _Refused as refused:
            return self._refuse(name, target.version if target else version, refused.refusal)
        transfer, fallbacks = self._last_transfer
        log.info("staged model %s %s (%s)", name, target.version, transfer or "staged earlier")
        return OtaResult(OtaStatus.STAGED, name, target.version, transfer=transfer, fallbacks=fallbacks)

    def _resolve(
        self, updater: Updater, name: str, version: str | None
    ) -> tuple[TargetFile, ModelTarget] | OtaResult:
        index_info = updater.get_targetinfo(index_path(name))
        if index_info is None:
            return OtaResult(OtaStatus.UNAVAILABLE, name, version, detail=f"no model {name!r} is published")
        if index_info.length > INDEX_MAX_BYTES:
            raise _Refused(
                OtaRefusal(OversizeError.reason, f"index of {name!r} is {index_info.length} bytes")
            )
        index = parse_index(self._download_bytes(updater, index_info), name)
        if isinstance(index, OtaRefusal):
            raise _Refused(index)
        wanted = version or index.latest
        path = index.versions.get(wanted)
        if path is None:
            return OtaResult(OtaStatus.UNAVAILABLE, name, wanted, detail=f"{name} {wanted} is not published")
        if (unsafe := check_target_path(path, name)) is not None:
            raise _Refused(unsafe)
        info = updater.get_targetinfo(path)
        if info is None:
            raise _Refused(
                OtaRefusal(BadMetadataError.reason, f"the index names {path!r}, which targets does not sign")
            )
        target = parse_target(info.path, info.length, info.hashes, info.custom)
        if isinstance(target, OtaRefusal):
            raise _Refused(target)
        return info, target

    def _download_bytes(self, updater: Updater, info: TargetFile) -> bytes:
        scratch = self._metadata_dir.parent / "downloads"
        scratch.mkdir(parents=True, exist_ok=True)
        # The index changes only with a publish: a copy whose length and hash the signed entry names is it.
        cached = updater.find_cached_target(info, str(scratch / "index.json"))
        path = Path(cached) if cached is not None else _download_target(updater, info, scratch / "index.json")
        return path.read_bytes()

    def _stage(self, updater: Updater, info: TargetFile, target: ModelTarget) -> None:
        folder = self._models / "staging" / target.name
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / f"{target.version}.onnx"
        record = InstalledModel(target.name, target.version, "", target.sha256, target.length)
        self._last_transfer = ("", ())
        if staged.exists() and _verifies(staged, record):
            return  # staged earlier and still intact
        part = folder / f"{target.version}.part"
        self._last_transfer = self._fetch_model(updater, info, target, part, record)
        self._checkpoint("downloaded")
        # A form was hashed as it was written; the model file, by ngclient in a temporary file
        # before the copy, so it is read back once. activate() hashes either again before the switch.
        rehash = self._last_transfer[0] == "full"
        with part.open("rb") as handle:
            if rehash and not _verifies_handle(handle, record):
                part.unlink(missing_ok=True)
                raise _Refused(
                    OtaRefusal(TamperedTargetError.reason, f"{part} changed on disk after download")
                )
            os.fsync(handle.fileno())
        # One folder fsync for both renames (the sidecar's and the model's): the one below.
        _write_json(folder / f"{target.version}.json", record.to_json(), sync_dir=False)
        os.replace(part, staged)
        _fsync_dir(folder)
        self._checkpoint("staged")

    def _fetch_model(
        self, updater: Updater, info: TargetFile, target: ModelTarget, part: Path, record: InstalledModel
    ) -> tuple[str, tuple[str, ...]]:
        """Bring the model's bytes to ``part``: a patch, else the compressed file, else the model itself.

        A form that is missing, unsigned, mislabelled, tampered, undecodable or
        rebuilds to other bytes than the model target's hash is counted, logged
        and fallen back from. Returns the form used and the failures before it.
        """
        held = {r.sha256: r for _source, r in self._slots()}
        failures: list[str] = []
        for transfer in plan_transfers(target, held):
            try:
                if self._fetch_form(updater, transfer, target, part, held) == (record.sha256, record.length):
                    return transfer.encoding, tuple(failures)
                raise _FormFailed(f"{transfer.path} rebuilds to bytes that fail {target.path}'s hash")
            except _FormFailed as failed:
                part.unlink(missing_ok=True)
                self.form_failures[transfer.encoding] += 1
                failures.append(f"{transfer.encoding}: {failed}")
                log.warning("model %s %s: %s; falling back", target.name, target.version, failed)
        _download_target(updater, info, part)
        return "full", tuple(failures)

    def _fetch_form(
        self,
        updater: Updater,
        transfer: Transfer,
        target: ModelTarget,
        part: Path,
        held: dict[str, InstalledModel],
    ) -> tuple[str, int]:
        """Download the signed form (ngclient checks its own length and hash) and decode it into ``part``.

        Returns the sha256 and length of what it wrote, hashed as it streams.
        """
        form = updater.get_targetinfo(transfer.path)
        if form is None:
            raise _FormFailed(f"{transfer.path} is not a signed target")
        if (problem := form_problem(transfer, form.custom, target)) is not None:
            raise _FormFailed(problem)
        if form.length > self._agent.max_bytes:
            raise _FormFailed(f"{transfer.path} is {form.length} bytes, over the cap")
        base = None
        if transfer.base_sha256 is not None:
            # Not re-hashed here: a base that changed on disk rebuilds bytes that fail the model's hash.
            try:
                base = (self._models / held[transfer.base_sha256].file).read_bytes()
            except OSError as exc:
                raise _FormFailed(f"the model {transfer.path} applies to cannot be read: {exc}") from exc
        payload = part.with_name(f"{part.stem}.{transfer.encoding}")
        digest = hashlib.sha256()
        try:
            updater.download_target(form, filepath=str(payload))
            with part.open("wb") as out:

                def write(chunk: bytes) -> None:
                    digest.update(chunk)
                    out.write(chunk)

                length = decode_into(transfer.encoding, payload, write, target.length, base)
        except (
            tuf_errors.DownloadError,
            tuf_errors.RepositoryError,
            TamperedTargetError,
            ConfigError,
        ) as exc:
            raise _FormFailed(f"{transfer.path}: {exc}") from exc
        finally:
            payload.unlink(missing_ok=True)
        return digest.hexdigest(), length

    def staged_model(self, name: str, version: str) -> Path | None:
        """The verified file ``check_and_stage`` left for ``version`` (to load it before ``activate``)."""
        staged = self._models / "staging" / name / f"{version}.onnx"
        return staged if staged.is_file() else None

    # Activation and rollback -------------------------------------------------

    def activate(self, version: str, *, name: str | None = None) -> OtaResult:
        """Make the staged ``version`` the active model; the active one becomes the previous.

        The staged file is hashed again before the switch. ``name`` defaults
        to the running model's.
        """
        name = name or self._default_name()
        folder = self._models / "staging" / name
        staged, sidecar = folder / f"{version}.onnx", folder / f"{version}.json"
        running = self._verified_installed()
        if running is not None and (running.name, running.version) == (name, version):
            return OtaResult(OtaStatus.UP_TO_DATE, name, version)
        try:
            record = InstalledModel.from_json(json.loads(sidecar.read_bytes()))
        except (OSError, ValueError, KeyError, TypeError):
            return OtaResult(OtaStatus.UNAVAILABLE, name, version, detail=f"{name} {version} is not staged")
        installed_dir = self._models / "installed" / name
        installed = installed_dir / f"{version}.onnx"
        # After a power loss between the move and the pointer swap the file is already installed.
        source = staged if staged.is_file() else installed
        if not source.is_file():
            return OtaResult(OtaStatus.UNAVAILABLE, name, version, detail=f"{name} {version} is not staged")
        if not _verifies(source, record):
            source.unlink(missing_ok=True)
            refusal = OtaRefusal(TamperedTargetError.reason, f"staged {source} fails its hash")
            return self._refuse(name, version, refusal)
        if source == staged:
            installed_dir.mkdir(parents=True, exist_ok=True)
            os.replace(staged, installed)
            _fsync_dir(installed_dir)
            _fsync_dir(folder)
        self._checkpoint("moved")
        active = InstalledModel(
            name, version, f"installed/{name}/{version}.onnx", record.sha256, record.length
        )
        # The new previous is what runs now, if it still verifies: a rollback must land on something good.
        self._swap(active, running)
        sidecar.unlink(missing_ok=True)
        self._prune()
        log.info("activated model %s %s", name, version)
        return OtaResult(OtaStatus.INSTALLED, name, version)

    def rollback(self, *, to_shipped: bool = False) -> OtaResult:
        """Swap the active and previous models (instant: the previous file is kept), after re-hashing it.

        With ``to_shipped``, an active model installed over the shipped one (no
        previous in the pointer) is rolled back by removing the pointer: boot
        then picks the shipped model.
        """
        current = self._read_pointer()
        if current is None:
            return OtaResult(OtaStatus.UNAVAILABLE, self._default_name(), None, detail="nothing installed")
        active, previous = current
        if previous is None and to_shipped and self._shipped is not None and self._shipped.path.is_file():
            self._pointer.unlink()
            _fsync_dir(self._pointer.parent)
            self._checkpoint("swapped")
            log.warning("rolled back model %s %s -> the shipped model", active.name, active.version)
            return OtaResult(OtaStatus.INSTALLED, self._shipped.name, self._shipped.version, detail="shipped")
        if previous is None:
            return OtaResult(
                OtaStatus.UNAVAILABLE, active.name, None, detail="no previous model to roll back to"
            )
        if not _verifies(self._models / previous.file, previous):
            refusal = OtaRefusal(TamperedTargetError.reason, f"previous model {previous.file} fails its hash")
            return self._refuse(previous.name, previous.version, refusal)
        self._swap(previous, active)
        log.warning("rolled back model %s %s -> %s", active.name, active.version, previous.version)
        return OtaResult(OtaStatus.INSTALLED, previous.name, previous.version)

    # Boot --------------------------------------------------------------------

    def boot_model(self) -> Path:
        """The model file to load: the active one if it verifies, else the previous, else the shipped one."""
        return self.boot().path

    def boot(self) -> BootChoice:
        """Like :meth:`boot_model`, saying which model and where it came from."""
        for source, record in self._slots():
            path = self._models / record.file
            if _verifies(path, record):
                return BootChoice(path, record.name, record.version, source)
            log.error(
                "%s model %s %s fails verification at boot; falling back", source, record.name, record.version
            )
        if self._shipped is None or not self._shipped.path.is_file():
            raise ConfigError("no verified model to boot and no shipped model; reinstall the agent")
        shipped = self._shipped
        return BootChoice(shipped.path, shipped.name, shipped.version, "shipped")

    # Internals ---------------------------------------------------------------

    def _tuf_updater(self) -> Updater:
        self._metadata_dir.mkdir(parents=True, exist_ok=True)
        return Updater(
            metadata_dir=str(self._metadata_dir),
            metadata_base_url=f"{self._repo_url}/metadata/",
            target_base_url=f"{self._repo_url}/targets/",
            fetcher=self._fetcher,
            config=UpdaterConfig(),
            bootstrap=self._trusted_root,
        )

    def _slots(self) -> list[tuple[Literal["active", "previous"], InstalledModel]]:
        current = self._read_pointer()
        if current is None:
            return []
        active, previous = current
        slots: list[tuple[Literal["active", "previous"], InstalledModel]] = [("active", active)]
        if previous is not None:
            slots.append(("previous", previous))
        return slots

    def _verified_installed(self) -> InstalledModel | None:
        """The installed model boot would pick (None if it would fall back to the shipped one)."""
        for _source, record in self._slots():
            if _verifies(self._models / record.file, record):
                return record
        return None

    def _running_version(self, name: str) -> str | None:
        try:
            choice = self.boot()
        except ConfigError:
            return None
        return choice.version if choice.name == name else None

    def _default_name(self) -> str:
        current = self._read_pointer()
        if current is not None:
            return current[0].name
        if self._shipped is not None:
            return self._shipped.name
        raise ConfigError("no model name given and none installed or shipped")

    def _refuse(self, name: str, version: str | None, refusal: OtaRefusal) -> OtaResult:
        log.warning("refused model %s %s: %s (%s)", name, version, refusal.reason, refusal.detail)
        return OtaResult.refused(name, version, refusal)

    def _read_pointer(self) -> tuple[InstalledModel, InstalledModel | None] | None:
        try:
            body = json.loads(self._pointer.read_bytes())
            if body.get("format") != POINTER_FORMAT:
                raise ValueError("unknown pointer format")
            previous = body.get("previous")
            return InstalledModel.from_json(body["active"]), (
                InstalledModel.from_json(previous) if previous is not None else None
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("model pointer %s is unreadable (%s); booting the shipped model", self._pointer, exc)
            return None

    def _swap(self, active: InstalledModel, previous: InstalledModel | None) -> None:
        body = {
            "format": POINTER_FORMAT,
            "active": active.to_json(),
            "previous": previous.to_json() if previous is not None else None,
        }
        _write_json(self._pointer, body)
        self._checkpoint("swapped")

    def _prune(self) -> None:
        """Delete installed models the pointer no longer names, and abandoned downloads."""
        current = self._read_pointer()
        keep = {self._models / r.file for r in (current or ()) if r is not None}
        for path in (self._models / "installed").glob("*/*.onnx"):
            if path not in keep:
                path.unlink(missing_ok=True)
        for part in (self._models / "staging").glob("*/*.part"):
            part.unlink(missing_ok=True)


def _download_target(updater: Updater, info: TargetFile, destination: Path) -> Path:
    """ngclient's download: length and sha256 are checked before a byte reaches ``destination``."""
    try:
        return Path(updater.download_target(info, filepath=str(destination)))
    except (tuf_errors.LengthOrHashMismatchError, tuf_errors.DownloadLengthMismatchError) as exc:
        refusal = refusal_for(exc, downloading_target=True)
        assert refusal is not None  # both are refusals by construction
        raise _Refused(refusal) from exc


class _FormFailed(Exception):  # noqa: N818 - a control-flow signal inside _fetch_model, never escapes
    pass


class _Refused(Exception):  # noqa: N818 - a control-flow signal inside check_and_stage, never escapes
    def __init__(self, refusal: OtaRefusal) -> None:
        super().__init__(refusal.detail)
        self.refusal = refusal


def _verifies(path: Path, record: InstalledModel) -> bool:
    try:
        with path.open("rb") as handle:
            return _verifies_handle(handle, record)
    except OSError:
        return False


def _verifies_handle(handle: BinaryIO, record: InstalledModel) -> bool:
    digest = hashlib.sha256()
    length = 0
    while chunk := handle.read(_HASH_CHUNK):
        digest.update(chunk)
        length += len(chunk)
    return length == record.length and digest.hexdigest() == record.sha256


def _write_json(path: Path, body: dict[str, Any], *, sync_dir: bool = True) -> None:
    """Replace ``path`` atomically and durably: temp file, fsync, rename, fsync the folder.

    ``sync_dir=False`` leaves the folder's fsync to the caller, who renames more into it.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(json.dumps(body, sort_keys=True).encode())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    if sync_dir:
        _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
