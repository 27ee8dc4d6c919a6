"""Durable on-disk queue between the pipeline and the broker."""

from edge.outbox.sqlite import DropPolicy, Outbox, OutboxItem, Priority

__all__ = ["DropPolicy", "Outbox", "OutboxItem", "Priority"]
