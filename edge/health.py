"""What the agent reports about itself: per-stream rates, latency, queues, the host.

Three parts:

- :class:`FrameLedger` sits on the agent's shared frame queue and keeps
  per-stream counts of frames read and frames the ``DROP_OLDEST`` policy
  threw away (the queue itself only counts drops in total), and when each
  stream's last frame came.
- :class:`SystemProbe` reads the host: CPU and resident memory of this
  process (psutil), NVIDIA GPUs (``nvidia-smi``), a Jetson's integrated GPU
  load and the thermal zones (sysfs). Whatever cannot be read stays
  ``None``; nothing is estimated or invented.
- A stream is ``up`` while frames come, ``reconnecting`` while its reader
  still tries but no frame came for ``stale_after_s`` (a camera outage, or
  no first frame yet), ``down`` once its reader ended (the source failed or
  ended). A stream silent for ``stale_after_s`` reads 0 fps, whatever its
  rate before: a dead camera must not look alive.
- :class:`HealthReport` is one snapshot of all of it; ``to_health`` maps it
  onto the wire schema for the heartbeat, and :mod:`roadside.edge.metrics` exports it
  to Prometheus.

tegrastats is not run: it streams until killed, and what it prints about
the GPU and temperatures comes from the same sysfs files read here.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import subprocess
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from roadside.edge.sources import Frame
from roadside.edge.transport.delivery import UplinkStatus
from roadside.shared.queues import BoundedQueue, Overflow
from roadside.shared.schemas import Health, StreamHealth, StreamState, UplinkHealth

log = logging.getLogger(__name__)

MAX_REPORTED_STREAMS: Final = 64  # the wire schema's limit
STALE_MIN_S: Final = 2.0  # a stream silent this long (or 5 of its frame periods, if longer) is not up
_STALE_PERIODS: Final = 5
_PLAUSIBLE_C: Final = (-40.0, 150.0)  # sensors outside this range are unconnected or broken


# Per-stream frame accounting ---------------------------------------------------


class FrameLedger:
    """Puts frames into a shared ``DROP_OLDEST`` queue and attributes each drop to its stream.

    All puts go through :meth:`put`, one at a time, so the ledger knows the
    order of the queue: a shadow FIFO of stream names. Before each put it
    forgets the names the consumer has taken since (queue size tells how
    many); the drops the put itself causes come off the head, which is what
    ``DROP_OLDEST`` removes. Totals are exact; a drop racing a concurrent
    take may be booked to the neighbouring frame's stream.
    """

    def __init__(self, frames: BoundedQueue[Frame], clock: Callable[[], float] = time.monotonic) -> None:
        self._frames = frames
        self._clock = clock
        self._lock = threading.Lock()
        self._order: deque[str] = deque()
        self._read: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._last: dict[str, float] = {}
        self._puts = 0

    def put(self, frame: Frame) -> None:
        if self._frames.overflow is Overflow.BLOCK:
            # Never drops, but may wait for the consumer: not under the lock, which the
            # consumer's thread takes too (``passed``).
            self._frames.put(frame)
            with self._lock:
                self._read[frame.stream] += 1
                self._last[frame.stream] = self._clock()
                self._puts += 1
            return
        with self._lock:
            taken = len(self._order) - self._frames.qsize()
            for _ in range(max(0, taken)):
                self._order.popleft()
            before = self._frames.dropped
            self._frames.put(frame)
            for _ in range(self._frames.dropped - before):
                if self._order:
                    self._dropped[self._order.popleft()] += 1
            self._order.append(frame.stream)
            self._read[frame.stream] += 1
            self._last[frame.stream] = self._clock()
            self._puts += 1

    def mark(self) -> int:
        """A position in the queue's history: every frame put so far is before it."""
        with self._lock:
            return self._puts

    def passed(self, mark: int) -> bool:
        """True once every frame put before ``mark`` has left the queue (taken or dropped)."""
        with self._lock:
            return self._puts - self._frames.qsize() >= mark

    def read(self, stream: str) -> int:
        with self._lock:
            return self._read[stream]

    def dropped(self, stream: str) -> int:
        with self._lock:
            return self._dropped[stream]

    def last_frame_age(self, stream: str) -> float | None:
        """Seconds since the stream's last frame was read; ``None`` before its first."""
        with self._lock:
            last = self._last.get(stream)
            return None if last is None else max(0.0, self._clock() - last)

    def forget(self, stream: str) -> None:
        """A removed stream's counters go; a stream added again under the name starts at zero."""
        with self._lock:
            self._read.pop(stream, None)
            self._dropped.pop(stream, None)
            self._last.pop(stream, None)


def fps_of(
    timestamps: Iterable[float], now: float | None = None, stale_after_s: float = STALE_MIN_S
) -> float:
    """Frames per second over a window of monotonic processing times.

    With ``now``: 0 once the last frame is older than ``stale_after_s`` or five of
    the window's frame periods, whichever is longer (the window alone keeps the
    rate the stream had before it went silent).
    """
    window = list(timestamps)
    if len(window) < 2 or window[-1] <= window[0]:
        return 0.0
    rate = (len(window) - 1) / (window[-1] - window[0])
    if now is not None and now - window[-1] > max(stale_after_s, _STALE_PERIODS / rate):
        return 0.0
    return rate


def stream_state(reading: bool, last_frame_age_s: float | None, stale_after_s: float) -> StreamState:
    """``down`` once the reader ended; ``up`` while frames come; else ``reconnecting``."""
    if not reading:
        return "down"
    if last_frame_age_s is not None and last_frame_age_s <= stale_after_s:
        return "up"
    return "reconnecting"


# The host ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpuSample:
    index: int
    utilization_percent: float | None
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None
    temperature_c: float | None = None
    source: str = "nvidia-smi"


@dataclass(frozen=True, slots=True)
class SystemSample:
    cpu_percent: float | None = None  # this process; above 100 when it uses several cores
    rss_mb: float | None = None
    gpus: tuple[GpuSample, ...] = ()
    temperatures_c: dict[str, float] = field(default_factory=dict)  # thermal zone -> °C

    @property
    def max_temperature_c(self) -> float | None:
        values = [*self.temperatures_c.values(), *(g.temperature_c for g in self.gpus if g.temperature_c)]
        return max(values) if values else None


_NVIDIA_QUERY: Final = "index,utilization.gpu,memory.used,memory.total,temperature.gpu"


def parse_nvidia_smi(text: str) -> tuple[GpuSample, ...]:
    """Rows of ``nvidia-smi --query-gpu=<_NVIDIA_QUERY> --format=csv,noheader,nounits``."""

    def number(value: str) -> float | None:
        try:
            return float(value)
        except ValueError:
            return None  # "[N/A]", "[Not Supported]"

    gpus = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 5 or not cells[0].isdigit():
            continue
        util, used, total, temp = (number(c) for c in cells[1:])
        gpus.append(GpuSample(int(cells[0]), util, used, total, temp))
    return tuple(gpus)


def read_thermal_zones(sys_root: Path = Path("/sys")) -> dict[str, float]:
    """°C of each readable thermal zone, by its type (``GPU-therm``, ``x86_pkg_temp``...)."""
    zones: dict[str, float] = {}
    for zone in sorted((sys_root / "devices/virtual/thermal").glob("thermal_zone*")):
        try:
            millis = int((zone / "temp").read_text().strip())
            kind = (zone / "type").read_text().strip() or zone.name
        except (OSError, ValueError):
            continue  # some zones refuse reads (EIO, ENODATA) when their sensor is off
        celsius = millis / 1000.0
        if _PLAUSIBLE_C[0] <= celsius <= _PLAUSIBLE_C[1]:
            zones[kind if kind not in zones else f"{kind}-{zone.name}"] = celsius
    return zones


_JETSON_GPU_LOAD: Final = (
    "devices/gpu.0/load",
    "devices/platform/gpu.0/load",
    "devices/platform/bus@0/17000000.gpu/load",
    "devices/platform/17000000.ga10b/load",
    "devices/platform/17000000.gv11b/load",
)


def read_jetson_gpu(sys_root: Path = Path("/sys")) -> GpuSample | None:
    """A Jetson's integrated GPU load (sysfs, per mille); its memory is the system's."""
    for relative in _JETSON_GPU_LOAD:
        try:
            per_mille = int((sys_root / relative).read_text().strip())
        except (OSError, ValueError):
            continue
        return GpuSample(0, per_mille / 10.0, source="jetson-sysfs")
    return None


class SystemProbe:
    """Reads the host, at most once per ``max_age_s`` (scrapes and heartbeats share a sample)."""

    def __init__(
        self,
        max_age_s: float = 5.0,
        sys_root: Path = Path("/sys"),
        nvidia_smi: str | None = "nvidia-smi",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age_s = max_age_s
        self.sys_root = sys_root
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, SystemSample] | None = None
        self._nvidia_smi = shutil.which(nvidia_smi) if nvidia_smi else None
        self._process: Any = None
        try:
            psutil = importlib.import_module("psutil")
            self._process = psutil.Process(os.getpid())
            self._process.cpu_percent(None)  # the first reading is always 0.0: prime it
        except ImportError:
            log.info("psutil is not installed: CPU and memory are not reported")

    def sample(self) -> SystemSample:
        with self._lock:
            now = self._clock()
            if self._cached is not None and now - self._cached[0] < self.max_age_s:
                return self._cached[1]
            fresh = SystemSample(*self._process_usage(), self._gpus(), read_thermal_zones(self.sys_root))
            self._cached = (now, fresh)
            return fresh

    def _process_usage(self) -> tuple[float | None, float | None]:
        if self._process is None:
            return None, None
        try:
            with self._process.oneshot():
                return float(self._process.cpu_percent(None)), self._process.memory_info().rss / 1e6
        except Exception as exc:  # psutil raises its own (AccessDenied, NoSuchProcess)
            log.debug("cannot read process usage: %s", exc)
            return None, None

    def _gpus(self) -> tuple[GpuSample, ...]:
        jetson = read_jetson_gpu(self.sys_root)
        if jetson is not None:
            return (jetson,)
        if self._nvidia_smi is None:
            return ()
        try:
            result = subprocess.run(
                [self._nvidia_smi, f"--query-gpu={_NVIDIA_QUERY}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=3,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            # No driver or no device: stop asking rather than fork a failing tool every scrape.
            log.info("nvidia-smi does not answer (%s): GPU figures are not reported", exc)
            self._nvidia_smi = None
            return ()
        return parse_nvidia_smi(result.stdout)


# The report -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamSample:
    name: str
    fps: float
    frames_read: int
    frames_processed: int
    dropped_frames: int
    state: StreamState = "up"
    last_frame_age_s: float | None = None  # None: no frame yet
    reconnects: int = 0


@dataclass(frozen=True, slots=True)
class StreamReader:
    """What the agent knows of a stream's reader."""

    name: str
    reading: bool  # the reader runs: its source has neither ended nor failed
    reconnects: int = 0  # what the source counts (a live camera reopened after a failure)


@dataclass(frozen=True, slots=True)
class HealthReport:
    """One snapshot of the agent; ``None`` means "could not be read here"."""

    ts: datetime
    uptime_s: float
    model_version: str
    provider: str
    streams: tuple[StreamSample, ...]
    inference_p50_ms: float | None
    inference_p95_ms: float | None
    queue_depths: dict[str, int]
    frame_queue_dropped: int
    outbox_backlog: int
    outbox_bytes: int
    outbox_dropped: int
    uplink_connected: bool
    system: SystemSample
    uplink: UplinkStatus | None = None

    def to_health(self) -> Health:
        """The heartbeat payload: the fields the wire schema carries.

        Optional figures the schema may grow (queue depths, outbox bytes, GPU,
        temperature) are passed when the installed schema has the field, so a
        schema update needs no change here.
        """
        gpu = self.system.gpus[0] if self.system.gpus else None
        optional: dict[str, Any] = {
            "queue_depths": self.queue_depths,
            "outbox_bytes": self.outbox_bytes,
            "gpu_percent": gpu.utilization_percent if gpu else None,
            "gpu_memory_mb": gpu.memory_used_mb if gpu else None,
            "temperature_c": self.system.max_temperature_c,
        }
        return Health(
            ts=self.ts,
            uptime_s=max(0.0, self.uptime_s),
            model_version=self.model_version,
            provider=self.provider,
            streams={s.name: _stream_health(s) for s in self.streams[:MAX_REPORTED_STREAMS]},
            inference_p50_ms=self.inference_p50_ms,
            inference_p95_ms=self.inference_p95_ms,
            outbox_backlog=self.outbox_backlog,
            cpu_percent=self.system.cpu_percent,
            rss_mb=self.system.rss_mb,
            uplink=_uplink_health(self.uplink),
            **{k: v for k, v in optional.items() if k in Health.model_fields and v is not None},
        )


def _stream_health(s: StreamSample) -> StreamHealth:
    age = None if s.last_frame_age_s is None else round(s.last_frame_age_s, 2)
    return StreamHealth(
        fps=round(s.fps, 2),
        dropped_frames=s.dropped_frames,
        state=s.state,
        last_frame_age_s=age,
        reconnects=s.reconnects,
    )


def _uplink_health(status: UplinkStatus | None) -> UplinkHealth | None:
    if status is None:
        return None
    return UplinkHealth(
        state=status.state.value,
        since=status.since,
        refusals=status.refusals,
        refused_total=status.refused_total,
        reason=None if status.reason is None else status.reason[:128],
    )


class _Latency(Protocol):
    def percentiles(self) -> tuple[float | None, float | None]: ...


class _ModelInfo(Protocol):
    @property
    def version(self) -> str: ...
    @property
    def active_provider(self) -> str: ...


class _Detector(Protocol):
    @property
    def latency(self) -> _Latency: ...
    @property
    def info(self) -> _ModelInfo: ...


class _Outbox(Protocol):
    dropped: int

    def backlog(self) -> int: ...
    @property
    def size_bytes(self) -> int: ...


class StreamProgress(Protocol):
    """What the pipeline keeps per stream (``roadside.edge.agent.StreamState``)."""

    frames: int
    fps_window: list[float]


class HealthCollector:
    """Assembles a :class:`HealthReport` from the agent's parts; safe to call from any thread."""

    def __init__(
        self,
        detector: _Detector,
        outbox: _Outbox,
        frames: BoundedQueue[Frame],
        ledger: FrameLedger,
        probe: SystemProbe,
        uplink_connected: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        uplink_status: Callable[[], UplinkStatus] | None = None,
    ) -> None:
        self.detector = detector
        self.outbox = outbox
        self.frames = frames
        self.ledger = ledger
        self.probe = probe
        self.uplink_connected = uplink_connected
        self.uplink_status = uplink_status
        self.stale_after_s = STALE_MIN_S  # the least silence after which a stream is not up
        self._clock = clock
        self._started = clock()

    def report(
        self,
        streams: Iterable[StreamReader],
        progress: Mapping[str, StreamProgress],
        queue_depths: Mapping[str, int] | None = None,
    ) -> HealthReport:
        """A snapshot; ``streams`` are the running streams, ``progress`` the pipeline's state."""
        samples = [self._stream(reader, progress.get(reader.name)) for reader in streams]
        p50, p95 = self.detector.latency.percentiles()
        return HealthReport(
            ts=datetime.now(UTC),
            uptime_s=self._clock() - self._started,
            model_version=self.detector.info.version,
            provider=self.detector.info.active_provider,
            streams=tuple(samples),
            inference_p50_ms=p50,
            inference_p95_ms=p95,
            queue_depths={"frames": self.frames.qsize(), **(queue_depths or {})},
            frame_queue_dropped=self.frames.dropped,
            outbox_backlog=self.outbox.backlog(),
            outbox_bytes=self.outbox.size_bytes,
            outbox_dropped=self.outbox.dropped,
            uplink_connected=self.uplink_connected(),
            system=self.probe.sample(),
            uplink=self.uplink_status() if self.uplink_status is not None else None,
        )

    def _stream(self, reader: StreamReader, state: StreamProgress | None) -> StreamSample:
        age = self.ledger.last_frame_age(reader.name)
        status = stream_state(reader.reading, age, self.stale_after_s)
        fps = 0.0
        if state is not None and status == "up":
            fps = fps_of(list(state.fps_window), self._clock(), self.stale_after_s)
        return StreamSample(
            name=reader.name,
            fps=fps,
            frames_read=self.ledger.read(reader.name),
            frames_processed=state.frames if state is not None else 0,
            dropped_frames=self.ledger.dropped(reader.name),
            state=status,
            last_frame_age_s=age,
            reconnects=reader.reconnects,
        )
