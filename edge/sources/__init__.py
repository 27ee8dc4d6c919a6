"""Frame sources behind one interface, chosen by the ``type`` of their config.

:data:`SOURCE_TYPES` is the one dict from a source config's ``type`` to the
factory that opens it. The agent's own types are written into it here; other
packages installed beside the agent add theirs through the ``roadside.sources``
entry-point group (``docs/adr/0010-sources-register-through-entry-points.md``),
each loaded the first time a config names it. That is how ``sim`` supplies the
``synthetic`` camera without the agent importing the simulator, and why a field
install without ``sim`` still runs its real cameras.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, distributions
from typing import Any, Final

from roadside.edge.settings import SourceConfig, VideoSource
from roadside.edge.sources.base import Frame, FrameSource
from roadside.shared.errors import ConfigError

ENTRY_POINT_GROUP: Final = "roadside.sources"

SourceFactory = Callable[[Any], FrameSource]  # takes the source's own config class


def _open_video(config: VideoSource) -> FrameSource:
    # Imported here so an agent without OpenCV can still run other sources.
    from roadside.edge.sources.video import VideoFrameSource

    return VideoFrameSource(config)


SOURCE_TYPES: dict[str, SourceFactory] = {"video": _open_video}


def open_source(config: SourceConfig) -> FrameSource:
    """The registered adapter for ``config.type``; ``ConfigError`` if none is installed here."""
    factory = SOURCE_TYPES.get(config.type)
    if factory is None:
        factory = _load_plugin(config.type, config.name)
        SOURCE_TYPES[config.type] = factory
    return factory(config)


def installed_source_types() -> list[str]:
    """Every source type this install can open: the agent's own and those of installed plugins."""
    return sorted({*SOURCE_TYPES, *(ep.name for ep in registered_entry_points())})


def registered_entry_points(type_name: str | None = None) -> list[EntryPoint]:
    """The ``roadside.sources`` entry points of every installed distribution, each (name, target) once.

    Not ``importlib.metadata.entry_points(group=...)``: that reads only the first
    distribution of each name on ``sys.path``, and a development checkout can hold a
    stale ``roadside.egg-info`` (left by a build) ahead of the installed metadata.
    """
    found: dict[tuple[str, str], EntryPoint] = {}
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP and type_name in (None, ep.name):
                found.setdefault((ep.name, ep.value), ep)
    return list(found.values())


def _load_plugin(type_name: str, stream: str) -> SourceFactory:
    found = registered_entry_points(type_name)
    if not found:
        raise ConfigError(
            f"camera {stream}: no source of type {type_name!r} is installed here "
            f"(installed: {', '.join(installed_source_types())}); the synthetic scene comes with "
            "Roadside's sim package, which field installs leave out"
        )
    if len(found) > 1:
        providers = ", ".join(sorted(ep.value for ep in found))
        raise ConfigError(f"source type {type_name!r} is registered twice ({providers}): uninstall one")
    try:
        factory: SourceFactory = found[0].load()
    except ImportError as exc:
        raise ConfigError(
            f"camera {stream}: source type {type_name!r} is registered by {found[0].value}, "
            f"which cannot be imported here: {exc}"
        ) from exc
    return factory


__all__ = [
    "ENTRY_POINT_GROUP",
    "SOURCE_TYPES",
    "Frame",
    "FrameSource",
    "SourceFactory",
    "installed_source_types",
    "open_source",
    "registered_entry_points",
]
