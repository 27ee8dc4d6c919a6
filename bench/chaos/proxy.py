"""A small fault-injecting TCP proxy: latency with jitter, stalls as TCP loss would cause, a link
that goes away and comes back. The kernels here have no ``netem``; this sits between an
agent's network namespace and the broker instead.

Each connection gets two pump threads (one per direction) that forward what they read,
after the delay :class:`LinkFaults` says. ``down`` cuts every connection and refuses new
ones until it is cleared. Everything stops on :meth:`FaultProxy.close`.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from dataclasses import dataclass

_CHUNK = 16 * 1024


@dataclass
class LinkFaults:
    """What the link does now; the harness changes these while the proxy runs."""

    latency_s: float = 0.0
    jitter_s: float = 0.0
    stall_probability: float = 0.0  # per chunk: a retransmission-like stall (TCP over a lossy link)
    stall_s: tuple[float, float] = (0.2, 1.0)
    down: bool = False

    def delay_s(self, rng: random.Random) -> float:
        delay = self.latency_s + rng.uniform(-self.jitter_s, self.jitter_s) if self.latency_s else 0.0
        if self.stall_probability and rng.random() < self.stall_probability:
            delay += rng.uniform(*self.stall_s)
        return max(0.0, delay)


class FaultProxy:
    """Listens on ``listen`` and forwards each connection to ``upstream`` through :attr:`faults`."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], seed: int = 0) -> None:
        self.upstream = upstream
        self.faults = LinkFaults()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._server = socket.create_server(listen, reuse_port=False)
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, name=f"proxy-accept-{self.port}", daemon=True)
        self._acceptor.start()

    def cut(self) -> None:
        """Close every open connection (the link went away)."""
        with self._lock:
            victims, self._open = self._open, set()
        for sock in victims:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed.set()
        self._acceptor.join(5)
        self._server.close()
        self.cut()

    def _delay(self) -> float:
        with self._rng_lock:
            return self.faults.delay_s(self._rng)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.faults.down:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            for source, sink, way in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(
                    target=self._pump, args=(source, sink), name=f"proxy-{self.port}-{way}", daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                data = source.recv(_CHUNK)
                if not data or self.faults.down:
                    break
                delay = self._delay()
                if delay:
                    time.sleep(delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open -= {source, sink}
            source.close()
            sink.close()
