"""``python -m bench.chaos.repo_server``: a model repository served on its own (HTTPS, read-only).

In production the hub that serves the API serves the repository too
(``repo_port``), or a web server does. The chaos harness runs it as a process
of its own, so ``repo-kill`` can SIGKILL it and start it again on the same port
while a rollout downloads from it, without touching the hub.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from roadside.cloud.broker.pki import CertFiles
from roadside.cloud.release.server import RepositoryServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos.repo_server", description=__doc__)
    parser.add_argument("--directory", type=Path, required=True, help="the repository (metadata/, targets/)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True, help="the server certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="its private key (PEM)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    tls = CertFiles(cert=args.cert, key=args.key)
    with RepositoryServer(args.directory, args.host, args.port, tls=tls):
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
