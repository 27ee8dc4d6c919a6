"""End to end: SUMO's cameras → agent → sealed MQTT → broker → hub → call stream → controller → SUMO.

Real processes throughout (SUMO, Mosquitto, the hub, the agent in its own
process); nothing of SUMO's state reaches the controller but the cameras'
detector zones. SUMO runs as fast as the cameras draw (not paced on the wall
clock), so the run is short in wall time too.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

pytest.importorskip("traci")

from roadside.sim.signal_loop import HubSite, run_loop
from roadside.sim.signal_ways import Network
from roadside.sim.sumo.scenarios import build_scenario
from tests.e2e.rig import Rig

DEMAND_S = 12.0
RUN_S = 55.0
CLEAR_S = 30.0  # a vehicle that entered this long before the end has had time to be served and leave


@pytest.mark.slow
def test_the_roadside_fed_controller_runs_sumo_safely_and_serves_every_vehicle(
    rig: Rig, tmp_path: Path
) -> None:
    scenario = build_scenario("intersection", tmp_path / "scenario", seed=3, duration_s=DEMAND_S)
    network = Network(scenario.sumocfg, scenario.net, scenario.junction, scenario.poses, tmp_path / "run")
    figures = run_loop(network, RUN_S, seed=3, realtime=False, fps=5.0, site=HubSite(rig.home, rig.broker))
    way, loop = figures["way"], figures["roadside_loop"]
    assert loop["tripped"] is None
    assert way.conflicting_greens == 0  # read back from SUMO every tick
    assert loop["calls"]["calls"] > 0, "no detector call came through the hub"
    assert loop["events_posted"]["posted"] > 0
    assert loop["events_posted"]["refused"] == 0
    assert way.events[1] >= 2  # more than one phase came up green
    trips = ET.parse(tmp_path / "run" / "roadside" / "tripinfo.xml").getroot().iter("tripinfo")  # noqa: S314
    due = [t for t in trips if float(t.get("depart", "0")) <= RUN_S - CLEAR_S]
    assert len(due) >= 3
    stranded = [t.get("id") for t in due if float(t.get("arrival", "-1")) < 0]
    assert not stranded, f"vehicles never served: {stranded}"
