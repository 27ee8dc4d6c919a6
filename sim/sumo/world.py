"""A SUMO simulation over TraCI, stepped at 0.1 s, that says where every road user is.

:class:`SumoWorld` is the one place that talks TraCI for the cameras (the
signal controller has its own client). It either **starts** SUMO (``sumo``
from the ``eclipse-sumo`` wheel, headless) on a free loopback port, or
**attaches** to a SUMO that someone else started with ``--num-clients N``,
taking its place in the client order: SUMO advances a step only once every
client has asked for it, so a camera and a controller stay in lock step.

Each :meth:`SumoWorld.step` advances the simulation one step and returns a
:class:`WorldState`: the time and every vehicle and person with position,
heading, size, class, speed and lane. Per-step values come from TraCI
subscriptions (one round trip for all of them); sizes and classes, which do
not change, are read once per road user. TraCI failures become
``TransportError`` (SUMO gone) or ``ConfigError`` (SUMO refused the scenario).

::

    with SumoWorld.start(scenario.sumocfg) as world:
        for _ in range(100):
            state = world.step()
            cars = [u for u in state.users if u.vclass == "passenger"]
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from roadside.shared.errors import ConfigError, TransportError
from roadside.sim.sumo.tools import binary

__all__ = ["DEFAULT_STEP_S", "RoadUser", "SumoWorld", "TraciEndpoint", "WorldState", "footprint"]

log = logging.getLogger(__name__)

DEFAULT_STEP_S: Final = 0.1
_CONNECT_RETRIES: Final = 100  # × 0.1 s: SUMO loads a small network in well under a second
_SHUTDOWN_WAIT_S: Final = 10.0
# SUMO ends by itself once its last client has closed; other clients get this long to finish
# their step before the SUMO this world started is terminated.
_OTHERS_GRACE_S: Final = 5.0

Kind = Literal["vehicle", "person"]


@dataclass(frozen=True, slots=True)
class RoadUser:
    """A vehicle or person at one step, as SUMO has it.

    ``x, y`` is SUMO's reference point: the middle of the **front** bumper for
    vehicles (and the person's position for persons); ``angle`` is SUMO's
    heading in compass degrees (0 north, 90 east).
    """

    id: str
    kind: Kind
    vclass: str  # SUMO vehicle class: passenger, truck, bus, bicycle, pedestrian, ...
    x: float
    y: float
    angle: float
    speed: float  # m/s
    length: float  # metres
    width: float
    height: float
    lane: str  # lane id (or the person's edge/lane); "" off the road

    def footprint(self) -> npt.NDArray[np.float64]:
        """The four ground corners (4×2 metres): front-left, front-right, rear-right, rear-left."""
        return footprint(
            self.x, self.y, self.angle, self.length, self.width, front_reference=self.kind == "vehicle"
        )


def footprint(
    x: float, y: float, angle: float, length: float, width: float, *, front_reference: bool = True
) -> npt.NDArray[np.float64]:
    """Ground corners of a road user at SUMO's reference point ``x, y`` heading ``angle`` (compass degrees)."""
    a = math.radians(angle)
    fx, fy = math.sin(a), math.cos(a)  # forward
    rx, ry = fy, -fx  # right
    # SUMO places vehicles by the front bumper; persons by their middle.
    shift = 0.0 if front_reference else length / 2.0
    front = np.array([x + fx * shift, y + fy * shift])
    rear = front - np.array([fx, fy]) * length
    half = np.array([rx, ry]) * width / 2.0
    return np.array([front - half, front + half, rear + half, rear - half])


@dataclass(frozen=True, slots=True)
class WorldState:
    """The simulation at one step."""

    time: float  # simulated seconds
    users: tuple[RoadUser, ...]


@dataclass(frozen=True)
class TraciEndpoint:
    """Where a running SUMO listens for TraCI, and this client's place in the order."""

    host: str = "127.0.0.1"
    port: int = 8813
    order: int = 1  # SUMO serves clients in increasing order within a step


def free_port() -> int:
    """A free loopback TCP port (SUMO binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SumoWorld:
    """A running SUMO simulation seen through TraCI. Use :meth:`start` or :meth:`attach`."""

    def __init__(self, connection: Any, process: _SumoProcess | None, port: int, order: int = 1) -> None:
        self._conn = connection
        self._process = process
        self.port = port  # SUMO's TraCI port: other clients join there
        # SUMO answers no command until every client it waits for has connected, so the order is
        # sent with the first request (which therefore waits for the others), not at connect.
        self._order: int | None = order
        self._statics: dict[tuple[Kind, str], tuple[str, float, float, float]] = {}
        self._closed = False
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        sumocfg: Path | None = None,
        *,
        net: Path | None = None,
        routes: Sequence[Path] = (),
        seed: int = 42,
        step_s: float = DEFAULT_STEP_S,
        port: int | None = None,
        clients: int = 1,
        order: int = 1,
        extra_args: Sequence[str] = (),
    ) -> SumoWorld:
        """Start headless SUMO on ``sumocfg`` (or ``net`` + ``routes``) and connect as client ``order``.

        With ``clients > 1`` SUMO waits for the others on ``port`` (free if not given;
        read it back from :attr:`port`): the first request waits until they have joined.
        """
        if sumocfg is None and net is None:
            raise ConfigError("a SUMO world needs a .sumocfg or a .net.xml")
        for path in (sumocfg, net, *routes):
            if path is not None and not path.is_file():
                raise ConfigError(f"SUMO input {path} does not exist")
        port = port or free_port()
        argv = [binary("sumo")]
        argv += ["-c", str(sumocfg)] if sumocfg is not None else ["-n", str(net)]
        if routes:
            argv += ["-r", ",".join(str(r) for r in routes)]
        argv += ["--step-length", str(step_s), "--seed", str(seed), "--no-step-log", "true"]
        argv += ["--remote-port", str(port), "--num-clients", str(clients), *extra_args]
        process = _SumoProcess(argv)
        try:
            world = cls._connect(TraciEndpoint("127.0.0.1", port, order), process)
            if clients == 1:
                world.time()  # SUMO loads its inputs after listening: fail here on a broken one
            return world
        except BaseException:
            process.stop()
            raise

    @classmethod
    def attach(cls, endpoint: TraciEndpoint) -> SumoWorld:
        """Join a SUMO that another program started with ``--num-clients``, as client ``endpoint.order``."""
        return cls._connect(endpoint, None)

    @classmethod
    def _connect(cls, endpoint: TraciEndpoint, process: _SumoProcess | None) -> SumoWorld:
        import traci
        from traci.exceptions import FatalTraCIError, TraCIException

        try:
            # traci prints each refused attempt while SUMO is still loading; keep that off stdout.
            with contextlib.redirect_stdout(io.StringIO()):
                conn = traci.connect(
                    port=endpoint.port,
                    host=endpoint.host,
                    numRetries=_CONNECT_RETRIES,
                    waitBetweenRetries=0.1,
                    proc=process.popen if process is not None else None,
                )
        except (FatalTraCIError, TraCIException, OSError) as exc:
            detail = process.said() if process is not None else ""
            raise TransportError(
                f"cannot reach SUMO over TraCI at {endpoint.host}:{endpoint.port}: {exc}{detail}"
            ) from exc
        log.info("connected to SUMO at %s:%s as client %s", endpoint.host, endpoint.port, endpoint.order)
        return cls(conn, process, endpoint.port, endpoint.order)

    def close(self) -> None:
        """Leave the simulation (and end SUMO if this world started it). Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(Exception):  # SUMO may already be gone; closing must not fail
            self._conn.close()
        if self._process is not None:
            self._process.stop(grace_s=_OTHERS_GRACE_S)

    def __enter__(self) -> SumoWorld:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- stepping ------------------------------------------------------------------------------

    @property
    def traci(self) -> Any:
        """The TraCI connection, for callers that need more than road users (tests, tools)."""
        return self._conn

    def time(self) -> float:
        """Simulated seconds now."""
        return float(self._call(self._conn.simulation.getTime))

    def expected_remaining(self) -> int:
        """Vehicles and persons running or still to depart; 0 when the demand is over."""
        return int(self._call(self._conn.simulation.getMinExpectedNumber))

    def step(self) -> WorldState:
        """Advance one step and return every road user."""
        self._call(self._conn.simulationStep)
        return self.state()

    def steps(self, count: int | None = None) -> Iterator[WorldState]:
        """``count`` steps (or until the demand is over)."""
        done = 0
        while count is None or done < count:
            state = self.step()  # first: other requests may wait until every client has joined
            done += 1
            yield state
            if count is None and self.expected_remaining() == 0:
                return

    def state(self) -> WorldState:
        """Every road user at the current step."""
        users = [*self._users("vehicle"), *self._users("person")]
        return WorldState(self.time(), tuple(users))

    def _users(self, kind: Kind) -> list[RoadUser]:
        import traci.constants as tc

        domain = self._conn.vehicle if kind == "vehicle" else self._conn.person
        ids = self._call(domain.getIDList)
        for uid in ids:
            if (kind, uid) not in self._statics:
                self._call(
                    domain.subscribe, uid, [tc.VAR_POSITION, tc.VAR_ANGLE, tc.VAR_SPEED, tc.VAR_LANE_ID]
                )
                self._statics[(kind, uid)] = (
                    str(self._call(domain.getVehicleClass, uid)),
                    float(self._call(domain.getLength, uid)),
                    float(self._call(domain.getWidth, uid)),
                    float(self._call(domain.getHeight, uid)),
                )
        live = set(ids)
        for key in [k for k in self._statics if k[0] == kind and k[1] not in live]:
            del self._statics[key]
        results = self._call(domain.getAllSubscriptionResults)
        users = []
        for uid in ids:
            values = results.get(uid)
            if not values:
                continue  # subscribed this step: its values arrive with the next one
            vclass, length, width, height = self._statics[(kind, uid)]
            x, y = values[tc.VAR_POSITION]
            users.append(
                RoadUser(
                    id=uid,
                    kind=kind,
                    vclass=vclass,
                    x=float(x),
                    y=float(y),
                    angle=float(values[tc.VAR_ANGLE]),
                    speed=float(values[tc.VAR_SPEED]),
                    length=length,
                    width=width,
                    height=height,
                    lane=str(values[tc.VAR_LANE_ID]),
                )
            )
        return users

    def _call(self, fn: Any, *args: Any) -> Any:
        from traci.exceptions import FatalTraCIError, TraCIException

        if self._closed:
            raise TransportError("the SUMO world is closed")
        try:
            if self._order is not None:
                self._conn.setOrder(self._order)
                self._order = None
            return fn(*args)
        except FatalTraCIError as exc:
            raise TransportError(
                f"SUMO closed the TraCI connection: {exc}{self._process.said() if self._process else ''}"
            ) from exc
        except TraCIException as exc:
            raise ConfigError(f"SUMO refused a TraCI request: {exc}") from exc


class _SumoProcess:
    """SUMO started here; its messages go to a file (a pipe nobody reads would fill and stall it)."""

    def __init__(self, argv: list[str]) -> None:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self._log)

    def said(self) -> str:
        """SUMO's last words, if it has exited."""
        if self._log.closed:
            return ""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=2.0)  # it closed the connection: let it finish its last words
        if self.popen.poll() is None:
            return ""
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()[-3:]
        return f" (SUMO said: {' | '.join(lines)})" if lines else ""

    def stop(self, grace_s: float = 0.0) -> None:
        if grace_s > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace_s)
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=_SHUTDOWN_WAIT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
