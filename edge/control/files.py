"""Writing the agent's small private state files so that a crash leaves the old or the new one."""

from __future__ import annotations

import os
from pathlib import Path


def write_private_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 so that a crash leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives power loss
    finally:
        os.close(directory)
