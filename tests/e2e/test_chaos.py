"""The chaos harness's short form (issue 14): one cycle of each cheap fault on one stack.

One hub, one agent, a Mosquitto, all real processes: the agent killed, the
hub killed, the broker killed, both disks full (root only: small tmpfs mounts),
the agent's clock 10 minutes fast, slow and back, its network namespace cut
off from the broker (root only). The books must balance:
every record the agent created is stored once, or refused for a reason the
ledger names. ``python -m bench.chaos`` runs the long form (10 cycles per fault).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench.chaos.faults import FAULTS
from bench.chaos.run import run

pytestmark = pytest.mark.slow

CHEAP = ["agent-kill", "hub-kill", "broker-kill", "disk-full", "clock-skew", "partition"]
ROOT_ONLY = {"disk-full", "partition"}  # a tmpfs mount; a network namespace and a veth pair


@pytest.mark.timeout(240)
def test_one_cycle_of_each_cheap_fault_balances_the_books(tmp_path: Path) -> None:
    names = CHEAP if os.geteuid() == 0 and shutil.which("ip") else [n for n in CHEAP if n not in ROOT_ONLY]
    faults = [FAULTS[n] for n in names]
    outcome = run(faults, cycles=1, seed=7, root=tmp_path, agents=1, gap_s=(0.3, 0.8), hold_scale=0.3)
    books = outcome.books
    report = "\n".join([*books.lines(), *outcome.actions, *outcome.stuck])
    assert books.created > 0, report
    assert outcome.stuck == [], report
    assert books.lost == 0, report
    assert books.duplicated == 0, report
    assert books.unexplained == 0, report
    assert outcome.unattributed_dead_letters == 0, report
    # A clock 10 minutes fast is refused by the hub (dead-lettered, not lost); nothing else may be.
    assert set(books.rejected) <= {
        "stale",
        "stale (a copy; the original stored)",
        "replay (a copy; the original stored)",
    }, report
    assert len(outcome.recover_s) == len(names)


@pytest.mark.timeout(360)
def test_a_rollout_interrupted_by_a_repository_kill_and_a_hub_kill_ends_on_every_device(
    tmp_path: Path,
) -> None:
    # repo-kill: a rollout, the model repository server SIGKILLed and restarted during it.
    # rollout-interrupt's first turn after it (root only: its stack has namespaces and small
    # disks): the next rollout, the hub SIGKILLed during it. Each must end on every device.
    root = os.geteuid() == 0 and shutil.which("ip")
    faults = [FAULTS["repo-kill"], *([FAULTS["rollout-interrupt"]] if root else [])]
    outcome = run(faults, cycles=1, seed=5, root=tmp_path, agents=1, gap_s=(0.3, 0.8), hold_scale=0.3)
    books = outcome.books
    report = "\n".join([*books.lines(), *outcome.actions, *outcome.stuck, *map(str, outcome.rollouts)])
    assert books.created > 0, report
    assert outcome.stuck == [], report  # stuck includes a rollout or a device that did not settle
    assert books.lost == 0, report
    assert books.duplicated == 0, report
    assert books.unexplained == 0, report
    assert len(outcome.rollouts) == len(faults), report
    for rollout in outcome.rollouts:
        assert rollout["status"] in ("completed", "rolled_back"), report
        assert rollout["reason"], report
