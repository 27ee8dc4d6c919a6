"""Durable on-disk queue between the pipeline and the broker."""

from roadside.edge.outbox.policy import DropPolicy, QueuedMessage, choose_drops
from roadside.edge.outbox.sqlite import Outbox, OutboxItem, Priority

__all__ = ["DropPolicy", "Outbox", "OutboxItem", "Priority", "QueuedMessage", "choose_drops"]
