"""Which onnxruntime execution providers to ask for, with which options, and what we got.

Pure: names and option dicts in, a plan or a report out. It imports no
inference runtime, so the TensorRT and CUDA paths are tested on machines
without a GPU against fakes of onnxruntime's provider API; the engine feeds
it ``ort.get_available_providers()`` and the session's ``get_providers()``.

Silent fallback is the failure this module exists for: onnxruntime drops a
provider it cannot load (TensorRT without libnvinfer, CUDA without a
driver) with a log line and runs on the CPU, ten times slower. The
:class:`ProviderReport` says what was requested, what this build offers
and what the session really runs on; with ``strict`` the agent refuses to
start instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from roadside.shared.errors import ConfigError

__all__ = [
    "CPU",
    "CUDA",
    "DEFAULT_GPU_ORDER",
    "TENSORRT",
    "ProviderPlan",
    "ProviderReport",
    "ProviderSettings",
    "canonical_name",
    "check_active",
    "plan_providers",
    "provider_options",
]

TENSORRT: Final = "TensorrtExecutionProvider"
CUDA: Final = "CUDAExecutionProvider"
CPU: Final = "CPUExecutionProvider"
DEFAULT_GPU_ORDER: Final = (TENSORRT, CUDA, CPU)

# Short names an installer may type in a config file.
_ALIASES: Final[dict[str, str]] = {
    "tensorrt": TENSORRT,
    "trt": TENSORRT,
    "cuda": CUDA,
    "cpu": CPU,
}


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """What the GPU providers need beyond their names; ignored on a CPU-only build."""

    device_id: int = 0
    trt_cache_path: Path | None = None  # None: no engine cache (each start rebuilds: minutes on a Jetson)
    trt_fp16: bool = True
    trt_workspace_bytes: int = 2 * 1024**3
    cuda_mem_limit_bytes: int | None = None
    cpu_arena_max_bytes: int = 0  # the process's shared CPU arena; 0: no cap (it holds what runs need)
    max_batch: int = 1  # the largest batch the TensorRT optimisation profile must cover
    # max_batch is the stream count, not configured: on the CPU the batcher then forms single
    # frames (BatchPolicy.for_streams), so the self-test need not grow the arena for a batch.
    batch_is_streams: bool = False


@dataclass(frozen=True, slots=True)
class ProviderPlan:
    """The providers to open a session with, best first, with their options."""

    requested: tuple[str, ...]
    available: tuple[str, ...]
    usable: tuple[str, ...]
    options: tuple[dict[str, str], ...]  # one dict per entry of ``usable``

    @property
    def missing(self) -> tuple[str, ...]:
        """Requested providers this onnxruntime build does not offer."""
        return tuple(p for p in self.requested if p not in self.usable)


@dataclass(frozen=True, slots=True)
class ProviderReport:
    """Requested vs available vs active, for health, logs and ``roadside agent doctor``."""

    requested: tuple[str, ...]
    available: tuple[str, ...]
    active: str  # the provider the session puts first: what runs every node it can
    session: tuple[str, ...]  # every provider the session registered, in order

    @property
    def fallback(self) -> bool:
        """True when the session does not run on the first-choice provider."""
        return bool(self.requested) and self.active != self.requested[0]

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form for health messages and the doctor command."""
        return {
            "requested": list(self.requested),
            "available": list(self.available),
            "active": self.active,
            "session": list(self.session),
            "fallback": self.fallback,
        }


def canonical_name(name: str) -> str:
    """``trt`` → ``TensorrtExecutionProvider``; full names pass through."""
    return _ALIASES.get(name.strip().lower(), name.strip())


def _shape_spec(input_name: str, batch: int, dims: tuple[int, ...]) -> str:
    return f"{input_name}:" + "x".join(str(d) for d in (batch, *dims))


def provider_options(
    provider: str,
    settings: ProviderSettings,
    input_name: str | None = None,
    input_dims: tuple[int, ...] | None = None,
) -> dict[str, str]:
    """The provider-options dict onnxruntime takes for ``provider`` (strings, as its C API wants).

    ``input_name`` and ``input_dims`` (the input's shape without the batch
    axis) let TensorRT build one engine for every batch up to ``max_batch``.
    """
    if provider == TENSORRT:
        options = {
            "device_id": str(settings.device_id),
            "trt_fp16_enable": _flag(settings.trt_fp16),
            "trt_max_workspace_size": str(settings.trt_workspace_bytes),
        }
        if settings.trt_cache_path is not None:
            cache = str(settings.trt_cache_path)
            # The timing cache speeds up building engines for new shapes or a new model version.
            options |= {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": cache,
            }
        if input_name is not None and input_dims is not None:
            # One profile from batch 1 to max_batch: without it TensorRT builds a new
            # engine (minutes) the first time each batch size shows up.
            options |= {
                "trt_profile_min_shapes": _shape_spec(input_name, 1, input_dims),
                "trt_profile_opt_shapes": _shape_spec(input_name, settings.max_batch, input_dims),
                "trt_profile_max_shapes": _shape_spec(input_name, settings.max_batch, input_dims),
            }
        return options
    if provider == CUDA:
        options = {
            "device_id": str(settings.device_id),
            # Frames have one size, so the arena never needs to double for a bigger one.
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "EXHAUSTIVE",
            "do_copy_in_default_stream": "True",
        }
        if settings.cuda_mem_limit_bytes is not None:
            options["gpu_mem_limit"] = str(settings.cuda_mem_limit_bytes)
        return options
    return {}


def _flag(value: bool) -> str:
    return "True" if value else "False"


def plan_providers(
    requested: Sequence[str],
    available: Sequence[str],
    settings: ProviderSettings | None = None,
    input_name: str | None = None,
    input_dims: tuple[int, ...] | None = None,
) -> ProviderPlan:
    """Keep the requested providers this build offers, in the requested order, with options.

    Raises :class:`ConfigError` when none is usable: starting on nothing is
    not an option, and silently adding the CPU would hide the mistake.
    """
    names = tuple(dict.fromkeys(canonical_name(p) for p in requested))
    if not names:
        raise ConfigError("model.providers is empty; list at least one, e.g. ['CPUExecutionProvider']")
    have = tuple(available)
    usable = tuple(p for p in names if p in have)
    if not usable:
        raise ConfigError(
            f"none of the configured providers {list(names)} is available in this onnxruntime build "
            f"(it has {sorted(have)}); install onnxruntime-gpu for CUDA/TensorRT or add CPUExecutionProvider"
        )
    settings = settings or ProviderSettings()
    options = tuple(provider_options(p, settings, input_name, input_dims) for p in usable)
    return ProviderPlan(requested=names, available=have, usable=usable, options=options)


def check_active(plan: ProviderPlan, session_providers: Sequence[str], strict: bool) -> ProviderReport:
    """What the session really runs on; :class:`ConfigError` if ``strict`` and it is not the first choice."""
    session = tuple(session_providers)
    if not session:
        raise ConfigError("onnxruntime opened a session with no execution provider")
    report = ProviderReport(
        requested=plan.requested, available=plan.available, active=session[0], session=session
    )
    if strict and report.fallback:
        raise ConfigError(
            f"model.strict is set and the session runs on {report.active}, not {plan.requested[0]} "
            f"(this build offers {sorted(plan.available)}); fix the GPU install or unset model.strict"
        )
    return report
