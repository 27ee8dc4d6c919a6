"""The controller drives a real SUMO traffic light (no mocks): never two conflicting greens, everyone served."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("traci")

from roadside.shared.errors import ConfigError
from roadside.signalcontrol.sumo import derive_phase_map
from roadside.sim.signal_ways import Network, run_way, write_actuated_program
from roadside.sim.sumo.scenarios import build_scenario


@pytest.fixture(scope="module")
def short_scenario(tmp_path_factory: pytest.TempPathFactory) -> Network:
    folder = tmp_path_factory.mktemp("signal")
    scenario = build_scenario("intersection", folder / "scenario", seed=7, duration_s=60.0, demand_scale=1.5)
    return Network(scenario.sumocfg, scenario.net, scenario.junction, scenario.poses, folder)


def test_the_phase_map_pairs_opposite_approaches_and_walks_crossings_beside_their_traffic(
    short_scenario: Network,
) -> None:
    phase_map = derive_phase_map(short_scenario.net, "C")
    assert phase_map.phases == {2, 4, 6, 8}
    by_phase = {p: sorted(lanes) for p, lanes in phase_map.approaches.items()}
    # the two streets are a pair each: 2/6 one street, 4/8 the other
    streets = {
        frozenset(lane.split("_")[0] for lane in by_phase[a] + by_phase[b]) for a, b in ((2, 6), (4, 8))
    }
    assert streets == {frozenset({"e", "w"}), frozenset({"n", "s"})}
    for phase, crossings in phase_map.crossings.items():
        # a crossing over a leg of one street walks with the other street's traffic
        crossed_leg = {"c0": "n", "c1": "e", "c2": "s", "c3": "w"}[crossings[0].split("_")[-1]]
        assert crossed_leg not in {lane.split("_")[0] for lane in by_phase[phase]}


def test_the_controller_drives_sumo_without_conflicts_and_serves_every_vehicle(
    short_scenario: Network,
) -> None:
    # 60 s of demand, then until the last vehicle and walker have left (SUMO's own count)
    result = run_way("roadside_direct", short_scenario, duration_s=60.0, seed=7, until_empty_s=900.0)
    assert result.conflicting_greens == 0
    assert result.vehicles > 30
    assert result.arrived == result.vehicles, "a vehicle was still in the network: never served"
    assert result.ped_arrived == result.persons
    assert result.events[1] > 4  # phases came up (begin green)
    assert result.events[21] >= 1  # and someone got a walk


def test_a_network_without_the_traffic_light_is_refused(short_scenario: Network, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no traffic light 'nope'"):
        derive_phase_map(short_scenario.net, "nope")
    with pytest.raises(ConfigError, match="no program"):
        write_actuated_program(short_scenario.net, "nope", tmp_path / "a.add.xml")


def _signal_run(tmp_path: Path, net: Path, *extra: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from roadside.signalcontrol.cli import app

    args = ["run", "--signal", "s1", "--hub", "http://127.0.0.1:9", "--net", str(net), "--tls", "C"]
    args += ["--sumo-port", "9", *extra]
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


def test_signal_run_refuses_a_missing_token_file_and_unsafe_or_malformed_timing(
    short_scenario: Network, tmp_path: Path
) -> None:
    code, said = _signal_run(tmp_path, short_scenario.net, "--token-file", str(tmp_path / "nope.key"))
    assert code == 2
    assert "cannot read the file" in said
    assert "the API key" in said
    token = tmp_path / "c.key"
    token.write_text("rs_test\n")
    unsafe = tmp_path / "unsafe.json"
    unsafe.write_text('{"default": {"yellow": 2.0}}')
    code, said = _signal_run(
        tmp_path, short_scenario.net, "--token-file", str(token), "--timing", str(unsafe)
    )
    assert code == 2
    assert "yellow below 3 s" in said
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"default": {}, "rings": 2}')
    code, said = _signal_run(
        tmp_path, short_scenario.net, "--token-file", str(token), "--timing", str(malformed)
    )
    assert code == 2
    assert "controller timing file" in said
