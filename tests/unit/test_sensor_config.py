"""Sensor settings inside the agent's settings: discriminated by ``type``, refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from roadside.edge.sensors import open_sensor_source
from roadside.edge.sensors.config import MqttSensorConfig, SerialSensorConfig, SyntheticSensorConfig
from roadside.edge.settings import load_agent_settings
from roadside.shared.errors import ConfigError


def test_each_type_selects_its_config_and_adapter(tmp_path: Path) -> None:
    settings = load_agent_settings(
        None,
        bundle=tmp_path / "bundle.json",
        sensors=[
            {"type": "synthetic", "name": "sim0"},
            {"type": "serial", "name": "aq0", "port": "/dev/serial/by-id/usb-aq", "protocol": "kv"},
            {
                "type": "mqtt",
                "name": "loop0",
                "topic": "controller/loops/#",
                "thresholds": [{"quantity": "occupancy", "level": 60, "clear": 45, "for_readings": 3}],
            },
        ],
    )
    kinds = [type(c) for c in settings.sensors]
    assert kinds == [SyntheticSensorConfig, SerialSensorConfig, MqttSensorConfig]
    sources = [open_sensor_source(c) for c in settings.sensors]  # nothing is opened until samples()
    assert [s.name for s in sources] == ["sim0", "aq0", "loop0"]
    assert load_agent_settings(None, bundle=tmp_path / "b.json").sensors == []


@pytest.mark.parametrize(
    ("sensor", "complaint"),
    [
        ({"type": "modbus", "name": "x"}, "type"),
        ({"type": "serial", "name": "aq0"}, "port"),
        ({"type": "synthetic", "name": "bad name"}, "name"),
        (
            {
                "type": "synthetic",
                "name": "s",
                "thresholds": [{"quantity": "pm25", "level": 50, "clear": 60}],
            },
            "clear",
        ),
        ({"type": "synthetic", "name": "s", "quality": {"ranges": {"pm25": [10, 0]}}}, "low < high"),
    ],
)
def test_bad_sensor_settings_fail_at_start(tmp_path: Path, sensor: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_agent_settings(None, bundle=tmp_path / "bundle.json", sensors=[sensor])
