"""Hard examples end to end: a real agent on the synthetic camera → Mosquitto → hub → dataset v1."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from roadside.cli import build
from roadside.edge.agent import Agent
from roadside.edge.settings import load_agent_settings
from tests.e2e.conftest import Loop
from tests.e2e.test_loop import wait_for

pytestmark = pytest.mark.slow

MASK = [(0.0, 0.0), (120.0, 0.0), (120.0, 60.0), (0.0, 60.0)]  # e.g. a window of a home


def test_agent_sends_redacted_labelled_samples_and_commit_makes_v1(loop: Loop, tmp_path: Path) -> None:
    bundle = loop.enroll("cam-hard-1")
    settings = load_agent_settings(
        None,
        bundle=tmp_path / "unused.json",
        sources=[{"type": "synthetic", "name": "cam0", "seed": 5, "realtime": False, "max_frames": 200}],
        interval_s=5,
        outbox={"path": str(tmp_path / "outbox.db")},
        samples={
            "enabled": True,
            "min_interval_s": 2.0,  # frame time: the synthetic camera runs at 10 fps
            "confidence_band": (0.4, 0.8),
            "privacy": {"images_leave_device": True, "masks": [MASK]},
        },
    )
    agent = Agent.from_settings(settings, bundle)
    agent.start()
    try:
        assert agent.sources_done(timeout=60)
        assert agent.samples is not None
        assert wait_for(lambda: agent.samples is not None and agent.samples.stats["sent"] >= 3, timeout=20)
    finally:
        agent.stop()
    sent = agent.samples.stats["sent"]
    assert sent <= 10  # 20 s of frames, one sample per 2 s at most
    store = loop.hub.datasets
    assert wait_for(lambda: len(store.pending()) == sent, timeout=15), (
        dict(agent.samples.stats),
        store.counts,
    )

    pending = store.pending()
    for sample in pending:
        assert sample.origin.device_id == "cam-hard-1"
        assert sample.origin.reasons
        assert sample.labels is not None
        assert sample.labels
        for box in sample.labels:
            x1, y1, x2, y2 = box.box
            assert 0 <= x1 < x2 <= sample.width
            assert 0 <= y1 < y2 <= sample.height
        image = cv2.imread(str(store.object_path(sample)))
        assert image is not None
        assert image.shape[:2] == (sample.height, sample.width)
        assert image[5:55, 5:115].max() < 20  # redacted on the device before it was encoded
        assert image[200:, :].std() > 5  # the rest is the street

    # Labels from the field wait for a person (docs/retraining-trust.md): nothing labelled to commit yet.
    home = ["--home", str(loop.home.root)]
    refused = CliRunner().invoke(build(), ["dataset", "commit", *home])
    assert refused.exit_code == 2
    assert f"{sent} labelled sample(s) wait for review" in refused.output
    approved = CliRunner().invoke(build(), ["dataset", "review", "approve", "--device", "cam-hard-1", *home])
    assert approved.exit_code == 0, approved.output
    result = CliRunner().invoke(build(), ["dataset", "commit", *home, "--note", "e2e", "--json"])
    assert result.exit_code == 0, result.output
    v1 = json.loads(result.output)
    assert (v1["version"], v1["samples"], v1["labelled"], v1["note"]) == (1, sent, sent, "e2e")
    assert set(v1["classes"]) <= {"car", "truck", "pedestrian", "cyclist"}
    assert store.manifest(1).digest() == v1["digest"]
    assert store.pending() == []
    # What the hub counted, on its own metrics registry.
    added = loop.hub.metrics_registry.get_sample_value("roadside_dataset_samples_total", {"result": "added"})
    assert added == sent
