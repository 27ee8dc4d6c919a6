"""The face and plate models load only where images can leave the device (ADR 0023).

Each case builds the real agent in a fresh interpreter (``sys.modules`` there
is the agent's alone): an in-memory uplink, a scripted camera, the shipped
detector. With hard examples off (the default, images stay on the device)
neither the redactor's modules nor ``onnx`` are imported; with them on (which
the settings allow only with ``images_leave_device``) the worker builds the
redactor, face model included, when it starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fresh import last_json

pytestmark = pytest.mark.timeout(120)


_SCRIPT = """
import json, sys
from pathlib import Path

from roadside.edge.assembly import build_agent
from roadside.edge.settings import load_agent_settings
from roadside.shared.queues import Overflow
from tests.unit.test_agent_assembly import InMemoryUplink, ScriptedCamera, _bundle

work, enabled = Path(sys.argv[1]), sys.argv[2] == "on"
samples = {"enabled": True, "privacy": {"images_leave_device": True}} if enabled else {}
settings = load_agent_settings(
    None,
    bundle=work / "bundle.json",
    sources=[{"type": "video", "name": "cam0", "uri": "scripted"}],
    outbox={"path": str(work / "outbox.db")},
    samples=samples,
)
agent = build_agent(
    settings,
    _bundle(),
    uplink=lambda _b, outbox, on_command: InMemoryUplink(outbox, on_command),
    sources=lambda config: ScriptedCamera(config.name),
    frame_overflow=Overflow.BLOCK,
)
agent.start()
try:
    agent.sources_done(30)
    faces = None
    if agent.samples is not None:
        assert agent.samples.redactor_tried.wait(60)
        redactor = agent.samples.redactor
        faces = type(redactor._faces).__name__ if redactor is not None else "not built"
finally:
    agent.stop(drain_s=0.0)
heavy = ("onnx", "roadside.edge.privacy.redact", "roadside.edge.privacy.detectors", "torch")
loaded = [m for m in heavy if m in sys.modules]  # torch never, in any agent
print(json.dumps({"uploader": agent.samples is not None, "loaded": loaded, "faces": faces}))
"""


def _run_agent(tmp_path: Path, samples: str) -> dict[str, object]:
    result: dict[str, object] = last_json(_SCRIPT, str(tmp_path), samples)
    return result


def test_images_kept_on_the_device_never_load_the_privacy_models(tmp_path: Path) -> None:
    result = _run_agent(tmp_path, "off")
    assert result == {"uploader": False, "loaded": [], "faces": None}


def test_images_that_may_leave_the_device_load_the_privacy_models_first(tmp_path: Path) -> None:
    result = _run_agent(tmp_path, "on")
    assert result["uploader"] is True
    assert result["faces"] == "FaceDetector"
    loaded = result["loaded"]
    assert isinstance(loaded, list)
    assert set(loaded) == {"onnx", "roadside.edge.privacy.redact", "roadside.edge.privacy.detectors"}
