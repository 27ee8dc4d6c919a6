"""Commands from the wire to the one command thread, and their acks into the outbox.

The MQTT network thread only verifies (:class:`~roadside.edge.control.verifier.CommandVerifier`)
and queues; a slow command (a stream that takes seconds to open, a model
install) runs on the ``commands`` thread. The queue is bounded and refuses the
newest command when full (``REFUSE_NEWEST``): the hub resends what it has no
ack for, and handling is idempotent by command id. Stop: a sentinel.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Final, Protocol

from roadside.edge.control.keys import KeyState
from roadside.edge.control.verifier import CommandVerifier, InvalidCommandError
from roadside.edge.outbox import Priority
from roadside.shared.errors import IntegrityError, SchemaError
from roadside.shared.schemas import AckMessage, Command, encode

log = logging.getLogger(__name__)

QUEUE_SIZE: Final = 64
_STOP: Final = object()


class CommandRunner(Protocol):
    """What answers a command (``roadside.edge.control.handler.CommandHandler``)."""

    def handle(self, command: Command) -> AckMessage: ...

    def invalid(self, error: InvalidCommandError) -> AckMessage | None: ...


class AckSink(Protocol):
    def put(self, kind: str, payload: bytes, priority: Priority) -> int: ...


class CommandIntake:
    """Verify on the network thread, run on the command thread, ack through ``sink``."""

    def __init__(
        self,
        verifier: CommandVerifier,
        sink: AckSink,
        clock: Callable[[], float],
        runner: CommandRunner | None = None,
    ) -> None:
        """``runner`` may be given later (:meth:`start`): it usually needs the running agent."""
        self.verifier = verifier
        self.runner = runner
        self._sink = sink
        self._clock = clock
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread: threading.Thread | None = None

    def use_keys(self, keys: KeyState) -> None:
        """Accept commands sealed to any key in ``keys`` (a rotation in progress has two)."""
        self.verifier.set_keys(keys.all())

    def pending(self) -> int:
        """Commands waiting for the command thread."""
        return self._queue.qsize()

    def on_wire(self, wire: bytes) -> None:
        """Runs on the MQTT network thread: verify, then queue for the command thread."""
        item: Command | InvalidCommandError
        try:
            item = self.verifier.open(wire, int(self._clock() * 1000))
        except InvalidCommandError as exc:
            log.warning("refused an invalid command %s: %s", exc.command_id, exc)
            item = exc
        except (IntegrityError, SchemaError) as exc:
            log.warning("refused a command: %s (%s)", exc, exc.reason)
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            log.warning("command queue full: dropped a command; the hub resends it")

    def start(self) -> None:
        thread = threading.Thread(target=self._run, name="commands", daemon=True)
        thread.start()
        self._thread = thread

    def stop(self) -> None:
        """Finish the queued commands, then end the thread."""
        self._queue.put(_STOP)  # blocks only while full; the command thread is draining it
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        """The command thread: one command at a time, each answered through the sink."""
        runner = self.runner
        if runner is None:
            raise RuntimeError("CommandIntake started without a runner")
        while (item := self._queue.get()) is not _STOP:
            ack: AckMessage | None
            if isinstance(item, Command):
                ack = runner.handle(item)
            elif isinstance(item, InvalidCommandError):
                ack = runner.invalid(item)
            else:
                continue
            if ack is not None:
                self._sink.put("ack", encode(ack), Priority.ACK)
