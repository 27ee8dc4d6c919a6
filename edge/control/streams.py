"""Which streams an agent may run: a name the health report can carry, and at most ``MAX_STREAMS``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from roadside.edge.settings import SourceConfig
from roadside.shared.errors import ConfigError

MAX_STREAMS: Final = 64  # what a health report can carry
STREAM_NAME: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")  # shared.schemas.Name


def check_new_stream(config: SourceConfig, running: Mapping[str, SourceConfig]) -> None:
    """``ConfigError`` unless ``config`` may join ``running``."""
    if not STREAM_NAME.fullmatch(config.name):
        raise ConfigError(f"stream name {config.name!r} is not allowed: use 1-64 of A-Z a-z 0-9 _ . : -")
    if len(running) >= MAX_STREAMS:
        raise ConfigError(f"this agent already runs {len(running)} streams, the most it reports on")
