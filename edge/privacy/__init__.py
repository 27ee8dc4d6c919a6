"""Privacy on the device: faces and plates blurred, polygon masks filled, before any image leaves.

:class:`PrivacyConfig` is light. :class:`Redactor` (and the face and plate models behind it)
is imported on first use only: an agent whose images never leave the device never loads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from roadside.edge.privacy.config import PrivacyConfig

if TYPE_CHECKING:
    from roadside.edge.privacy.redact import RedactionReport, Redactor

__all__ = ["PrivacyConfig", "RedactionReport", "Redactor"]


def __getattr__(name: str) -> object:
    if name in ("RedactionReport", "Redactor"):
        from roadside.edge.privacy import redact

        return getattr(redact, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
