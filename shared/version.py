"""The Roadside version, from one source: the installed package's metadata.

The hub reports it in its API and the agent compares it with a model's
``min_agent_version`` before installing an update, so both must read the same
number. A source checkout that was never installed has no metadata; it reads
the version from the ``pyproject.toml`` beside the code instead.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from functools import cache
from pathlib import Path
from typing import Final

from roadside.shared.errors import ConfigError

DISTRIBUTION: Final = "roadside"


@cache
def roadside_version() -> str:
    """The version of the installed ``roadside`` package, or of the source checkout this runs from."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return checkout_version(Path(__file__).resolve().parent.parent / "pyproject.toml")


def checkout_version(pyproject: Path) -> str:
    """``project.version`` from a source checkout's ``pyproject.toml``; ``ConfigError`` if it has none."""
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"roadside is not installed and {pyproject} cannot be read ({exc}); install it (pip install -e .)"
        ) from exc
    version = project.get("version") if isinstance(project, dict) else None
    if not isinstance(version, str) or not version:
        raise ConfigError(f"{pyproject} names no project.version; install roadside (pip install -e .)")
    return version
