"""Hard examples through the real path (agent uplink → Mosquitto → hub → dataset inbox): a bomb is refused."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from roadside.edge.outbox import Outbox, Priority
from roadside.edge.transport.mqtt import MqttUplink
from roadside.shared.schemas import SamplesMessage, encode
from tests.e2e.conftest import Loop
from tests.e2e.test_loop import wait_for
from tests.unit.test_dataset_images import png_bomb
from tests.unit.test_dataset_store import example

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _counted(loop: Loop, result: str) -> float:
    value = loop.hub.metrics_registry.get_sample_value("roadside_dataset_samples_total", {"result": result})
    return value or 0.0


def test_a_decompression_bomb_in_a_samples_message_is_refused_from_its_header(
    loop: Loop, tmp_path: Path
) -> None:
    bundle = loop.enroll("cam-bomb-1")
    outbox = Outbox(tmp_path / "outbox.db")
    bomb = base64.b64encode(png_bomb(16000, 16000)).decode()  # 31 KB on the wire, 768 MB decoded
    for record in (example(1, image_jpeg_b64=bomb), example(2)):  # the bomb, then a good one
        outbox.put("samples", encode(SamplesMessage(records=[record])), Priority.SAMPLES)
    uplink = MqttUplink(bundle, outbox, lambda _raw: None, scratch_dir=tmp_path)
    uplink.start()
    try:
        assert wait_for(lambda: _counted(loop, "added") == 1, timeout=30), loop.hub.datasets.counts
    finally:
        uplink.stop()
    assert _counted(loop, "rejected_too_large") == 1
    pending = loop.hub.datasets.pending()
    assert [s.origin.device_id for s in pending] == ["cam-bomb-1"]  # the good sample after it
    assert (pending[0].width, pending[0].height) == (64, 48)
