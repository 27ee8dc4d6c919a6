"""Serve the model repository read-only over HTTP(S), and keep its timestamp fresh.

The repository is static files, so a threaded ``http.server`` is enough:
GET and HEAD only, no directory listings, no writes, paths confined to the
repository by the standard library's ``translate_path``. It speaks HTTP/1.1
with persistent connections (ADR 0027): a device's install (root probe,
timestamp, index, model) is one TLS handshake, not four; a 404 keeps the
connection too, since every update check probes for the next root and gets
one. An idle connection is closed after ``IDLE_TIMEOUT_S``. TLS uses a server
certificate from :class:`roadside.cloud.broker.pki.CertificateAuthority` (``issue_server``);
devices pin the Roadside CA. TUF does not need TLS for integrity (every byte
is checked against signed metadata), but TLS keeps what a device fetches, and
when, private.

Versioned and hash-named files never change, so they may be cached forever;
``timestamp.json`` and ``root.json`` change and are sent ``no-cache``.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import ssl
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Final, Self

from roadside.cloud.broker.pki import CertFiles
from roadside.cloud.release.repository import ModelRepository
from roadside.shared.errors import ConfigError, RoadsideError

log = logging.getLogger(__name__)

_MUTABLE: Final = frozenset({"timestamp.json", "root.json"})
IDLE_TIMEOUT_S: Final = 15.0  # a kept-alive connection nobody uses holds a thread until then
_COPY_CHUNK: Final = 256 * 1024


class _ReadOnlyHandler(SimpleHTTPRequestHandler):
    server_version = "roadside-release"
    sys_version = ""  # do not advertise the Python version
    protocol_version = "HTTP/1.1"  # keep-alive: every response below carries a Content-Length
    timeout = IDLE_TIMEOUT_S  # socket timeout of the connection's thread, idle keep-alive included

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        if code != 404:
            super().send_error(code, message, explain)  # the stdlib's: closes the connection
            return
        # Not found is a normal answer here (the next root's probe): say it briefly, keep the connection.
        body = b"Not found\n"
        self.send_response(code, message)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def copyfile(self, source: Any, outputfile: Any) -> None:
        shutil.copyfileobj(source, outputfile, _COPY_CHUNK)  # fewer, larger TLS writes than 64 KiB

    def send_head(self) -> io.BytesIO | BinaryIO | None:
        # Dot files (the repository's lock file, editors' leftovers) are not part of the repository.
        if any(part.startswith(".") for part in self.path.split("?", 1)[0].split("/")):
            self.send_error(404, "Not found")
            return None
        return super().send_head()

    def list_directory(self, path: str | os.PathLike[str]) -> io.BytesIO | None:
        self.send_error(404, "Not found")
        return None

    def end_headers(self) -> None:
        name = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
        immutable = "public, max-age=31536000, immutable"
        self.send_header("Cache-Control", "no-cache" if name in _MUTABLE else immutable)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("release server: " + format, *args)  # noqa: G003 - format is the stdlib's %-template


class _CountingServer(ThreadingHTTPServer):
    """Counts the connections it accepts (keep-alive shows as few connections for many requests)."""

    accepted = 0

    def get_request(self) -> tuple[Any, Any]:
        request = super().get_request()
        self.accepted += 1  # accept() runs on the serving thread only
        return request


class RepositoryServer:
    """Serves ``directory`` (a repository's root: ``metadata/`` and ``targets/``) on ``host:port``.

    ``port=0`` picks a free port; ``url`` says which. With ``tls`` the server
    speaks HTTPS only (TLS 1.2 or newer).
    """

    def __init__(
        self, directory: Path, host: str = "127.0.0.1", port: int = 0, *, tls: CertFiles | None = None
    ) -> None:
        if not (directory / "metadata").is_dir():
            raise ConfigError(f"{directory} is not a model repository (no metadata/ folder)")
        handler = partial(_ReadOnlyHandler, directory=str(directory))
        try:
            self._httpd = _CountingServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve the model repository on {host}:{port}: {exc.strerror}") from exc
        self._httpd.daemon_threads = True
        self._scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(tls.cert, tls.key)
            # The handshake runs in the request's thread, so a slow client cannot stall accept().
            self._httpd.socket = context.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
            self._scheme = "https"
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        text = host.decode() if isinstance(host, bytes) else host
        shown = f"[{text}]" if ":" in text else text
        return f"{self._scheme}://{shown}:{port}"

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted since start (each is one TLS handshake with ``tls``)."""
        return self._httpd.accepted

    def start(self) -> None:
        # A short poll keeps stop() quick; the cost is a wake-up every 0.1 s while idle.
        serve = partial(self._httpd.serve_forever, poll_interval=0.1)
        self._thread = threading.Thread(target=serve, name="release-server", daemon=True)
        self._thread.start()
        log.info("serving the model repository at %s", self.url)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class TimestampRefresher:
    """Calls ``repository.refresh_timestamp()`` every ``interval_s`` on a named thread.

    A failed refresh is logged and tried again next time; the timestamp's
    lifetime (a day by default) leaves many chances before devices notice.
    """

    def __init__(self, repository: ModelRepository, interval_s: float = 3600.0) -> None:
        if interval_s <= 0:
            raise ConfigError("the timestamp refresh interval must be positive")
        self._repository = repository
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="release-timestamp", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            try:
                if self._repository.refresh_timestamp():
                    log.info("re-signed release metadata")
            except RoadsideError:
                log.exception("timestamp refresh failed; retrying in %.0f s", self._interval_s)
            if self._stop.wait(self._interval_s):
                return
