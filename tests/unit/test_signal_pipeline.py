"""Detector-zone changes leave the agent's pipeline as their own ``detector`` messages (issue 11, item 2).

The real pipeline (shipped detector on CPU, outbox, in-memory uplink) runs a
camera whose picture carries no detail: its zones fail at the first frame
(``bad_s`` 0) and the fault goes out at the detector priority, before the
camera's stream has even ended.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from roadside.edge.assembly import build_agent
from roadside.edge.outbox import Outbox, Priority
from roadside.edge.settings import SourceConfig, load_agent_settings
from roadside.edge.sources import FrameSource
from roadside.shared.bundle import BrokerAddress, EnrollmentBundle
from roadside.shared.keys import KeyPair
from roadside.shared.queues import Overflow
from roadside.shared.schemas import DetectorMessage, MovementsMessage, decode_uplink
from tests.unit.test_agent_assembly import InMemoryUplink, ScriptedCamera

pytestmark = pytest.mark.timeout(60)


def test_a_featureless_camera_fails_its_zones_in_one_detector_message(tmp_path: Path) -> None:
    settings = load_agent_settings(
        None,
        bundle=tmp_path / "bundle.json",
        sources=[{"type": "video", "name": "cam0", "uri": "scripted"}],
        outbox={"path": str(tmp_path / "outbox.db")},
        signals={
            "interval_s": 60,
            "cameras": {
                "cam0": {
                    "zones": [
                        {"name": "nb-stop-1", "polygon": [[0, 0], [100, 0], [100, 100]]},
                        {"name": "ped-ne", "kind": "pedestrian", "polygon": [[200, 0], [300, 0], [300, 100]]},
                    ],
                    "approaches": [
                        {"name": "north", "polygon": [[0, 0], [320, 0], [320, 50]]},
                        {"name": "south", "polygon": [[0, 200], [320, 200], [320, 240]]},
                    ],
                    "health": {"bad_s": 0.0},
                }
            },
        },
    )
    bundle = EnrollmentBundle(
        device_id="dev-sig",
        site="lab",
        broker=BrokerAddress(host="127.0.0.1", port=1),
        ca_cert_pem="unused",
        client_cert_pem="unused",
        client_key_pem="unused",
        device_keys=KeyPair.generate().to_json(),
        hub_keys=KeyPair.generate().public().to_json(),
    )
    links: list[InMemoryUplink] = []
    priorities: list[tuple[str, Priority]] = []

    def uplink(_b: EnrollmentBundle, outbox: Outbox, on_command: Callable[[bytes], None]) -> InMemoryUplink:
        put = outbox.put

        def recording_put(kind: str, payload: bytes, priority: Priority) -> int:
            priorities.append((kind, priority))
            return put(kind, payload, priority)

        outbox.put = recording_put  # type: ignore[method-assign]
        links.append(InMemoryUplink(outbox, on_command))
        return links[-1]

    def cameras(config: SourceConfig) -> FrameSource:
        return ScriptedCamera(config.name)

    agent = build_agent(settings, bundle, uplink=uplink, sources=cameras, frame_overflow=Overflow.BLOCK)
    agent.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and ("detector", Priority.DETECTOR) not in priorities:
            time.sleep(0.02)
        assert ("detector", Priority.DETECTOR) in priorities
        first_frames = agent.streams["cam0"].frames
    finally:
        agent.stop(drain_s=0.0)
    (link,) = links  # its stop drained the outbox
    detector = [decode_uplink(k, p) for k, p in link.sent if k == "detector"]
    assert isinstance(detector[0], DetectorMessage)
    assert [(r.zone, r.zone_kind, r.state, r.reason) for r in detector[0].records] == [
        ("nb-stop-1", "presence", "fault", "obscured"),
        ("ped-ne", "pedestrian", "fault", "obscured"),
    ]
    assert first_frames >= 1
    movements = [decode_uplink(k, p) for k, p in link.sent if k == "movements"]
    assert movements, "the open interval's zone statistics are sent at stop"
    assert isinstance(movements[-1], MovementsMessage)
    assert {z.zone for z in movements[-1].zones} == {"nb-stop-1", "ped-ne"}
