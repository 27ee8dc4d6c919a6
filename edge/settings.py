"""Agent settings: built once at the entry point from a TOML/JSON file and
``ROADSIDE_AGENT_*`` environment variables, validated, then passed down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from roadside.edge.analytics.config import AnalyticsConfig
from roadside.edge.analytics.detectors import SignalDetectionConfig
from roadside.edge.privacy.config import PrivacyConfig
from roadside.edge.sensors.config import SensorConfig
from roadside.shared.config import load_settings
from roadside.vision.calibration import CameraCalibration

Point = tuple[float, float]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticSource(_Section):
    """A generated road scene with ground truth (demo, tests, benchmarks)."""

    type: Literal["synthetic"] = "synthetic"
    name: str = "cam0"
    width: int = Field(default=640, ge=64, le=4096)
    height: int = Field(default=480, ge=64, le=4096)
    fps: float = Field(default=10.0, gt=0, le=120)
    seed: int = 0
    light: float = Field(default=1.0, ge=0.05, le=1.0)
    rain: float = Field(default=0.0, ge=0.0, le=1.0)
    fog: float = Field(default=0.0, ge=0.0, le=1.0)
    realtime: bool = True  # pace frames at ``fps`` on the wall clock; False runs as fast as possible
    max_frames: int | None = Field(default=None, ge=1)  # None: endless
    drift: SceneDrift | None = None  # the weather changes part-way (the drift scenario)


class SceneDrift(_Section):
    """After ``after_frames`` frames the synthetic camera sees other conditions (a new scene)."""

    after_frames: int = Field(ge=0)
    light: float = Field(default=1.0, ge=0.05, le=1.0)
    rain: float = Field(default=0.0, ge=0.0, le=1.0)
    fog: float = Field(default=0.0, ge=0.0, le=1.0)


class VideoSource(_Section):
    """A video file, RTSP/HTTP URL or camera index opened through OpenCV."""

    type: Literal["video"] = "video"
    name: str = "cam0"
    uri: str
    fps_cap: float = Field(default=10.0, gt=0, le=120)
    loop: bool = False


class SumoAttach(_Section):
    """A SUMO that another program started with ``--num-clients``: join it as TraCI client ``order``."""

    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    order: int = Field(default=1, ge=1)  # SUMO serves its clients in this order within a step


class SumoSource(_Section):
    """A virtual camera on a SUMO simulation (``roadside.sim.sumo``; needs the ``[sim]`` extra).

    The network (``sumocfg`` or ``net``) is always named: the camera draws its roads.
    The camera is a calibration inline (``camera``) or one of a pose file's cameras
    (``pose_file``, ``pose_name``, which defaults to this source's name). Without
    ``attach`` the source starts SUMO itself; with ``clients`` > 1 SUMO waits on
    ``port`` for the others (a signal controller) before its first step.
    """

    type: Literal["sumo"] = "sumo"
    name: str = "cam0"
    sumocfg: Path | None = None
    net: Path | None = None
    routes: list[Path] = Field(default_factory=list)  # with ``net``; a sumocfg names its own
    camera: CameraCalibration | None = None
    pose_file: Path | None = None
    pose_name: str | None = None
    conditions: Literal["day", "dusk", "night", "rain", "fog"] = "day"
    step_s: float = Field(default=0.1, gt=0, le=1.0)  # SUMO's step when this source starts it
    fps: float = Field(default=10.0, gt=0, le=60)  # frames per simulated second, at most one per step
    realtime: bool = True  # pace frames on the wall clock; False runs as fast as SUMO and drawing allow
    warmup_s: float = Field(default=0.0, ge=0)  # simulated seconds to run before the first frame
    max_frames: int | None = Field(default=None, ge=1)  # None: until the demand is over
    seed: int = 42
    # Ground truth (image boxes, SUMO ids, classes) per frame as JSON lines, for evaluation only.
    truth_file: Path | None = None
    attach: SumoAttach | None = None
    clients: int = Field(default=1, ge=1, le=16)
    port: int | None = Field(default=None, ge=1, le=65535)
    order: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _complete(self) -> SumoSource:
        if (self.sumocfg is None) == (self.net is None):
            raise ValueError("give exactly one of sumocfg and net (the camera draws the network's roads)")
        if (self.camera is None) == (self.pose_file is None):
            raise ValueError("give exactly one of camera (a calibration) and pose_file")
        if self.fps * self.step_s > 1.0 + 1e-9:
            raise ValueError(f"fps {self.fps} asks for more than one frame per SUMO step of {self.step_s} s")
        if self.attach is not None and (self.clients != 1 or self.port is not None):
            raise ValueError("clients and port are for a SUMO this source starts; attach joins one")
        return self


SourceConfig = Annotated[SyntheticSource | VideoSource | SumoSource, Field(discriminator="type")]


class CountLine(_Section):
    """A counting line; crossing it from its left side to its right side counts as ``in``."""

    name: str = "line0"
    start: Point
    end: Point


class ModelConfig(_Section):
    path: Path | None = None  # None: the detector shipped in ``models/``
    version: str | None = None  # None: read from the ONNX metadata, else the file's hash
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    conf_threshold: float = Field(
        default=0.4, gt=0, lt=1
    )  # the shipped detector's card recommends 0.4 for counting
    iou_threshold: float = Field(default=0.5, gt=0, lt=1)
    labels: list[str] | None = None  # None: from the ONNX ``names`` metadata
    intra_op_threads: int = Field(default=1, ge=0)
    kind: Literal["detector", "classifier", "sensor_anomaly"] = "detector"
    input_size: tuple[int, int] | None = None  # (height, width) for exports with a free image size
    max_batch: int | None = Field(default=None, ge=1, le=64)  # None: one frame per stream
    max_wait_ms: float = Field(default=5.0, ge=0, le=1000)  # how long a batch's first frame waits for more
    # TensorRT only: built engines are cached here, so only the first start pays the build (minutes on Jetson).
    trt_cache_path: Path | None = Path("/var/lib/roadside/trt-cache")
    fp16: bool = True  # TensorRT only; the self-test refuses an engine that gives NaN
    strict: bool = False  # refuse to start unless the first provider listed is the one in use
    # Caps the CPU arena all of the agent's sessions share (ADR 0023); 0: no cap. Too small a cap
    # fails the start-up self-test at the largest batch, with a message that says so.
    cpu_arena_max_bytes: int = Field(default=0, ge=0)


class OutboxConfig(_Section):
    path: Path = Path("/var/lib/roadside/outbox.db")
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    max_inflight: int = Field(default=64, ge=1, le=1024)
    max_inflight_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)  # payload bytes awaiting PUBACK
    records_per_message: int = Field(default=200, ge=1, le=2000)
    # Counts in the compact binary form (ADR 0033: a fifth of the bytes, a cheaper check on the
    # hub); "json" for a hub from before it, which dead-letters compact counts until upgraded.
    counts_encoding: Literal["compact", "json"] = "compact"


class SamplesConfig(_Section):
    """Hard examples: frames worth labelling, redacted on the device, sent to the hub's dataset.

    Off by default. Turning it on sends images, so it also needs
    ``privacy.images_leave_device = true``: two explicit switches, never one by accident.
    """

    enabled: bool = False
    budget_bytes_per_hour: int = Field(default=20_000_000, ge=100_000)  # all streams together
    min_interval_s: float = Field(default=10.0, ge=0.0)  # between two samples of one stream
    confidence_band: tuple[float, float] = (0.4, 0.6)  # a detection in here is uncertain
    rare_class_share: float = Field(default=0.05, gt=0.0, lt=1.0)  # under this share of recent detections
    jpeg_quality: int = Field(default=85, ge=10, le=100)  # the first quality tried
    jpeg_quality_floor: int = Field(default=50, ge=10, le=100)  # below this, downscale instead
    queue: int = Field(default=4, ge=1, le=64)  # selected frames waiting for redaction and encoding
    # ... and their image bytes: four 1080p frames are 25 MB; past this the oldest is dropped (counted).
    queue_bytes: int = Field(default=16 * 1024 * 1024, ge=1024 * 1024)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

    @model_validator(mode="after")
    def _consistent(self) -> SamplesConfig:
        low, high = self.confidence_band
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(
                f"samples.confidence_band must satisfy 0 <= low < high <= 1, got {self.confidence_band}"
            )
        if self.jpeg_quality_floor > self.jpeg_quality:
            raise ValueError(
                f"samples.jpeg_quality_floor ({self.jpeg_quality_floor}) is above samples.jpeg_quality ({self.jpeg_quality})"
            )
        if self.enabled and not self.privacy.images_leave_device:
            raise ValueError(
                "samples.enabled sends (redacted) images to the hub: also set samples.privacy.images_leave_device = true"
            )
        return self


OtaStep = Literal["downloaded", "staged", "moved", "swapped"]


class OtaConfig(_Section):
    """Model updates over the air. Off unless a repository is named here or in the enrollment bundle."""

    repo_url: str | None = None  # None: the bundle's model_repo.url
    trusted_root: Path | None = None  # root metadata the device trusts; None: the bundle's
    ca_file: Path | None = None  # pins the CA of an HTTPS repository
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)  # the most one download may be
    state_dir: Path | None = None  # TUF metadata and models/; None: the outbox's directory
    model_name: str = Field(default="detector", min_length=1, max_length=64)
    # The candidate runs on every Nth batch during a shadow test: at most 1/N extra inference.
    shadow_every: int = Field(default=2, ge=1, le=100)
    shadow_grace_s: float = Field(default=600.0, ge=0)  # past shadow_s, how long to wait for min_frames
    retries: int = Field(default=4, ge=0, le=20)  # of a staging the repository did not answer, at least
    # ... and for at least this long after the first try: a repository restart does not fail an install.
    retry_for_s: float = Field(default=240.0, ge=0, le=86_400)
    retry_base_s: float = Field(default=2.0, ge=0.01, le=600)
    # Each heartbeat carries the latest OTA report for this long after it was made (0: never), so
    # a report the hub refused or lost is repeated: past any rollout's install timeout (5 minutes).
    report_repeat_s: float = Field(default=3600.0, ge=0, le=86_400)
    # Test seam for kill tests only: sleep pause_s at this durable step of an install.
    pause_at: OtaStep | None = None
    pause_s: float = Field(default=60.0, ge=0, le=3600)


class AgentSettings(BaseSettings):
    """Everything the agent needs. Secrets live in the enrollment bundle, not here."""

    model_config = SettingsConfigDict(env_prefix="ROADSIDE_AGENT_", env_nested_delimiter="__", extra="forbid")

    bundle: Path = Path("/etc/roadside/bundle.json")
    sources: list[SourceConfig] = Field(default_factory=lambda: [SyntheticSource()])  # type: ignore[arg-type]
    sensors: list[SensorConfig] = Field(default_factory=list)  # air quality, loop detectors, noise
    lines: list[CountLine] = Field(default_factory=list)  # shorthand for analytics.lines
    analytics: AnalyticsConfig = Field(default_factory=AnalyticsConfig)  # lanes, zones, speed traps, events
    signals: SignalDetectionConfig = Field(default_factory=SignalDetectionConfig)  # detector zones per camera
    model: ModelConfig = Field(default_factory=ModelConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    ota: OtaConfig = Field(default_factory=OtaConfig)
    samples: SamplesConfig = Field(default_factory=SamplesConfig)  # hard examples for retraining
    interval_s: int = Field(default=60, ge=1, le=3600)
    heartbeat_s: float = Field(default=30.0, ge=1.0)
    frame_queue: int = Field(default=8, ge=1, le=256)  # frames per stream waiting for the pipeline
    # ... and all streams' frames together, in bytes: 8 frames x 4 streams is 29 MB at 640x480 but
    # 200 MB at 1080p. Past either bound the oldest frame is dropped (counted per stream).
    frame_queue_bytes: int = Field(default=48 * 1024 * 1024, ge=1024 * 1024)
    metrics_port: int = Field(default=0, ge=0, le=65535)  # Prometheus /metrics on 127.0.0.1; 0: off
    # Envelope keys made by a rotate_keys command (0600, atomic). None: beside the bundle.
    keys_path: Path | None = None
    hub_api_url: str | None = None  # for `roadside agent doctor`'s clock check (the API's Date header)

    @model_validator(mode="after")
    def _unique_names(self) -> AgentSettings:
        names = [s.name for s in self.sources]
        if len(names) != len(set(names)):
            raise ValueError(f"source names must be unique, got {names}")
        if self.samples.enabled and self.samples.confidence_band[1] <= self.model.conf_threshold:
            raise ValueError(
                f"samples.confidence_band {self.samples.confidence_band} lies below model.conf_threshold "
                f"({self.model.conf_threshold}): no detection can fall in it"
            )
        return self


def load_agent_settings(path: Path | None = None, **overrides: Any) -> AgentSettings:
    """Settings from an optional TOML/JSON file, the environment and ``overrides``; ``ConfigError`` if invalid."""
    return load_settings(AgentSettings, path, "agent config", overrides)
