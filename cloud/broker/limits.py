"""The broker's open-files limit: Mosquitto holds one file descriptor per connected device.

Mosquitto does not raise its own limit, and a service manager's default soft
limit (1,024 under systemd) refuses the 1,021st device with ``accept: Too many
open files``, while the devices already connected see nothing wrong. The hard
limit is usually far higher (524,288 under systemd), and a process may raise its
soft limit up to it without privileges.
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

# Below this many the broker cannot hold a city's fleet (docs/operations.md: capacity).
FLEET_FILES: Final = 16_384


def _kernel_ceiling() -> int:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return 1 << 20


def raise_open_files(pid: int = 0) -> int:
    """Raise process ``pid``'s (0: this one's) soft ``RLIMIT_NOFILE`` to its hard limit.

    Returns the soft limit now in force; warns when it is below :data:`FLEET_FILES`.
    """
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    wanted = _kernel_ceiling() if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (OSError, ValueError) as exc:
            log.warning(
                "cannot raise the open-files limit of pid %d from %d to %d: %s", pid, soft, wanted, exc
            )
    if soft != resource.RLIM_INFINITY and soft < FLEET_FILES:
        log.warning(
            "the broker may hold at most %d connections (its open-files limit): raise LimitNOFILE "
            "(systemd) or ulimits.nofile (compose) to hold a city's fleet",
            soft,
        )
    return int(soft)
