"""Chaos: break a running Roadside on purpose and keep books on every record (issue 14)."""
