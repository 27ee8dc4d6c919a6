"""Who a device is, for ingest: its public keys by key id, and its site, cached by device.

The hub and each ingest worker process keep one. The site is learnt with the key (one
registry read per device and key), so storing a message costs no registry read.
"""

from __future__ import annotations

from typing import Protocol

from roadside.cloud.registry.records import DeviceRecord
from roadside.shared.keys import PublicKeys


class DeviceLookups(Protocol):
    """What the directory reads from the registry's devices repository."""

    def key(self, device_id: str, kid: str) -> tuple[str, PublicKeys] | None: ...

    def get(self, device_id: str) -> DeviceRecord | None: ...


class DeviceDirectory:
    def __init__(self, devices: DeviceLookups) -> None:
        self._devices = devices
        self._sites: dict[str, str] = {}

    def key(self, device_id: str, kid: str) -> PublicKeys | None:
        """The device's active key ``kid`` (a ``HubOpener`` lookup); ``None`` if unknown or revoked."""
        found = self._devices.key(device_id, kid)
        if found is None:
            return None
        self._sites[device_id] = found[0]
        return found[1]

    def site_of(self, device_id: str) -> str | None:
        site = self._sites.get(device_id)
        if site is None:
            device = self._devices.get(device_id)
            site = device.site if device is not None else None
        return site

    def knows(self, device_id: str) -> bool:
        """Whether a message of this device was opened since it was last forgotten."""
        return device_id in self._sites

    def forget(self, device_id: str) -> None:
        self._sites.pop(device_id, None)
