"""A throwaway PostgreSQL server for component tests.

``PostgresServer(tmp_path)`` runs ``initdb`` and then ``postgres`` itself (in
the foreground, so this process owns it) with a cluster that listens only on
``127.0.0.1`` at a free port, has no Unix socket, and lets anyone on loopback
in with ``trust`` and nobody from anywhere else. Durability is turned off
(``fsync``, ``synchronous_commit``, ``full_page_writes``): a test cluster is
thrown away, and on a shared two-core machine fsyncs are most of the cost.

PostgreSQL refuses to run as root. When the tests run as root the cluster
belongs to the ``postgres`` system user (the Debian package creates it): the
server runs under that uid, and its data directory lives in a private
directory under the system temp dir that it owns, because pytest's
``tmp_path`` sits below ``/tmp/pytest-of-root``, which only root may enter.
The server's log still goes to ``tmp_path`` (this process opens it and the
server inherits the descriptor).

Start-up is waited for with a bound; a failure raises with the tail of the
log. The server is stopped, and its directory removed, on leaving the
``with`` block, at interpreter exit, and (through ``setpriv --pdeathsig``)
when the test process dies without cleaning up. Only missing PostgreSQL
binaries skip the test (Debian: ``apt-get install postgresql``).

Example::

    with PostgresServer(tmp_path) as pg:
        url = pg.create_database("registry")   # postgresql+psycopg://postgres@127.0.0.1:PORT/registry
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Final, NoReturn, Self

import pytest

from roadside.cloud.broker.mosquitto import free_loopback_port

INITDB_TIMEOUT_S: Final = 60.0
START_TIMEOUT_S: Final = 15.0
STOP_TIMEOUT_S: Final = 10.0
_POLL_S: Final = 0.05
_LOG_TAIL_BYTES: Final = 4000
_PORT_ATTEMPTS: Final = 3
_SUPERUSER: Final = "postgres"
_SYSTEM_USER: Final = "postgres"

# Only loopback over TCP, and no Unix socket at all (unix_socket_directories is empty).
_HBA = "host all all 127.0.0.1/32 trust\n"


def postgres_bindir() -> Path:
    """The directory with ``initdb`` and ``postgres``; skips the calling test when there is none."""
    found = shutil.which("initdb")
    if found is not None and shutil.which("postgres") is not None:
        return Path(found).parent
    # Debian keeps the server binaries off PATH, one directory per major version: take the newest.
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major_version)
    if not candidates:
        pytest.skip(
            "PostgreSQL is not installed (Debian: apt-get install postgresql); PostgreSQL tests skipped"
        )
    return Path(candidates[-1]).parent


def _major_version(initdb: str) -> int:
    version = Path(initdb).parent.parent.name
    return int(version) if version.isdigit() else 0


class PostgresServer:
    """A private PostgreSQL cluster; use as a context manager. ``url`` is its ``postgres`` database."""

    def __init__(self, root: Path) -> None:
        self.root = root / "postgres"
        self.port = free_loopback_port()
        self._bindir = postgres_bindir()
        self._as_root = os.geteuid() == 0
        self._log = self.root / "postgres.log"
        self._base: Path | None = None  # what stop() removes
        self._data: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        setpriv = shutil.which("setpriv")
        # The kernel sends the server SIGTERM when this process dies, however it dies: no orphans.
        self._guard = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3) of the cluster's ``postgres`` database."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql+psycopg://{_SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        try:
            self._initdb()
            for attempt in range(_PORT_ATTEMPTS):
                try:
                    self.start()
                    return self
                except RuntimeError as exc:
                    # Someone took the port between free_loopback_port() and the server binding it: another port.
                    if "already in use" not in str(exc) or attempt == _PORT_ATTEMPTS - 1:
                        raise
                    self.port = free_loopback_port()
        except BaseException:
            self.stop()
            atexit.unregister(self.stop)
            raise
        raise AssertionError("unreachable")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        atexit.unregister(self.stop)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def create_database(self, name: str) -> str:
        """Create an empty database (about a tenth of a second, far cheaper than a cluster); its URL."""
        import psycopg

        with psycopg.connect(self._dsn("postgres"), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def start(self) -> None:
        """Start the server on ``port`` and wait until it accepts connections."""
        if self.running:
            return
        assert self._data is not None, "initdb first (use the server as a context manager)"
        argv = [
            str(self._bindir / "postgres"),
            "-D", str(self._data),
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"port={self.port}",
            "-c", "unix_socket_directories=",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "shared_buffers=32MB",
            "-c", "max_connections=40",
            "-c", "timezone=UTC",
        ]  # fmt: skip
        uid, gid, groups = self._run_as()
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [*self._guard, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for pytest does not reach it half-way
                cwd="/",  # the postgres user may not be allowed into ours
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._fail(f"postgres exited with status {self._process.returncode} while starting")
            if self._accepts_connections():
                return
            time.sleep(_POLL_S)
        self._fail(f"postgres did not accept connections within {START_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        """Stop the server (fast shutdown, then SIGKILL if it lingers) and remove its data."""
        self._halt()
        base, self._base = self._base, None
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)

    def _halt(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown: roll back open sessions and exit.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)

    def log_tail(self) -> str:
        """The end of the server's log, for failure messages."""
        with contextlib.suppress(OSError), self._log.open("rb") as log:
            log.seek(0, 2)
            log.seek(max(0, log.tell() - _LOG_TAIL_BYTES))
            return log.read().decode(errors="replace")
        return "(no log)"

    # -- internals --

    def _initdb(self) -> None:
        if self._as_root:
            self._base = Path(tempfile.mkdtemp(prefix="roadside-pg-"))
            user = _system_user()
            os.chown(self._base, user.pw_uid, user.pw_gid)
        else:
            self._base = self.root / "cluster"
            self._base.mkdir()
        self._data = self._base / "data"
        argv = [
            str(self._bindir / "initdb"),
            "-D", str(self._data),
            "-U", _SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # a test cluster need not survive a power cut
        ]  # fmt: skip
        uid, gid, groups = self._run_as()
        with self._log.open("ab") as log:
            try:
                done = subprocess.run(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=INITDB_TIMEOUT_S,
                    check=False,
                    cwd="/",
                    user=uid,
                    group=gid,
                    extra_groups=groups,
                )
            except subprocess.TimeoutExpired:
                self._fail(f"initdb did not finish within {INITDB_TIMEOUT_S:.0f} s")
        if done.returncode != 0:
            self._fail(f"initdb exited with status {done.returncode}")
        # Replace initdb's defaults (which also trust the local socket and ::1) with loopback only.
        (self._data / "pg_hba.conf").write_text(_HBA)

    def _run_as(self) -> tuple[int | None, int | None, list[int] | None]:
        """``(user, group, extra_groups)`` for subprocess: root drops to ``postgres`` before exec."""
        if not self._as_root:
            return None, None, None
        user = _system_user()
        return user.pw_uid, user.pw_gid, []

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={_SUPERUSER} dbname={database}"

    def _accepts_connections(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self._dsn("postgres"), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def _fail(self, why: str) -> NoReturn:
        self._halt()  # keep the data for a retry on another port; stop() removes it
        raise RuntimeError(f"{why}; log {self._log}; log tail:\n{self.log_tail()}")


def _system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root, and there is no {_SYSTEM_USER!r} user to run PostgreSQL as "
            "(PostgreSQL refuses root): install Debian's postgresql package, which creates it, "
            f"or `useradd --system {_SYSTEM_USER}`"
        ) from None
