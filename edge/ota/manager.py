"""The ``ota`` command on the device: stage, shadow, switch, roll back, and say so to the hub.

Protocol (docs/protocol.md, "Model updates (ota)")::

    install  ack "accepted" at once; then on the thread ``ota-install``:
             staging → (refused | failed) or shadow → (failed) or active [with ShadowStats]
             (already running that version: active at once, without a shadow)
             The command is kept in a journal until its last report: an agent killed or
             stopped mid-install takes the install up again when it starts (``resume``).
    rollback ack with the outcome; the previous detector, still loaded, runs from the next batch:
             rolled_back (version: the model rolled back from; running_version: what runs now)
    Each heartbeat repeats the latest report for ``ota.report_repeat_s``, so a report the hub
    refused or never got is not the end of the rollout (``LatestReport``, ADR 0031).

The running and the candidate detectors never run at the same time: the
candidate runs on the pipeline thread, right after the running model, on
every ``shadow_every``-th batch (so the shadow costs at most 1/N more
inference). Switching happens on the pipeline thread between batches
(``OtaHost.switch``), after the pointer on disk names the new model, so a
crash at any point boots a model that verifies.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from roadside.edge.control.files import write_private_atomic
from roadside.edge.control.handler import Outcome
from roadside.edge.ota.latest import LatestReport
from roadside.edge.ota.shadow import FrameDetections, ShadowComparison
from roadside.edge.ota.updater import BootChoice, ModelUpdater, OtaResult, OtaStatus, ShippedModel
from roadside.edge.settings import AgentSettings, OtaConfig
from roadside.shared.backoff import Backoff
from roadside.shared.bundle import EnrollmentBundle
from roadside.shared.errors import ConfigError, TransportError
from roadside.shared.schemas import Command, OtaCommandArgs, OtaReport, OtaState, ShadowStats
from roadside.shared.version import roadside_version

log = logging.getLogger(__name__)

MAX_DETAIL: Final = 1024  # OtaReport.detail
_DISK_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
RETRY_CAP_S: Final = 20.0  # the longest wait between two tries (a silent repository, a full disk)
_POLL_S: Final = 0.1  # how often the install thread looks at the shadow's progress


class _Info(Protocol):
    @property
    def version(self) -> str: ...

    @property
    def path(self) -> Path: ...


class Detector(Protocol):
    """What the OTA code needs of a detector (``roadside.edge.inference.engine.OnnxDetector``)."""

    @property
    def info(self) -> _Info: ...

    def detect(self, frames: list[npt.NDArray[np.uint8]]) -> Sequence[FrameDetections]: ...


D = TypeVar("D", bound=Detector)
R = TypeVar("R")


class Updater(Protocol):
    """What the OTA code needs of :class:`~roadside.edge.ota.updater.ModelUpdater`."""

    def check_and_stage(self, name: str, *, version: str | None = None) -> OtaResult: ...

    def staged_model(self, name: str, version: str) -> Path | None: ...

    def activate(self, version: str, *, name: str | None = None) -> OtaResult: ...

    def rollback(self, *, to_shipped: bool = False) -> OtaResult: ...

    def boot(self) -> BootChoice: ...


@dataclass(frozen=True, slots=True)
class OtaHost(Generic[D]):
    """The agent as the OTA code sees it."""

    current: Callable[[], D]  # the detector running now
    load: Callable[[Path, str | None], D]  # a detector for a model file, configured like the running one
    switch: Callable[[D], None]  # run this one from the next batch; returns once it does
    report: Callable[[OtaReport], None]  # to the hub, durably, at high priority


class ShadowSession(Generic[D]):
    """A candidate detector beside the running one; fed by the pipeline thread."""

    def __init__(self, candidate: D, every: int) -> None:
        self.candidate = candidate
        self.every = every
        self.error: str | None = None
        self._batches = 0
        self._comparison = ShadowComparison()
        self._lock = threading.Lock()

    def observe(
        self, images: list[npt.NDArray[np.uint8]], running: Sequence[FrameDetections], running_ms: float
    ) -> Sequence[FrameDetections] | None:
        """Run the candidate on this batch if it is its turn; its detections, or ``None`` when it did not
        run. A failing candidate is recorded, never raised."""
        self._batches += 1
        if self.error is not None or (self._batches - 1) % self.every:
            return None
        started = time.perf_counter()
        try:
            found = self.candidate.detect(images)
        except Exception as exc:  # a broken candidate must not stop the running model
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("candidate model %s failed in shadow", self.candidate.info.version)
            return None
        candidate_ms = (time.perf_counter() - started) * 1000.0
        with self._lock:
            self._comparison.add_batch(list(running), list(found), running_ms, candidate_ms)
        return found

    @property
    def frames(self) -> int:
        with self._lock:
            return self._comparison.frames

    def stats(self) -> ShadowStats:
        with self._lock:
            return self._comparison.stats()


@dataclass
class _Install:
    args: OtaCommandArgs
    name: str
    version: str
    cancel: threading.Event = field(default_factory=threading.Event)
    committed: bool = False  # activate() ran: a rollback is a real rollback now
    thread: threading.Thread | None = None


class _Stopped(Exception):  # noqa: N818 - control flow: the install was cancelled or the agent stops
    pass


class OtaManager(Generic[D]):
    """Handles ``ota`` commands; :meth:`observe` is the pipeline's shadow hook."""

    def __init__(
        self,
        updater: Updater,
        host: OtaHost[D],
        config: OtaConfig,
        shipped_path: Path | None = None,
        journal: Path | None = None,
        latest: LatestReport | None = None,
    ) -> None:
        """``journal``: where the install in progress is kept (None: nowhere, a restart forgets it);
        ``latest``: the latest report, for the heartbeats to repeat (None: kept in memory only)."""
        self.updater = updater
        self.journal = journal
        self.latest = latest or LatestReport(None, config.report_repeat_s)
        self.host = host
        self.config = config
        self.shipped_path = shipped_path  # the model the agent was installed with: rollback's last stop
        self.previous: D | None = None  # kept loaded after a switch, for an instant rollback
        self.loads = 0  # detectors loaded from disk by OTA (candidates, and rollbacks that had to)
        self._session: ShadowSession[D] | None = None
        self._job: _Install | None = None
        self._lock = threading.Lock()  # guards _job
        self._commit = threading.Lock()  # activate + switch, and rollback: one at a time
        self._stopping = threading.Event()

    # The command ----------------------------------------------------------------

    def handle(self, command: Command) -> Outcome:
        """The ``ota`` command; a ``ValidationError`` on bad args becomes a nack in the handler."""
        args = OtaCommandArgs.model_validate(command.args)
        if args.action == "install":
            return self._start_install(args)
        return self._rollback(args)

    def observe(
        self, images: list[npt.NDArray[np.uint8]], running: Sequence[FrameDetections], running_ms: float
    ) -> Sequence[FrameDetections] | None:
        """Pipeline thread, after the running model: feed the shadow test, if one runs; the candidate's
        detections when it ran on this batch (hard-example selection compares the two)."""
        session = self._session  # one read: the install thread may end the session at any moment
        if session is None:
            return None
        return session.observe(images, running, running_ms)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Abandon an install in progress (a staged file stays for next time)."""
        self._stopping.set()
        with self._lock:
            job = self._job
        if job is not None:
            job.cancel.set()
            if job.thread is not None:
                job.thread.join(timeout_s)

    def resume(self) -> bool:
        """Take up the install a crash, a power cut or a stop interrupted; whether there was one.

        The hub had its "accepted" ack and waits for reports: without this the device stayed
        silent until the rollout's install timeout rolled the whole rollout back (found by
        ``bench.chaos --fault rollout-interrupt``). A rollback command that comes meanwhile
        cancels it as it cancels any install.
        """
        if self.journal is None or not self.journal.is_file():
            return False
        try:
            args = OtaCommandArgs.model_validate_json(self.journal.read_bytes())
        except (OSError, ValidationError) as exc:
            log.warning("install journal %s unreadable, discarded: %s", self.journal, exc)
            self._forget()
            return False
        log.warning(
            "resuming the install of %s %s (rollout %s) that a restart interrupted",
            args.name, args.version, args.rollout_id,
        )  # fmt: skip
        outcome = self._start_install(args)
        if not outcome.ok:
            log.warning("install not resumed: %s", outcome.detail)
            self._forget()
        return outcome.ok

    def _remember(self, args: OtaCommandArgs) -> None:
        if self.journal is None:
            return
        try:  # atomic: a crash leaves the old journal or the new one, never half of one
            write_private_atomic(self.journal, args.model_dump_json().encode())
        except OSError as exc:  # a full disk: the install goes on, only its restart is not covered
            log.warning("could not journal the install of %s %s: %s", args.name, args.version, exc)

    def _forget(self) -> None:
        if self.journal is not None:
            try:
                self.journal.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not clear the install journal %s: %s", self.journal, exc)

    def repeated_report(self) -> OtaReport | None:
        """The latest report while it is to be repeated (each heartbeat carries it), else None."""
        return self.latest.repeat()

    @property
    def installing(self) -> tuple[str, str] | None:
        with self._lock:
            job = self._job
        return (job.name, job.version) if job is not None else None

    def _start_install(self, args: OtaCommandArgs) -> Outcome:
        if args.name is None or args.version is None:
            return Outcome(False, "install needs a model name and a version")
        with self._lock:
            job = self._job
            if job is not None:
                if (job.name, job.version) == (args.name, args.version):
                    return Outcome(True, "accepted (already installing)")
                return Outcome(False, f"busy: installing {job.name} {job.version}; roll back or wait")
            if self._stopping.is_set():
                return Outcome(False, "the agent is stopping")
            job = _Install(args, args.name, args.version)
            job.thread = threading.Thread(target=self._install, args=(job,), name="ota-install", daemon=True)
            self._job = job
            self._remember(args)
        job.thread.start()
        return Outcome(True, "accepted")

    # Installing (the ota-install thread) ------------------------------------------------

    def _install(self, job: _Install) -> None:
        resume_later = False
        try:
            self._run_install(job)
        except _Stopped:
            resume_later = self._stopping.is_set()  # the agent stops (not a rollback): next start
            log.info("install of %s %s stopped", job.name, job.version)
        except Exception as exc:  # a bug must not leave the hub waiting for a report forever
            log.exception("install of %s %s failed", job.name, job.version)
            self._report(job, "failed", f"internal error: {type(exc).__name__}")
        finally:
            self._session = None
            with self._lock:
                if self._job is job:
                    self._job = None
                    if not resume_later:
                        self._forget()  # its last report went out (or a rollback took over)

    def _run_install(self, job: _Install) -> None:
        if self.host.current().info.version == job.version:
            self._report(job, "active", "already running")
            return
        self._report(job, "staging")
        staged = self._stage(job)
        if staged is None:
            return
        try:
            candidate = self.host.load(staged, job.version)
        except Exception as exc:  # onnxruntime raises its own types; any failure to load is a "failed"
            self._report(job, "failed", f"candidate does not load: {type(exc).__name__}: {exc}")
            return
        self.loads += 1
        session = ShadowSession(candidate, self.config.shadow_every)
        self._check(job)
        self._session = session
        self._report(job, "shadow")
        stats = self._shadow(job, session)
        self._session = None
        if stats is not None:
            self._switch_to(job, candidate, stats)

    def _stage(self, job: _Install) -> Path | None:
        """The staged file, or None once a refused/failed report went out."""
        result = self._retried(
            job, "staging", lambda: self.updater.check_and_stage(job.name, version=job.version)
        )
        if result is None:
            return None
        self._check(job)  # a rollback while the repository answered: no report for a cancelled install
        if result.status == OtaStatus.REFUSED:
            self._report(job, "refused", f"{result.reason}: {result.detail}")
            return None
        if result.status != OtaStatus.STAGED:
            detail = result.detail or f"the repository says {result.status.value}"
            self._report(job, "failed", f"{job.name} {job.version}: {detail}")
            return None
        path = self.updater.staged_model(job.name, job.version)
        if path is None:
            self._report(job, "failed", f"{job.name} {job.version} was staged but its file is gone")
        return path

    def _shadow(self, job: _Install, session: ShadowSession[D]) -> ShadowStats | None:
        """Wait out ``shadow_s`` and ``min_frames``; the stats, or None once a failed report went out."""
        started = time.monotonic()
        soft = started + job.args.shadow_s
        hard = soft + self.config.shadow_grace_s
        while True:
            self._check(job)
            if session.error is not None:
                self._report(job, "failed", f"candidate failed in shadow: {session.error}", session.stats())
                return None
            now = time.monotonic()
            if now >= soft and session.frames >= job.args.min_frames:
                return session.stats()
            if now >= hard:
                detail = f"only {session.frames} of {job.args.min_frames} frames in {now - started:.0f} s"
                self._report(job, "failed", detail, session.stats())
                return None
            job.cancel.wait(_POLL_S)

    def _switch_to(self, job: _Install, candidate: D, stats: ShadowStats) -> None:
        outcome = self._retried(job, "activating", lambda: self._activate(job, candidate))
        if outcome is None:
            return
        result, previous = outcome
        if previous is None:
            state: OtaState = "refused" if result.status == OtaStatus.REFUSED else "failed"
            self._report(job, state, f"activate: {result.reason or result.status.value}: {result.detail}")
            return
        log.info("switched model %s -> %s", previous.info.version, job.version)
        self._report(job, "active", f"switched from {previous.info.version}", stats)

    def _activate(self, job: _Install, candidate: D) -> tuple[OtaResult, D | None]:
        """Activate on disk, then switch between two batches; the model it replaced, or None
        (and why) when the updater would not activate."""
        with self._commit:
            self._check(job)  # a rollback that came first wins
            result = self.updater.activate(job.version, name=job.name)
            if result.status not in (OtaStatus.INSTALLED, OtaStatus.UP_TO_DATE):
                return result, None
            job.committed = True
            previous = self.host.current()
            self.host.switch(candidate)
            self.previous = previous
        return result, previous

    def _retried(self, job: _Install, step: str, call: Callable[[], R]) -> R | None:
        """``call()``, tried again while the repository does not answer or the disk is full (the
        outbox's budget frees space; neither is the model's fault): at least ``retries`` more
        times and for at least ``retry_for_s``. None once the failed report went out."""
        backoff = Backoff(self.config.retry_base_s, cap_s=RETRY_CAP_S)
        started, tries = time.monotonic(), 0
        while True:
            try:
                return call()
            except (TransportError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno not in _DISK_FULL:
                    raise
                what = (
                    "repository unreachable" if isinstance(exc, TransportError) else f"disk full while {step}"
                )
                tries += 1
                elapsed = time.monotonic() - started
                if tries > self.config.retries and elapsed >= self.config.retry_for_s:
                    self._report(job, "failed", f"{what} after {tries} tries in {elapsed:.0f} s: {exc}")
                    return None
                delay = backoff.next_delay()
                if tries >= self.config.retries and elapsed < self.config.retry_for_s:
                    # The last try comes when retry_for_s is up, not up to a whole cap later.
                    delay = min(delay, self.config.retry_for_s - elapsed + self.config.retry_base_s)
                log.warning("%s (%s); retrying in %.1f s", what, exc, delay)
                if job.cancel.wait(delay):
                    raise _Stopped from exc

    def _check(self, job: _Install) -> None:
        if job.cancel.is_set():
            raise _Stopped

    # Rolling back (the command thread) ------------------------------------------------------

    def _rollback(self, args: OtaCommandArgs) -> Outcome:
        with self._lock:
            job = self._job
        if job is not None:
            job.cancel.set()  # checked under the commit lock: either it switched already or it never will
        with self._commit:
            if job is not None and not job.committed:
                self._session = None
                running = self.host.current().info.version
                self._send(args, job.name, job.version, "rolled_back", running, "cancelled before the switch")
                return Outcome(True, f"install of {job.version} cancelled; {running} runs")
            return self._switch_back(args)

    def _switch_back(self, args: OtaCommandArgs) -> Outcome:
        """Under the commit lock."""
        current = self.host.current()
        name = args.name or self.config.model_name
        if args.version is not None and current.info.version != args.version:
            # A rollout rolls back every device it commanded, including those that never switched
            # (refused, still staging, or never reached): going "back" from another model would
            # replace a good model with an older one.
            running = current.info.version
            detail = f"{args.version} is not running ({running} is): nothing to roll back"
            self._send(args, name, args.version, "rolled_back", running, detail)
            return Outcome(True, detail)
        result = self.updater.rollback(to_shipped=True)
        if result.status != OtaStatus.INSTALLED or result.version is None:
            detail = f"cannot roll back: {result.reason or result.status.value}: {result.detail}"
            self._send(args, name, current.info.version, "failed", current.info.version, detail)
            return Outcome(False, detail)
        shipped = result.detail == "shipped"
        target = self.previous
        if target is not None and _is(target, result.version, shipped, self.shipped_path):
            how = "instantly (kept loaded)"
        else:
            boot = self.updater.boot()
            target = self.host.load(boot.path, None if boot.source == "shipped" else boot.version)
            self.loads += 1
            how = "loaded from disk"
        self.host.switch(target)
        self.previous = current
        running = target.info.version
        log.warning("rolled back model %s -> %s, %s", current.info.version, running, how)
        self._send(args, name, current.info.version, "rolled_back", running, f"rolled back {how}")
        return Outcome(True, f"rolled back from {current.info.version} to {running} {how}")

    # Reports ------------------------------------------------------------------------------------

    def _report(
        self, job: _Install, state: OtaState, detail: str = "", stats: ShadowStats | None = None
    ) -> None:
        running = self.host.current().info.version
        self._send(job.args, job.name, job.version, state, running, detail, stats)

    def _send(
        self,
        args: OtaCommandArgs,
        name: str,
        version: str,
        state: OtaState,
        running: str,
        detail: str = "",
        stats: ShadowStats | None = None,
    ) -> None:
        clipped = detail if len(detail) <= MAX_DETAIL else detail[: MAX_DETAIL - 1] + "…"
        report = OtaReport(
            rollout_id=args.rollout_id,
            name=name,
            version=version,
            state=state,
            running_version=running,
            detail=clipped,
            shadow=stats,
        )
        log.info("ota %s %s: %s %s", name, version, state, clipped)
        self.latest.note(report)
        self.host.report(report)


def _is(detector: Detector, version: str, shipped: bool, shipped_path: Path | None) -> bool:
    """Whether ``detector`` is the model the pointer now names (the shipped one: by its file)."""
    if shipped:
        return shipped_path is not None and detector.info.path == shipped_path
    return detector.info.version == version


# Building it at the agent's start --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RepoAnchor:
    url: str
    trusted_root: bytes
    # The Roadside CA from the bundle: the hub serves its repository over HTTPS with a certificate
    # from it, so an https:// repository is verified against it unless ota.ca_file says otherwise.
    ca_pem: bytes | None = None


def repo_anchor(settings: AgentSettings, bundle: EnrollmentBundle) -> RepoAnchor | None:
    """Where updates come from and the root to trust: the settings first, then the bundle; None: OTA off."""
    ota = settings.ota
    bundled = bundle.model_repo
    url = ota.repo_url or (bundled.url if bundled is not None else None)
    if url is None:
        return None
    if ota.trusted_root is not None:
        try:
            return RepoAnchor(url, ota.trusted_root.read_bytes(), bundle.ca_cert_pem.encode())
        except OSError as exc:
            raise ConfigError(f"cannot read ota.trusted_root {ota.trusted_root}: {exc.strerror}") from exc
    if bundled is None:
        raise ConfigError("ota.repo_url is set but no trusted root: set ota.trusted_root to its root.json")
    return RepoAnchor(url, bundled.root_json.encode(), bundle.ca_cert_pem.encode())


def install_journal(settings: AgentSettings) -> Path:
    """Where the agent keeps the ``ota`` install in progress (beside its TUF metadata and models)."""
    return (settings.ota.state_dir or settings.outbox.path.parent) / "ota" / "install.json"


def latest_report(settings: AgentSettings) -> LatestReport:
    """The agent's latest OTA report, kept beside the install journal for its heartbeats to repeat."""
    path = (settings.ota.state_dir or settings.outbox.path.parent) / "ota" / "latest-report.json"
    return LatestReport(path, settings.ota.report_repeat_s)


def make_updater(
    settings: AgentSettings, anchor: RepoAnchor, shipped: ShippedModel | None, labels: list[str] | None = None
) -> ModelUpdater:
    ota = settings.ota
    state_dir = ota.state_dir or settings.outbox.path.parent
    checkpoint = _pause_at(ota.pause_at, ota.pause_s) if ota.pause_at is not None else None
    ca_file = ota.ca_file
    if ca_file is None and anchor.ca_pem is not None and anchor.url.startswith("https://"):
        ca_file = state_dir / "ota" / "repository-ca.pem"
        ca_file.parent.mkdir(parents=True, exist_ok=True)
        ca_file.write_bytes(anchor.ca_pem)
    return ModelUpdater(
        state_dir,
        anchor.url,
        anchor.trusted_root,
        roadside_version(),
        ota.max_bytes,
        shipped=shipped,
        labels=labels,
        ca_file=ca_file,
        checkpoint=checkpoint,
    )


def _pause_at(step: str, pause_s: float) -> Callable[[str], None]:
    """Test seam: sleep at ``step`` so a kill test can SIGKILL the agent exactly there."""

    def checkpoint(reached: str) -> None:
        if reached == step:
            log.warning("ota checkpoint %s reached: pausing %.0f s (ota.pause_at is set)", reached, pause_s)
            time.sleep(pause_s)

    return checkpoint


def boot(
    settings: AgentSettings,
    anchor: RepoAnchor,
    shipped_path: Path,
    load: Callable[[Path, str | None], D],
    shipped_version: Callable[[Path], str],
) -> tuple[D, ModelUpdater]:
    """The detector to run (the updater's boot choice) and the updater to keep.

    The shipped model is the last resort; its version (its ``model_version``
    metadata unless ``model.version`` says) is what the policy compares
    updates with while it runs.
    """
    probe = make_updater(settings, anchor, shipped=None)
    choice: BootChoice | None
    try:
        choice = probe.boot()
    except ConfigError:
        choice = None  # nothing installed verifies: the shipped model
    if choice is None:
        detector = load(shipped_path, settings.model.version)
        version = detector.info.version
    else:
        detector = load(choice.path, choice.version)
        version = settings.model.version or shipped_version(shipped_path)
        log.info("booted model %s %s (%s)", choice.name, choice.version, choice.source)
    shipped = ShippedModel(shipped_path, settings.ota.model_name, version)
    return detector, make_updater(settings, anchor, shipped)
