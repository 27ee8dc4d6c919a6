"""Privacy on the device: faces and plates blurred, polygon masks filled, before any image leaves."""

from roadside.edge.privacy.redact import PrivacyConfig, RedactionReport, Redactor

__all__ = ["PrivacyConfig", "RedactionReport", "Redactor"]
