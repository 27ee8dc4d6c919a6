"""A throwaway InfluxDB 1.x server for component tests.

``InfluxServer(tmp_path)`` writes a config that binds only to loopback on free
ports (the HTTP API and the RPC/meta bind address), keeps meta, data and WAL
under ``tmp_path``, turns off reporting and the ``_internal`` monitor store, and
starts ``influxd``. It waits for ``/ping`` to answer 204, bounded, and raises
with the tail of the server's log if it does not. ``stop()`` and ``start()``
restart it on the same ports and data, for outage tests. The process is
stopped on leaving the ``with`` block, at interpreter exit, and (through
``setpriv --pdeathsig``, where util-linux has it) when the test process dies
without cleaning up, even by SIGKILL.

Only a missing ``influxd`` binary skips the test (``apt-get install influxdb``).
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Final, NoReturn, Self

import pytest

from roadside.cloud.broker.mosquitto import free_loopback_port

START_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 5.0
_POLL_S: Final = 0.05
_LOG_TAIL_BYTES: Final = 4000
_PORT_ATTEMPTS: Final = 3

_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root}/meta"
  logging-enabled = false

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false

[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false

[monitor]
  store-enabled = false

[continuous_queries]
  enabled = false

[subscriber]
  enabled = false
"""


def influxd_binary() -> str:
    """Path of ``influxd``; skips the calling test when it is not installed."""
    found = shutil.which("influxd")
    if found is None:
        pytest.skip("influxd is not installed (Debian: apt-get install influxdb); InfluxDB tests skipped")
    return found


class InfluxServer:
    """A private ``influxd`` under ``root``; use as a context manager."""

    def __init__(self, root: Path) -> None:
        self.root = root / "influxd"
        self.http_port = free_loopback_port()
        self.rpc_port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self._binary = influxd_binary()
        setpriv = shutil.which("setpriv")
        # The kernel sends influxd SIGTERM when its parent dies, however it dies: no orphans.
        self._guard = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
        self._config = self.root / "influxd.conf"
        self._log = self.root / "influxd.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        for attempt in range(_PORT_ATTEMPTS):
            self._write_config()
            try:
                self.start()
                return self
            except RuntimeError as exc:
                # Another process took a port between free_loopback_port() and influxd binding it: new ports.
                if "address already in use" not in str(exc) or attempt == _PORT_ATTEMPTS - 1:
                    atexit.unregister(self.stop)
                    raise
                self.http_port, self.rpc_port = free_loopback_port(), free_loopback_port()
                self.url = f"http://127.0.0.1:{self.http_port}"
        raise AssertionError("unreachable")

    def _write_config(self) -> None:
        self._config.write_text(
            _CONFIG.format(root=self.root, http_port=self.http_port, rpc_port=self.rpc_port)
        )

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        atexit.unregister(self.stop)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (again, same ports and data) and wait until it answers ``/ping``."""
        if self.running:
            return
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [*self._guard, self._binary, "run", "-config", str(self._config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for pytest does not reach it half-way
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._fail(f"influxd exited with status {self._process.returncode} while starting")
            if self._ping():
                return
            time.sleep(_POLL_S)
        self._fail(f"influxd did not answer /ping within {START_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL if it lingers. Harmless when stopped."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)

    def _ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as response:  # noqa: S310 (our URL)
                return bool(response.status == 204)
        except (urllib.error.URLError, OSError):
            return False

    def _fail(self, why: str) -> NoReturn:
        self.stop()
        raise RuntimeError(f"{why}; config {self._config}; log tail:\n{self.log_tail()}")

    def log_tail(self) -> str:
        """The end of the server's log, for failure messages."""
        with contextlib.suppress(OSError), self._log.open("rb") as log:
            log.seek(0, 2)
            log.seek(max(0, log.tell() - _LOG_TAIL_BYTES))
            return log.read().decode(errors="replace")
        return "(no log)"
