"""Faults: each breaks one part of a running :class:`~bench.chaos.stack.Stack` and repairs it.

A fault's ``inject`` returns once the system is whole again (the part restarted,
the disk freed); the harness then times how long the system takes to catch up.
``random`` picks the victim and how long it stays down, so a seed repeats a run.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.chaos.netns import AgentLink
from bench.chaos.proxy import LinkFaults
from bench.chaos.stack import Stack, child_pids, command_line

if TYPE_CHECKING:
    from bench.chaos.release import ChaosRelease


class FaultUnavailableError(RuntimeError):
    """This machine cannot inject the fault (no root for a mount, say); the run is skipped."""


@dataclass(frozen=True, slots=True)
class Repair:
    """What a fault did (for the log) and when it began to undo it (``time.monotonic()``):
    recovery is timed from there, so a restart's own start-up counts."""

    action: str
    at: float


def now() -> float:
    return time.monotonic()


def hold(stack: Stack, seconds: float) -> float:
    """Keep the fault in place ``seconds`` times the stack's ``hold_scale``; the time held."""
    held = seconds * stack.hold_scale
    time.sleep(held)
    return held


@dataclass(frozen=True, slots=True)
class Fault:
    name: str
    inject: Callable[[Stack, random.Random], Repair]
    outbox_max_bytes: int = 64 * 1024 * 1024
    agents_on_small_disk: bool = False
    skewed_agents: bool = False
    hub_workers: int = 0
    netns_agents: bool = False
    hub_processes: int = 0  # hub run --workers
    influx_store: bool = False  # the hub stores into an InfluxDB 1.x of its own
    postgres_registry: bool = False  # the registry is a PostgreSQL cluster of its own
    model_repository: bool = False  # a model repository with a server process; agents take updates


def agent_kill(stack: Stack, rng: random.Random) -> Repair:
    agent = rng.choice(stack.agents)
    agent.kill()
    down_s = hold(stack, rng.uniform(0.0, 2.0))
    at = now()
    agent.start()
    return Repair(f"kill -9 {agent.device_id}, down {down_s:.1f} s", at)


def hub_kill(stack: Stack, rng: random.Random) -> Repair:
    stack.hub.kill()
    down_s = hold(stack, rng.uniform(0.0, 3.0))
    at = now()
    stack.hub.start()
    return Repair(f"kill -9 hub, down {down_s:.1f} s", at)


def broker_kill(stack: Stack, rng: random.Random) -> Repair:
    stack.broker.kill()
    down_s = hold(stack, rng.uniform(0.5, 3.0))
    at = now()
    stack.broker.start()  # same port, same persistence file (as of its last autosave)
    return Repair(f"kill -9 mosquitto, down {down_s:.1f} s", at)


def enroll_while_hub_down(stack: Stack, rng: random.Random) -> Repair:
    """The hub down while a device is enrolled: the ACL reload (SIGHUP) comes while the broker
    holds the hub's offline session and what it queued for it."""
    down_s = rng.uniform(2.0, 4.0)
    stack.hub.kill()
    time.sleep(down_s / 2)
    stack.enroll(f"late-{rng.randrange(1 << 30):08x}")  # registry, ACL file, SIGHUP
    time.sleep(down_s / 2)
    at = now()
    stack.hub.start()
    return Repair(f"kill -9 hub, a device enrolled while it was down {down_s:.1f} s", at)


def _program(pid: int) -> str:
    """The name of the program process ``pid`` runs (not a word anywhere in its arguments: a
    work directory named after the fault matched once, and the agent was killed instead)."""
    return Path(command_line(pid).split(" ", 1)[0]).name


def influx_kill(stack: Stack, rng: random.Random) -> Repair:
    """SIGKILL the hub's InfluxDB 1.x, restart it on the same ports and data after 1-10 s."""
    influx = stack.influx
    if influx is None:
        raise FaultUnavailableError("the hub is not storing into InfluxDB")
    victims = [p for p in child_pids(os.getpid()) if _program(p) == "influxd"]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    influx.stop()  # reaps it
    down_s = hold(stack, rng.uniform(1.0, 10.0))
    at = now()
    influx.start()
    return Repair(f"kill -9 influxd, down {down_s:.1f} s", at)


def hub_process_kill(stack: Stack, rng: random.Random) -> Repair:
    """SIGKILL one of ``hub run --workers 1``'s ingest-only hub processes; ``hub run`` starts it
    again (it did not: what the broker queued for its session waited for it)."""
    victims = stack.hub.extra_process_pids()
    if not victims:
        raise RuntimeError(f"hub run has no ingest-only process to kill:\n{stack.hub.tail()}")
    victim = rng.choice(victims)
    os.kill(victim, signal.SIGKILL)
    return Repair(f"kill -9 ingest-only hub process pid {victim}", now())


def postgres_kill(stack: Stack, rng: random.Random) -> Repair:
    """SIGKILL the registry's PostgreSQL (the postmaster), restart it on the same data after 1-10 s."""
    postgres = stack.postgres
    if postgres is None:
        raise FaultUnavailableError("the registry is not on PostgreSQL")
    victims = [p for p in child_pids(os.getpid()) if _program(p) == "postgres"]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    down_s = hold(stack, rng.uniform(1.0, 10.0))
    at = now()
    for attempt in range(20):  # its orphaned backends let go of shared memory within moments
        try:
            postgres.start()
            break
        except RuntimeError:
            if attempt == 19:
                raise
            time.sleep(0.5)
    return Repair(f"kill -9 postgres, down {down_s:.1f} s", at)


def worker_kill(stack: Stack, rng: random.Random) -> Repair:
    """SIGKILL one of the hub's ingest worker processes that own devices (``ingest_workers``);
    a warm spare takes its devices over and the hub retries its batch (ADR 0032)."""
    workers = stack.hub.owning_worker_pids()
    if not workers:
        raise RuntimeError(f"the hub has no ingest worker to kill:\n{stack.hub.tail()}")
    victim = rng.choice(workers)
    os.kill(victim, signal.SIGKILL)
    return Repair(f"kill -9 ingest worker pid {victim}", now())


# -- disk full ---------------------------------------------------------------------------------

SMALL_DISK_BYTES = 32 * 1024 * 1024


def mount_small_disk(where: Path, size_bytes: int = SMALL_DISK_BYTES) -> None:
    """A tmpfs of ``size_bytes`` at ``where`` (root only): a disk that can really fill."""
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise FaultUnavailableError(f"cannot mount a small tmpfs at {where}: {result.stderr.strip()}")


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@contextlib.contextmanager
def filled(directory: Path) -> Iterator[None]:
    """Fill the filesystem holding ``directory`` to the last byte; free it on leaving."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1024 * 1024, 4096, 1):  # big blocks, then what is left, to the last byte
            block = b"\0" * size
            with contextlib.suppress(OSError):  # ENOSPC: full at this block size
                while os.write(fd, block):
                    pass
    finally:
        os.close(fd)
    try:
        yield
    finally:
        ballast.unlink(missing_ok=True)


def disk_full(stack: Stack, rng: random.Random) -> Repair:
    """The agents' disk and the hub's store disk full for a while, at once."""
    planned_s = rng.uniform(2.0, 6.0)
    disks = {agent.outbox.parent for agent in stack.agents} | {stack.home.telemetry_db.parent}
    with contextlib.ExitStack() as held:
        for disk in sorted(disks):
            held.enter_context(filled(disk))
        full_s = hold(stack, planned_s)
        at = now()
    return Repair(f"{len(disks)} disks full for {full_s:.1f} s", at)


# -- clock skew --------------------------------------------------------------------------------

SKEW_S = 600.0  # ten minutes


def clock_skew(stack: Stack, rng: random.Random) -> Repair:
    """Every agent's clock 10 minutes fast, then slow, then a jump back to true, held a few
    seconds each (the hub's clock is this machine's)."""
    steps = [SKEW_S, -SKEW_S, 0.0]
    held = []
    for offset in steps:
        for agent in stack.agents:
            agent.clock_offset_file.write_text(f"{offset}\n")
        hold_s = hold(stack, rng.uniform(1.5, 4.0))
        held.append(f"{offset:+.0f} s for {hold_s:.1f} s")
    return Repair("agent clocks " + ", then ".join(held), now() - hold_s)


# -- the network between agents and the broker (agents in namespaces of their own) --------------


def _links(stack: Stack) -> list[AgentLink]:
    links = [a.link for a in stack.agents if a.link is not None]
    if not links:
        raise FaultUnavailableError("the agents are not in network namespaces")
    return links


def partition(stack: Stack, rng: random.Random) -> Repair:
    """Every agent's link down (veth down on both ends) for 1 to 30 s, then up."""
    links = _links(stack)
    for link in links:
        link.set_up(False)
    down_s = hold(stack, rng.uniform(1.0, 30.0))
    at = now()
    for link in links:
        link.set_up(True)
    return Repair(f"partition {down_s:.1f} s", at)


def slow_link(stack: Stack, rng: random.Random) -> Repair:
    """A 3G modem's bandwidth (384 kbit/s each way, tbf) for a while."""
    links = _links(stack)
    for link in links:
        link.throttle("384kbit")
    slow_s = hold(stack, rng.uniform(5.0, 20.0))
    at = now()
    for link in links:
        link.throttle(None)
    return Repair(f"384 kbit/s for {slow_s:.1f} s", at)


@contextlib.contextmanager
def _proxies(stack: Stack, **faults: object) -> Iterator[None]:
    proxies = [link.proxy for link in _links(stack) if link.proxy is not None]
    for proxy in proxies:
        for name, value in faults.items():
            setattr(proxy.faults, name, value)
    try:
        yield
    finally:
        for proxy in proxies:
            proxy.faults = LinkFaults()


def latency(stack: Stack, rng: random.Random) -> Repair:
    """500 ms each way with 200 ms of jitter, for a while."""
    with _proxies(stack, latency_s=0.5, jitter_s=0.2):
        held = hold(stack, rng.uniform(5.0, 20.0))
        at = now()
    return Repair(f"500 +- 200 ms latency for {held:.1f} s", at)


def loss(stack: Stack, rng: random.Random) -> Repair:
    """5-30 % of segments lost, as TCP sees it: that share of chunks stalls for a retransmission."""
    share = rng.uniform(0.05, 0.30)
    with _proxies(stack, stall_probability=share):
        held = hold(stack, rng.uniform(5.0, 20.0))
        at = now()
    return Repair(f"{share:.0%} loss (retransmission stalls) for {held:.1f} s", at)


def flap(stack: Stack, rng: random.Random) -> Repair:
    """The link goes away (every connection cut, new ones refused) and back, several times."""
    proxies = [link.proxy for link in _links(stack) if link.proxy is not None]
    flaps = rng.randint(3, 6)
    for _ in range(flaps):
        for proxy in proxies:
            proxy.faults.down = True
            proxy.cut()
        hold(stack, rng.uniform(0.5, 3.0))
        for proxy in proxies:
            proxy.faults.down = False
        hold(stack, rng.uniform(0.5, 3.0))
    return Repair(f"link flapped {flaps} times", now())


# -- OTA rollouts --------------------------------------------------------------------------------


def _release(stack: Stack) -> ChaosRelease:
    if stack.release is None:
        raise FaultUnavailableError("the stack has no model repository")
    return stack.release


def _kill_repository(stack: Stack, rng: random.Random) -> Repair:
    server = _release(stack).server
    server.kill()
    down_s = hold(stack, rng.uniform(1.0, 10.0))
    at = now()
    server.start()  # same port, same files
    return Repair(f"kill -9 the model repository server, down {down_s:.1f} s", at)


def repo_kill(stack: Stack, rng: random.Random) -> Repair:
    """Start a rollout; at a random moment of it (downloads, shadow, the next wave) SIGKILL the
    model repository server and start it again on the same port after 1-10 s."""
    release = _release(stack)
    started = release.start_rollout()
    time.sleep(rng.uniform(0.0, 3.0))  # when in the rollout: hold_scale scales how long, not when
    where = release.where(started)
    repair = _kill_repository(stack, rng)
    return Repair(f"rollout {started.rollout_id} ({started.version}, {where}): {repair.action}", repair.at)


# What interrupts a rollout, in turn (cycle 1 the first): each other fault this stack can inject.
INTERRUPTIONS = (
    "agent-kill",
    "hub-kill",
    "broker-kill",
    "repo-kill",
    "partition",
    "disk-full",
    "clock-skew",
    "flap",
    "loss",
    "latency",
)


def rollout_interrupt(stack: Stack, rng: random.Random) -> Repair:
    """Start a rollout and break something else at a random moment of it: each of
    :data:`INTERRUPTIONS` in turn, one per rollout."""
    release = _release(stack)
    started = release.start_rollout()
    name = INTERRUPTIONS[(len(release.rollouts) - 1) % len(INTERRUPTIONS)]
    time.sleep(rng.uniform(0.0, 3.0))  # when in the rollout: hold_scale scales how long, not when
    where = release.where(started)
    inject = _kill_repository if name == "repo-kill" else FAULTS[name].inject
    repair = inject(stack, rng)
    return Repair(
        f"rollout {started.rollout_id} ({started.version}, {where}) interrupted by {name}: {repair.action}",
        repair.at,
    )


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("agent-kill", agent_kill),
        Fault("hub-kill", hub_kill),
        Fault("broker-kill", broker_kill),
        Fault("worker-kill", worker_kill, hub_workers=2),
        Fault("hub-process-kill", hub_process_kill, hub_processes=1),
        Fault("influx-kill", influx_kill, influx_store=True),
        Fault("postgres-kill", postgres_kill, postgres_registry=True),
        Fault("enroll-while-hub-down", enroll_while_hub_down),
        Fault("disk-full", disk_full, agents_on_small_disk=True),
        Fault("clock-skew", clock_skew, skewed_agents=True),
        Fault("partition", partition, netns_agents=True),
        Fault("slow-link", slow_link, netns_agents=True),
        Fault("latency", latency, netns_agents=True),
        Fault("loss", loss, netns_agents=True),
        Fault("flap", flap, netns_agents=True),
        Fault("repo-kill", repo_kill, model_repository=True),
        # Every interruption needs its part of the stack: namespaces, small disks, skewable clocks.
        Fault(
            "rollout-interrupt",
            rollout_interrupt,
            model_repository=True,
            agents_on_small_disk=True,
            skewed_agents=True,
            netns_agents=True,
        ),
    )
}


def is_root() -> bool:
    return os.geteuid() == 0
