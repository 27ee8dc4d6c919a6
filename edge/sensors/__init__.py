"""Roadside sensors: air quality, loop detectors, noise, behind one ``SensorSource`` interface.

Adapters are chosen by the ``type`` of their config and imported only when
used, so a device without pyserial or paho can still run the others.
"""

from __future__ import annotations

from roadside.edge.sensors.base import SensorSample, SensorSource
from roadside.edge.sensors.config import (
    AirSerialSensorConfig,
    AlphasenseSensorConfig,
    MqttSensorConfig,
    SensorConfig,
    SerialSensorConfig,
    Sht3xSensorConfig,
    SyntheticSensorConfig,
)


def open_sensor_source(config: SensorConfig) -> SensorSource:
    """The registered adapter for ``config.type``."""
    if isinstance(config, SyntheticSensorConfig):
        from roadside.edge.sensors.synthetic import SyntheticSensorSource

        return SyntheticSensorSource(config)
    if isinstance(config, SerialSensorConfig):
        from roadside.edge.sensors.serial import SerialSensorSource

        return SerialSensorSource(config)
    if isinstance(config, MqttSensorConfig):
        from roadside.edge.sensors.mqtt_local import LocalMqttSensorSource

        return LocalMqttSensorSource(config)
    if isinstance(config, AirSerialSensorConfig):
        from roadside.edge.sensors.air.reader import AirSerialSource

        return AirSerialSource(config)
    if isinstance(config, AlphasenseSensorConfig):
        from roadside.edge.sensors.air.reader import AlphasenseSource, LinuxI2CBus

        return AlphasenseSource(config, LinuxI2CBus(config.i2c_bus))
    if isinstance(config, Sht3xSensorConfig):
        from roadside.edge.sensors.air.reader import LinuxI2CBus, Sht3xSource

        return Sht3xSource(config, LinuxI2CBus(config.i2c_bus))
    raise AssertionError(f"unregistered sensor type {config!r}")


__all__ = ["SensorConfig", "SensorSample", "SensorSource", "open_sensor_source"]
