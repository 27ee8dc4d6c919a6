"""The hub's datasets: hard examples from devices and label imports, as immutable versions."""

from cloud.dataset.store import AddReport, DatasetStore

__all__ = ["AddReport", "DatasetStore"]
