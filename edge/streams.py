"""Stream supervision: one named reader thread per stream, streams added and removed at run time.

Readers put frames into the pipeline's bounded queue through the
:class:`~roadside.edge.health.FrameLedger` (which counts them per stream). A stream
added at run time must show its first frame within ``FIRST_FRAME_WAIT_S`` or
a reader error fails the command; a stream removed is forgotten only once
every frame it queued has been processed (the pipeline then sends its open
interval). Lists and dicts are replaced, never mutated, so the pipeline and
health readers always see a consistent one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from roadside.edge.control.redaction import redact
from roadside.edge.control.streams import check_new_stream
from roadside.edge.health import FrameLedger, StreamReader
from roadside.edge.pipeline import PipelineTask
from roadside.edge.settings import SourceConfig
from roadside.edge.sources import FrameSource
from roadside.shared.errors import ConfigError, TransportError

log = logging.getLogger(__name__)

FIRST_FRAME_WAIT_S = 5.0  # add_stream waits this long for a new stream's first frame
RETIRE_WAIT_S = 30.0  # remove_stream waits this long for the stream's queued frames to pass


class PipelineTasks(Protocol):
    """What stream supervision needs of the pipeline (``roadside.edge.pipeline.Pipeline``)."""

    def submit(self, task: PipelineTask) -> None: ...

    def drop_stream(self, name: str) -> None: ...


class StreamSupervisor:
    """Starts, watches and retires the streams' reader threads."""

    def __init__(
        self,
        configs: Sequence[SourceConfig],
        ledger: FrameLedger,
        pipeline: PipelineTasks,
        open_source: Callable[[SourceConfig], FrameSource],
    ) -> None:
        for config in configs:
            check_new_stream(config, {})  # a name the health report cannot carry fails now
        self.ledger = ledger
        self._pipeline = pipeline
        self._open = open_source
        self._configs: dict[str, SourceConfig] = {c.name: c for c in configs}
        self.sources: list[FrameSource] = [open_source(c) for c in configs]
        self._lock = threading.Lock()
        self._readers: dict[str, threading.Thread] = {}
        self._threads: list[threading.Thread] = []
        self._first_frame: dict[str, threading.Event] = {}
        self.errors: dict[str, str] = {}  # stream name -> why its reader ended
        self._retiring: set[str] = set()
        self._running = False

    # Lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._running = True
            for source in self.sources:
                self._start_reader(source)

    def stop(self) -> None:
        """Close every source and wait for its reader (a frame it holds is still queued)."""
        with self._lock:
            self._running = False
        for source in self.sources:
            source.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def done(self, timeout: float | None = None) -> bool:
        """True once every (finite) source has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    # Streams at run time ----------------------------------------------------------------

    def configs(self) -> dict[str, SourceConfig]:
        """The running streams' settings, by name."""
        return dict(self._configs)

    def add(self, config: SourceConfig) -> None:
        """Start a stream now; ``ConfigError`` or ``TransportError`` if it cannot run."""
        with self._lock:
            if config.name in self._configs or config.name in self._retiring:
                raise ConfigError(f"stream {config.name} is already running or still stopping")
            check_new_stream(config, self._configs)
            source = self._open(config)
            self._configs = {**self._configs, config.name: config}
            self.sources = [*self.sources, source]
            started = self._running
            if started:
                self._start_reader(source)
        if started and not self._first_frame[config.name].wait(FIRST_FRAME_WAIT_S):
            log.warning("stream %s started but no frame came within %.0f s", config.name, FIRST_FRAME_WAIT_S)
        error = self.errors.get(config.name)
        if error is not None:
            self._retire(config.name, source, wait=True)
            raise TransportError(f"stream {config.name} did not start: {redact(error)}")
        log.info("stream %s added", config.name)

    def remove(self, name: str) -> None:
        """Stop a stream: its reader ends, its queued frames are processed, its open interval is sent."""
        with self._lock:
            if name not in self._configs:
                raise ConfigError(f"no stream named {name!r}")
            source = next(s for s in self.sources if s.name == name)
        source.close()
        reader = self._readers.get(name)
        if reader is not None:
            reader.join(timeout=5)
        self._retire(name, source, wait=True)
        log.info("stream %s removed", name)

    def readers(self) -> list[StreamReader]:
        """Each configured stream's reader, for the health report."""
        sources = {s.name: s for s in self.sources}
        readers = []
        for name in self._configs:
            thread = self._readers.get(name)
            source = sources.get(name)
            readers.append(
                StreamReader(
                    name,
                    reading=thread is not None and thread.is_alive(),
                    reconnects=source.reconnects if source is not None else 0,
                )
            )
        return readers

    def _start_reader(self, source: FrameSource) -> None:
        """Under ``_lock``."""
        self._first_frame[source.name] = threading.Event()
        self.errors.pop(source.name, None)
        thread = threading.Thread(
            target=self._read, args=(source,), name=f"source-{source.name}", daemon=True
        )
        self._readers[source.name] = thread
        self._threads = [*self._threads, thread]
        thread.start()

    def _retire(self, name: str, source: FrameSource, wait: bool) -> None:
        """Forget a stopped stream once every frame it queued has left the frame queue."""
        with self._lock:
            self._configs = {k: v for k, v in self._configs.items() if k != name}
            self._retiring.add(name)
            reader = self._readers.pop(name, None)
            self._threads = [t for t in self._threads if t is not reader]
        mark = self.ledger.mark()

        def run() -> None:  # on the pipeline thread: it owns the per-stream state
            self._pipeline.drop_stream(name)
            with self._lock:
                self.sources = [s for s in self.sources if s is not source]
                self._retiring.discard(name)
            self.ledger.forget(name)

        passed_before = False

        def ready() -> bool:
            # Once the frames have left the queue, wait one more round: the batcher may hold
            # one collected batch (with some of them) that the pipeline has not processed yet.
            nonlocal passed_before
            if passed_before:
                return True
            passed_before = self.ledger.passed(mark)
            return False

        task = PipelineTask(run, ready)
        self._pipeline.submit(task)
        if wait and not task.done.wait(RETIRE_WAIT_S):
            log.warning("stream %s stopped; its queued frames are still being processed", name)

    # The reader thread ------------------------------------------------------------------

    def _read(self, source: FrameSource) -> None:
        first = self._first_frame.get(source.name)
        try:
            for frame in source.frames():
                self.ledger.put(frame)
                if first is not None:
                    first.set()
        except TransportError as exc:
            self.errors[source.name] = str(exc)
            log.error("stream %s failed: %s", source.name, redact(str(exc)))
        finally:
            if first is not None:
                first.set()
