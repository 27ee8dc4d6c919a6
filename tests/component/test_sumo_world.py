"""The SUMO world against real SUMO processes: scenarios, TraCI clients, cameras, the ``sumo`` source.

Every test runs the ``sumo`` binary from the ``eclipse-sumo`` wheel headless on
a free loopback port; nothing of SUMO is mocked. The two scenarios are
generated once per module into a temporary folder (about a second).
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from roadside.edge.settings import SumoAttach, SumoSource
from roadside.edge.sources import open_source
from roadside.shared.errors import ConfigError, TransportError
from roadside.sim.sumo.poses import approach_cameras, junction_approaches, load_pose_file
from roadside.sim.sumo.render import DETECTOR_CLASSES, Renderer, RoadGeometry, detector_class
from roadside.sim.sumo.scenarios import Scenario, build_scenario
from roadside.sim.sumo.source import SumoFrameSource
from roadside.sim.sumo.tools import SumoToolError, run_tool
from roadside.sim.sumo.world import SumoWorld, TraciEndpoint, WorldState
from roadside.vision.calibration import Camera

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Scenario]:
    folder = tmp_path_factory.mktemp("sumo")
    return {
        name: build_scenario(name, folder, seed=42, duration_s=600) for name in ("intersection", "arterial")
    }


def cameras_of(scenario: Scenario) -> dict[str, Camera]:
    return {c.name: Camera.from_calibration(c.calibration) for c in load_pose_file(scenario.poses).cameras}


def test_scenarios_are_generated_identically_from_a_seed(
    scenarios: dict[str, Scenario], tmp_path: Path
) -> None:
    first = scenarios["intersection"]
    again = build_scenario("intersection", tmp_path / "again", seed=42, duration_s=600)
    for a, b in ((first.net, again.net), (first.routes, again.routes), (first.poses, again.poses)):
        assert a.read_bytes() == b.read_bytes(), a.name
    other = build_scenario("intersection", tmp_path / "other", seed=7, duration_s=600)
    assert other.routes.read_bytes() != first.routes.read_bytes()


def test_scenarios_have_their_movements_and_a_camera_per_approach(scenarios: dict[str, Scenario]) -> None:
    four, tee = scenarios["intersection"], scenarios["arterial"]
    assert sorted(m.turn for m in four.movements) == ["left"] * 4 + ["right"] * 4 + ["through"] * 4
    assert {m.turn for m in tee.movements} == {"left", "right", "through"}
    routes = four.routes.read_text()
    for m in four.movements:
        assert f'edges="{m.entry} {m.exit}"' in routes, m
    assert "<person" in routes
    assert "<walk" in routes
    for scenario, legs in ((four, 4), (tee, 3)):
        poses = load_pose_file(scenario.poses)
        assert len(poses.cameras) == legs
        assert {c.approach for c in poses.cameras} == {a.edge for a in junction_approaches(scenario.net, "C")}


def test_each_camera_sees_its_approach_from_the_stop_line_upstream(scenarios: dict[str, Scenario]) -> None:
    for scenario in scenarios.values():
        cams = cameras_of(scenario)
        for approach in junction_approaches(scenario.net, "C"):
            cam = cams[approach.edge]
            (sx, sy), (dx, dy) = approach.stop_line, approach.direction
            for upstream in (0.0, 20.0, 60.0):
                u, v = cam.road_to_image([[sx - dx * upstream, sy - dy * upstream]])[0]
                assert 0 <= u < cam.width, (approach.edge, upstream)
                assert cam.horizon_v() < v < cam.height, (approach.edge, upstream)


def test_scenario_runs_with_vehicles_of_every_kind_and_walkers(scenarios: dict[str, Scenario]) -> None:
    seen: dict[str, set[str]] = {}
    with SumoWorld.start(scenarios["intersection"].sumocfg) as world:
        for state in world.steps(900):
            for user in state.users:
                seen.setdefault(user.vclass, set()).add(user.id)
        assert world.time() == pytest.approx(90.0)
    assert len(seen.get("passenger", ())) >= 20
    assert seen.get("pedestrian"), "no person walked"
    assert len(seen) >= 4, sorted(seen)  # cars, walkers and at least two other classes in 90 s


def test_a_sumo_vehicle_lands_inside_its_rendered_box(scenarios: dict[str, Scenario]) -> None:
    scenario = scenarios["intersection"]
    road = RoadGeometry.from_net(scenario.net)
    renderers = {name: Renderer(cam, road, "day") for name, cam in cameras_of(scenario).items()}
    empty = {name: r.render(WorldState(0.0, ())).image.astype(np.int16) for name, r in renderers.items()}
    checked = 0
    with SumoWorld.start(scenario.sumocfg) as world:
        for state in world.steps(600):
            if round(state.time * 10) % 100:
                continue
            for name, renderer in renderers.items():
                frame = renderer.render(state)
                for obj in frame.truth:
                    x1, y1, x2, y2 = obj.box
                    cut = x1 <= 0 or y1 <= 0 or x2 >= frame.image.shape[1] or y2 >= frame.image.shape[0]
                    if obj.visible < 0.5 or obj.shape == "person" or cut:
                        continue  # hidden, too thin to hit with a point, or partly out of the frame
                    # SUMO's own answer, asked afresh: the front bumper and the vehicle's length.
                    x, y = world.traci.vehicle.getPosition(obj.id)
                    angle = math.radians(world.traci.vehicle.getAngle(obj.id))
                    half = world.traci.vehicle.getLength(obj.id) / 2.0
                    middle = (x - math.sin(angle) * half, y - math.cos(angle) * half)
                    u, v = renderer.camera.road_to_image([middle])[0]
                    assert x1 <= u <= x2, (obj.id, (u, v), obj.box)
                    assert y1 <= v <= y2, (obj.id, (u, v), obj.box)
                    # ...and something was drawn there.
                    patch = frame.image[int(y1) : int(y2) + 1, int(x1) : int(x2) + 1].astype(np.int16)
                    base = empty[name][int(y1) : int(y2) + 1, int(x1) : int(x2) + 1]
                    assert np.abs(patch - base).max() > 40, obj.id
                    checked += 1
    assert checked >= 20


def test_a_second_client_steps_in_lock_step(scenarios: dict[str, Scenario]) -> None:
    """The camera's world and a controller share one SUMO: it waits for both before each step."""
    with SumoWorld.start(scenarios["arterial"].sumocfg, clients=2, order=1) as camera:
        seen: list[tuple[float, int]] = []

        def controller() -> None:
            with SumoWorld.attach(TraciEndpoint("127.0.0.1", camera.port, order=2)) as other:
                for _ in range(50):
                    state = other.step()
                    seen.append((state.time, len(state.users)))

        thread = threading.Thread(target=controller, name="second-traci-client")
        thread.start()
        mine = [(s.time, len(s.users)) for s in camera.steps(50)]
    # SUMO answers the controller's last step once the camera has left (or asked for another).
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert mine == seen
    assert mine[-1][0] == pytest.approx(5.0)


def test_the_sumo_source_yields_frames_through_open_source(
    scenarios: dict[str, Scenario], tmp_path: Path
) -> None:
    scenario = scenarios["intersection"]
    truth_file = tmp_path / "truth.jsonl"
    config = SumoSource(
        name="n_in",
        sumocfg=scenario.sumocfg,
        pose_file=scenario.poses,
        fps=5.0,
        realtime=False,
        warmup_s=40.0,
        max_frames=12,
        truth_file=truth_file,
        conditions="dusk",
    )
    source = open_source(config)
    assert isinstance(source, SumoFrameSource)
    frames = list(source.frames())
    assert [f.index for f in frames] == list(range(12))
    assert {f.image.shape for f in frames} == {(480, 640, 3)}
    assert np.diff([f.ts for f in frames]) == pytest.approx([0.2] * 11)
    records = [json.loads(line) for line in truth_file.read_text().splitlines()]
    assert [r["sim_time"] for r in records] == pytest.approx([40.2 + 0.2 * k for k in range(12)])
    labelled = [o for r in records for o in r["objects"] if o["label"] is not None and o["visible"] >= 0.3]
    assert labelled, "the north camera saw nobody in 40 s of traffic"
    for frame in frames:
        assert frame.truth is not None
        assert {label for label, _ in frame.truth} <= set(DETECTOR_CLASSES)
    source.close()


def test_another_network_with_generated_poses_and_net_plus_routes(tmp_path: Path) -> None:
    """Nothing is tuned to our scenarios: a network SUMO builds itself, poses made for it."""
    run_tool(
        "netgenerate",
        ["--grid", "--grid.number", "3", "--grid.length", "120", "--default.lanenumber", "2",
         "--tls.guess", "true", "--seed", "3", "--output-file", "grid.net.xml"],
        tmp_path,
    )  # fmt: skip
    net = tmp_path / "grid.net.xml"
    _write_trips(tmp_path / "trips.xml")
    run_tool(
        "duarouter",
        ["--net-file", "grid.net.xml", "--route-files", "trips.xml", "--output-file", "grid.rou.xml"],
        tmp_path,
    )
    cams = approach_cameras(net, "B1")
    assert len(cams) == 4
    config = SumoSource(
        name="grid", net=net, routes=[tmp_path / "grid.rou.xml"], camera=cams[0].calibration,
        realtime=False, fps=2.0,
    )  # fmt: skip
    frames = list(open_source(config).frames())  # no max_frames: until the demand is over
    assert 10 < len(frames) < 300  # 20 s of departures, then at most two minutes to leave the grid
    assert any(f.truth for f in frames), "no vehicle drawn on the grid's camera"


def _write_trips(path: Path) -> None:
    # Vehicles through junction B1 from every side of it, one every two seconds for 20 s.
    flows = [("A1B1", "B1C1"), ("C1B1", "B1A1"), ("B0B1", "B1B2"), ("B2B1", "B1B0")]
    body = "".join(
        f'<flow id="f{i}" from="{a}" to="{b}" begin="0" end="20" period="2" departSpeed="max"/>'
        for i, (a, b) in enumerate(flows)
    )
    path.write_text(f"<routes>{body}</routes>")


def test_bad_sumo_inputs_are_refused_clearly(scenarios: dict[str, Scenario], tmp_path: Path) -> None:
    scenario = scenarios["arterial"]
    with pytest.raises(ValidationError, match="exactly one of sumocfg and net"):
        SumoSource(sumocfg=scenario.sumocfg, net=scenario.net, pose_file=scenario.poses)
    with pytest.raises(ValidationError, match="exactly one of camera"):
        SumoSource(sumocfg=scenario.sumocfg)
    with pytest.raises(ValidationError, match="more than one frame per SUMO step"):
        SumoSource(sumocfg=scenario.sumocfg, pose_file=scenario.poses, fps=20.0)
    with pytest.raises(ValidationError, match="attach joins one"):
        SumoSource(sumocfg=scenario.sumocfg, pose_file=scenario.poses, clients=2, attach=SumoAttach(port=9))
    with pytest.raises(ConfigError, match="no camera 'cam0' in the pose file"):
        SumoFrameSource(SumoSource(name="cam0", sumocfg=scenario.sumocfg, pose_file=scenario.poses))
    with pytest.raises(ConfigError, match="unknown SUMO scenario"):
        build_scenario("roundabout", tmp_path)
    broken = tmp_path / "broken.net.xml"
    broken.write_text(
        '<net version="1.20"><edge id="x" from="a" to="b">'
        '<lane id="x_0" index="0" speed="1" length="10" shape="0,0 10,0"/></edge></net>'
    )
    with pytest.raises(TransportError, match="Unknown from-node 'a'"):
        SumoWorld.start(net=broken)  # SUMO's own words come through
    with pytest.raises(SumoToolError, match="duarouter failed"):
        run_tool("duarouter", ["--net-file", str(broken), "--output-file", "x.xml"], tmp_path)
    bad_poses = tmp_path / "poses.json"
    bad_poses.write_text(json.dumps({"cameras": [{"name": "a", "calibration": {"type": "pose", "x": 0}}]}))
    with pytest.raises(ConfigError, match=r"calibration\.pose\.y"):
        load_pose_file(bad_poses)


def test_vclasses_map_onto_the_shipped_detector_classes() -> None:
    assert detector_class("passenger") == "car"
    assert detector_class("truck") == detector_class("trailer") == detector_class("bus") == "truck"
    assert detector_class("motorcycle") == detector_class("bicycle") == "cyclist"
    assert detector_class("pedestrian") == "pedestrian"
    assert detector_class("tram") is None
