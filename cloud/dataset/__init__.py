"""The hub's datasets: hard examples from devices and label imports, as immutable versions."""

from roadside.cloud.dataset.store import AddReport, DatasetStore

__all__ = ["AddReport", "DatasetStore"]
