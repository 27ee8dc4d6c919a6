"""The SUMO programs shipped in the ``eclipse-sumo`` wheel, found and run with clear errors.

Nothing is downloaded: ``sumo.SUMO_HOME`` points into the installed wheel, and
``sumolib.checkBinary`` finds ``sumo``, ``netconvert``, ``netgenerate`` and
``duarouter`` there. A missing install is a ``ConfigError`` that names the extra.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from roadside.shared.errors import ConfigError, RoadsideError

__all__ = ["SumoToolError", "binary", "run_tool", "strip_generator_comment", "sumo_home"]

# Tools that generate our scenarios finish in well under a second; a minute means a hang.
_TOOL_TIMEOUT_S = 60.0


class SumoToolError(RoadsideError):
    """A SUMO program refused its input or failed; the message holds its own words."""


def sumo_home() -> Path:
    """Where the ``eclipse-sumo`` wheel keeps SUMO (its ``bin/``, ``data/``, ``tools/``)."""
    try:
        import sumo
    except ImportError as exc:
        raise ConfigError(
            "SUMO is not installed here: install Roadside's [sim] extra (eclipse-sumo, traci, sumolib)"
        ) from exc
    return Path(sumo.SUMO_HOME)


def binary(name: str) -> str:
    """The path of SUMO program ``name`` (``sumo``, ``netconvert``, ``duarouter``, ...)."""
    home = sumo_home()
    os.environ.setdefault("SUMO_HOME", str(home))  # sumolib and SUMO's own tools look for it
    candidate = home / "bin" / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    import sumolib

    found = str(sumolib.checkBinary(name))
    if not Path(found).is_file():
        raise ConfigError(f"SUMO program {name!r} is missing from {home}: reinstall eclipse-sumo")
    return found


_GENERATED_COMMENT = re.compile(r"<!-- generated on .*?-->\s*", re.DOTALL)


def run_tool(name: str, args: list[str], cwd: Path) -> None:
    """Run SUMO program ``name`` with ``args`` in ``cwd``; ``SumoToolError`` with its stderr if it fails."""
    argv = [binary(name), *args]
    try:
        done = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise SumoToolError(f"{name} did not finish within {_TOOL_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SumoToolError(f"{name} failed (exit {done.returncode}): {' | '.join(tail)}")


def strip_generator_comment(path: Path) -> None:
    """Drop the dated ``<!-- generated on ... -->`` header SUMO writes, so a seed gives identical bytes."""
    text = path.read_text()
    path.write_text(_GENERATED_COMMENT.sub("", text, count=1))
