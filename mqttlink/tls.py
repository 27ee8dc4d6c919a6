"""A mutual-TLS client context from PEM text, with no copy of the private key left on disk."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from roadside.shared.errors import ConfigError


def context_from_pem(ca_pem: str, cert_pem: str, key_pem: str, scratch_dir: Path) -> ssl.SSLContext:
    """The mutual-TLS context paho's ``tls_set`` would build from these PEMs.

    Python's ``ssl`` loads a private key only from a file. The key is written to
    ``scratch_dir`` (0700, the file 0600, always the same name, so a copy a crash
    left behind is overwritten here), loaded, and removed at once: no copy of it
    stays on disk while the process runs, nor after it stops or is killed.
    ``ConfigError`` when the PEMs do not load.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    scratch_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(scratch_dir, 0o700)
    cert, key = scratch_dir / "client.crt", scratch_dir / "client.key"
    try:
        context.load_verify_locations(cadata=ca_pem)
        for path, pem in ((cert, cert_pem), (key, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(pem)
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"the TLS certificates do not load ({exc})") from exc
    finally:
        cert.unlink(missing_ok=True)
        key.unlink(missing_ok=True)
    return context
