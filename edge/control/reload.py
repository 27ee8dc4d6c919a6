"""``reload_config`` as a pure diff: which streams stop and start, what changes live, what needs a restart."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from roadside.edge.settings import AgentSettings, SourceConfig

# reload_config applies these without a restart; any other changed setting is reported.
ANALYTICS_SETTINGS: Final = frozenset(
    {"lines", "analytics", "interval_s"}
)  # read when a stream's state is made
LIVE_SETTINGS: Final = ANALYTICS_SETTINGS | {"sources", "heartbeat_s"}


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    remove: tuple[str, ...]  # stopped (gone, or changed: they are started again from ``start``)
    start: tuple[SourceConfig, ...]
    changed: tuple[str, ...]
    analytics_changed: bool
    heartbeat_changed: bool
    needs_restart: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.remove or self.start or self.analytics_changed or self.heartbeat_changed)


def plan_reload(
    running: Mapping[str, SourceConfig], current: AgentSettings, new: AgentSettings
) -> ReloadPlan:
    """What applying ``new`` over ``current`` means, with ``running`` the streams up now.

    Streams follow the file: a stream added at run time and absent from the
    file is stopped. A stream whose settings changed is restarted.
    """
    wanted = {s.name: s for s in new.sources}
    changed = tuple(n for n, s in wanted.items() if n in running and running[n] != s)
    gone = tuple(n for n in running if n not in wanted)
    start = tuple(s for n, s in wanted.items() if n not in running or n in changed)
    differs = {name for name in type(new).model_fields if getattr(current, name) != getattr(new, name)}
    return ReloadPlan(
        remove=gone + changed,
        start=start,
        changed=changed,
        analytics_changed=bool(differs & ANALYTICS_SETTINGS),
        heartbeat_changed="heartbeat_s" in differs,
        needs_restart=tuple(sorted(differs - LIVE_SETTINGS)),
    )


def live_part(current: AgentSettings, new: AgentSettings) -> AgentSettings:
    """``current`` with the settings that change live taken from ``new``."""
    live = LIVE_SETTINGS & set(type(new).model_fields)
    return current.model_copy(update={name: getattr(new, name) for name in live})
