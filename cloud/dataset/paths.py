"""File names that come from an import (a COCO ``file_name``, a YOLO label file), checked before use.

A labelling tool's export is input from outside the hub: a ``file_name`` of
``/home/operator/.ssh/id_ed25519.png``, ``../../secrets.jpg``, ``C:\\x.jpg`` or a
symlink in the images folder pointing elsewhere would otherwise make an import read a
file outside the folders it was given and copy it into the dataset (and from there into
every later export). Names must be relative POSIX paths without ``..``; a file found
must resolve, symlinks followed, inside the folder it was found in.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Final

from roadside.shared.errors import ConfigError

_DRIVE: Final = re.compile(r"^[A-Za-z]:")


def check_member_name(name: str, at: str) -> PurePosixPath:
    """``name`` as a relative path; ``ConfigError`` naming ``at`` if it could leave its folder."""
    why = None
    if not name or "\x00" in name:
        why = "is empty or holds a NUL byte"
    elif "\\" in name:
        why = "holds a backslash (a Windows path); use relative names with /"
    elif _DRIVE.match(name):
        why = "starts with a drive letter; use names relative to the images folder"
    elif name.startswith("/"):
        why = "is absolute; use names relative to the images folder"
    elif ".." in PurePosixPath(name).parts:
        why = "contains '..'; names must stay inside the images folder"
    elif not PurePosixPath(name).name:
        why = "names a folder, not a file"  # "." or "./": found by fuzzing (a ValueError in pathlib)
    if why is not None:
        raise ConfigError(f"{at}: file name {name!r} {why}")
    return PurePosixPath(name)


def is_inside(folder: Path, path: Path) -> bool:
    """Whether ``path`` exists and, symlinks resolved, lies inside ``folder`` (resolved too)."""
    try:
        path.resolve(strict=True).relative_to(folder.resolve(strict=True))
    except (OSError, ValueError, RuntimeError):  # missing, elsewhere, or a symlink loop
        return False
    return True


def require_inside(folder: Path, path: Path, at: str) -> Path:
    """``path`` if inside ``folder``; ``ConfigError`` saying where it really points otherwise."""
    if not is_inside(folder, path):
        raise ConfigError(
            f"{at}: {path} resolves to {path.resolve()}, outside {folder}; "
            "files (and symlinks) that leave the import's folder are refused"
        )
    return path


__all__ = ["check_member_name", "is_inside", "require_inside"]
