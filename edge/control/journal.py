"""The acks of recent commands, so a redelivered command gets its first ack again (idempotency)."""

from __future__ import annotations

import json
import logging
import uuid
from collections import OrderedDict
from pathlib import Path

from roadside.edge.control.files import write_private_atomic
from roadside.edge.settings import AgentSettings
from roadside.shared.schemas import AckMessage

log = logging.getLogger(__name__)


def default_journal_path(settings: AgentSettings) -> Path:
    """Acks of recent commands, beside the outbox (the agent's writable state)."""
    return settings.outbox.path.with_name(f"{settings.outbox.path.stem}.commands.json")


class AckJournal:
    """The acks of the last ``size`` commands, by id; persisted when ``path`` is given."""

    def __init__(self, path: Path | None = None, size: int = 256) -> None:
        self.path = path
        self.size = size
        self._acks: OrderedDict[uuid.UUID, AckMessage] = OrderedDict()
        if path is not None and path.is_file():
            try:
                for item in json.loads(path.read_text()):
                    ack = AckMessage.model_validate(item)
                    self._acks[ack.command_id] = ack
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable command journal %s: %s", path, exc)

    def get(self, command_id: uuid.UUID) -> AckMessage | None:
        return self._acks.get(command_id)

    def record(self, ack: AckMessage) -> None:
        self._acks[ack.command_id] = ack
        while len(self._acks) > self.size:
            self._acks.popitem(last=False)
        if self.path is None:
            return
        body = json.dumps([a.model_dump(mode="json", by_alias=True) for a in self._acks.values()])
        try:
            write_private_atomic(self.path, body.encode())
        except OSError as exc:
            log.warning("cannot persist the command journal %s: %s", self.path, exc)
