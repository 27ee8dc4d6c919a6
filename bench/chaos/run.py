"""One chaos scenario: start the stack, break it ``cycles`` times, keep the books.

After each repair the harness notes every message created so far and times
how long until each is stored (or refused, or dropped by a budget): that is the
cycle's recovery time. A message still missing after ``stuck_after_s`` is
reported as stuck (an outbox that stopped draining, a hub that stopped
storing) and the run goes on; so is any thread a process's log shows dying of
an uncaught exception (a part that stopped while its process stayed up). At the end the agents stop cleanly (each drains
its outbox), the hub gets its last chance to store, and the ledger balances.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos.collect import (
    created_messages,
    dead_threads,
    dropped_seqs,
    fill_ledger,
    not_queued,
    rejected_messages,
)
from bench.chaos.faults import Fault, FaultUnavailableError, mount_small_disk, unmount
from bench.chaos.ledger import Books, Ledger
from bench.chaos.netns import NetnsUnavailableError
from bench.chaos.stack import Stack, wait_until

log = logging.getLogger(__name__)
# What the camera pipeline makes: a heartbeat alone does not show that the agent counts again.
TRAFFIC = frozenset({"counts", "events"})


@dataclass
class Outcome:
    fault: str
    cycles: int
    seed: int
    books: Books
    recover_s: list[float] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    unattributed_dead_letters: int = 0
    not_queued_disk_full: int = 0
    rollouts: list[dict[str, Any]] = field(default_factory=list)  # what became of each OTA rollout

    def summary(self) -> dict[str, Any]:
        """The JSON line a benchmark prints last."""
        b = self.books
        return {
            "fault": self.fault,
            "cycles": self.cycles,
            "seed": self.seed,
            "created": b.created,
            "stored": b.stored,
            "lost": b.lost,
            "duplicated": b.duplicated,
            "dropped": b.dropped,
            "rejected": b.rejected,
            "unexplained": b.unexplained,
            "unattributed_dead_letters": self.unattributed_dead_letters,
            "not_queued_disk_full": self.not_queued_disk_full,
            "stuck": self.stuck,
            "recover_s_max": round(max(self.recover_s, default=0.0), 2),
            "recover_s": [round(s, 2) for s in self.recover_s],
            **({"rollouts": self.rollouts} if self.rollouts else {}),
            "balanced": b.balanced and not self.stuck,
        }


def _outstanding(stack: Stack, since: dict[str, set[int]], fresh: bool) -> dict[str, str]:
    """Per device, what keeps the system from having caught up with ``since`` (empty: caught up).

    Caught up: every message in ``since`` is stored, refused or dropped by a budget, and, when
    ``fresh``, a message created after ``since`` is stored too (data flows end to end again),
    and every OTA rollout the harness started has settled on every device.
    """
    stored = stack.stored_messages()
    refused = {(d, s) for d, s, _ in rejected_messages(stack.home.dead_letters_db)[0]}
    behind: dict[str, str] = {}
    for agent in stack.agents:
        device = agent.device_id
        before = since.get(device, set())
        done = stored | refused | {(device, s) for s in dropped_seqs(agent.log)}
        left = sum(1 for seq in before if (device, seq) not in done)
        newest = max(before, default=0)
        traffic = {s for s, kind, _ in created_messages(agent.outbox) if s > newest and kind in TRAFFIC}
        if left:
            behind[device] = f"{left} messages created before the repair not stored"
        elif fresh and not any((device, s) in stored for s in traffic):
            behind[device] = "no counts or events created after the repair stored"
    if fresh and stack.release is not None:
        behind.update(stack.release.outstanding())
    return behind


def _caught_up(stack: Stack, since: dict[str, set[int]], fresh: bool, timeout_s: float) -> bool:
    return wait_until(lambda: not _outstanding(stack, since, fresh), timeout_s, poll_s=0.25)


def _created_so_far(stack: Stack) -> dict[str, set[int]]:
    return {a.device_id: {seq for seq, _, _ in created_messages(a.outbox)} for a in stack.agents}


def run(
    faults: Sequence[Fault],
    cycles: int,
    seed: int,
    root: Path,
    agents: int = 2,
    stuck_after_s: float = 90.0,
    gap_s: tuple[float, float] = (1.0, 4.0),
    hold_scale: float = 1.0,
) -> Outcome:
    """Each cycle injects each of ``faults`` in turn (one fault, or the CI's short mix)."""
    rng = random.Random(seed)
    try:
        stack = Stack(
            root,
            agents,
            outbox_max_bytes=min(f.outbox_max_bytes for f in faults),
            mount=mount_small_disk if any(f.agents_on_small_disk for f in faults) else None,
            skewed=any(f.skewed_agents for f in faults),
            hub_workers=max(f.hub_workers for f in faults),
            netns=any(f.netns_agents for f in faults),
            influx=any(f.influx_store for f in faults),
            hub_processes=max(f.hub_processes for f in faults),
            postgres=any(f.postgres_registry for f in faults),
            repository=any(f.model_repository for f in faults),
        )
    except NetnsUnavailableError as exc:
        raise FaultUnavailableError(str(exc)) from exc
    stack.hold_scale = hold_scale
    outcome = Outcome("+".join(f.name for f in faults), cycles, seed, Ledger().books())
    try:
        stack.start()
        if not wait_until(lambda: bool(stack.stored_messages()), 60):
            raise RuntimeError(f"nothing stored before the first fault:\n{stack.hub.tail()}")
        for cycle, fault in ((c, f) for c in range(cycles) for f in faults):
            time.sleep(rng.uniform(*gap_s))  # a random moment
            repair = fault.inject(stack, rng)
            action, repaired = repair.action, repair.at
            since = _created_so_far(stack)
            outcome.actions.append(action)
            log.info("cycle %d: %s", cycle + 1, action)
            if _caught_up(stack, since, fresh=True, timeout_s=stuck_after_s):
                outcome.recover_s.append(time.monotonic() - repaired)
            else:
                outcome.recover_s.append(stuck_after_s)
                outcome.stuck.append(
                    f"cycle {cycle + 1} ({action}): {_outstanding(stack, since, fresh=True)}"
                )
        for agent in stack.agents:
            agent.stop()  # a clean stop drains the outbox
        final = _created_so_far(stack)
        if not _caught_up(stack, final, fresh=False, timeout_s=stuck_after_s):
            outcome.stuck.append(f"after the run: {_outstanding(stack, final, fresh=False)}")
        ledger = Ledger()
        agents_files = {a.device_id: (a.outbox, a.log) for a in stack.agents}
        outcome.unattributed_dead_letters = fill_ledger(
            ledger, agents_files, stack.stored_records(), stack.home.dead_letters_db
        )
        outcome.books = ledger.books()
        for name, log_file in [("hub", stack.hub.log), *((a.device_id, a.log) for a in stack.agents)]:
            outcome.stuck += [f"{name}: thread {t} died (see {log_file})" for t in dead_threads(log_file)]
        outcome.not_queued_disk_full = sum(not_queued(a.log) for a in stack.agents)
        if stack.release is not None:
            outcome.rollouts = stack.release.books()
        return outcome
    finally:
        with contextlib.suppress(Exception):
            stack.close()
        stack.kill_everything()
        for where in reversed(stack.mounts):
            unmount(where)
