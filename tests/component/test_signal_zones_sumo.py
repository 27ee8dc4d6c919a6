"""Virtual stop-bar zones against SUMO's own E2 detectors on the same stretch (issue 11, item 2).

A real SUMO run of the generated intersection with an E2 (lane-area)
detector over the last 30 m of each vehicle lane of one approach, and the
same stretches drawn as ``presence`` zones in road metres for the camera that
faces that approach. Each 0.1 s step every vehicle's image box comes from the
camera calibration (its 3-D prism, as the renderer draws it; no detector, so
this judges the zone geometry and the projection, not the model), its anchor
goes through the zone bank, and the zone's on/off is compared with whether
SUMO's E2 has a vehicle on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("traci")

from roadside.edge.analytics.detectors import CameraDetectors, DetectorZoneConfig, Occupant, ZoneBank
from roadside.edge.analytics.geometry import anchor_point
from roadside.sim.sumo.poses import load_pose_file
from roadside.sim.sumo.scenarios import build_scenario
from roadside.sim.sumo.world import SumoWorld
from roadside.vision.calibration import Camera

pytestmark = pytest.mark.timeout(120)

STRETCH_M = 30.0
LANES = ("e_in_1", "e_in_2")


def stretch_polygon(
    shape: list[tuple[float, float]], width: float, length_m: float
) -> list[tuple[float, float]]:
    """The last ``length_m`` of a straight lane as a road-metre rectangle ``width`` wide."""
    (x0, y0), (x1, y1) = shape[-2], shape[-1]
    along = np.array([x1 - x0, y1 - y0]) / np.hypot(x1 - x0, y1 - y0)
    across = np.array([-along[1], along[0]]) * width / 2.0
    end = np.array([x1, y1])
    start = end - along * length_m
    return [tuple(float(v) for v in p) for p in (start - across, start + across, end + across, end - across)]  # type: ignore[misc]


def test_stopbar_zones_agree_with_sumo_e2_detectors(tmp_path: Path) -> None:
    import sumolib

    scenario = build_scenario(
        "intersection", tmp_path / "scenario", seed=7, duration_s=60.0, demand_scale=1.5
    )
    net = sumolib.net.readNet(str(scenario.net))
    pose = next(c for c in load_pose_file(scenario.poses).cameras if c.approach == "e_in")
    camera = Camera.from_calibration(pose.calibration)
    zones, detectors = [], []
    for lane_id in LANES:
        lane = net.getLane(lane_id)
        zones.append(
            DetectorZoneConfig(
                name=lane_id,
                space="road",
                polygon=stretch_polygon(lane.getShape(), lane.getWidth(), STRETCH_M),
            )
        )
        detectors.append(
            f'<laneAreaDetector id="{lane_id}" lane="{lane_id}" pos="{lane.getLength() - STRETCH_M:.2f}" '
            f'endPos="{lane.getLength():.2f}" period="60" file="{tmp_path / "e2.xml"}"/>'
        )
    additional = tmp_path / "e2.add.xml"
    additional.write_text("<additional>\n" + "\n".join(detectors) + "\n</additional>\n")
    bank = ZoneBank(CameraDetectors(calibration=pose.calibration, zones=zones, vehicle_classes=["passenger", "truck",
                                                                                                 "bus", "motorcycle"]))  # fmt: skip
    ids: dict[str, int] = {}
    agree = total = on_samples = changes = 0
    with SumoWorld.start(scenario.sumocfg, extra_args=["--additional-files", str(additional)]) as world:
        for state in world.steps(600):
            occupants = []
            for user in state.users:
                if user.kind != "vehicle":
                    continue
                box = camera.box_of(user.footprint(), user.height)
                if box is None:
                    continue
                track = ids.setdefault(user.id, len(ids))
                occupants.append(Occupant(track, user.vclass, anchor_point(box, "bottom_center")))
            changes += len(bank.update(state.time, occupants))
            zone_on = bank.state()
            for lane_id in LANES:
                e2_on = world.traci.lanearea.getLastStepVehicleNumber(lane_id) > 0
                agree += int(zone_on[lane_id] == e2_on)
                on_samples += int(e2_on)
                total += 1
    assert on_samples > 100, "the E2 detectors saw too little traffic for the comparison to mean anything"
    assert changes >= 4  # on and off, in both lanes
    agreement = agree / total
    assert agreement >= 0.95, f"agreement {agreement:.3f} over {total} samples, {on_samples} occupied"
