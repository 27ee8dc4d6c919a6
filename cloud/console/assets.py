"""The console's static files: served under URLs that carry their content hash, cached for a year.

Vendored libraries (``static/vendor``) are listed in ``manifest.json`` with
their package, version, licence and SHA-256; :func:`check_vendor_manifest`
(run by a test) fails if a file differs from its recorded hash. The console's
own CSS and JS sit in ``static/``. Nothing is fetched from anywhere at run time.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Final

STATIC_DIR: Final = Path(__file__).parent / "static"
VENDOR_DIR: Final = STATIC_DIR / "vendor"
MANIFEST: Final = VENDOR_DIR / "manifest.json"
HASH_CHARS: Final = 16
IMMUTABLE: Final = "public, max-age=31536000, immutable"
_TYPES: Final = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class Asset:
    name: str  # e.g. "vendor/htmx.min.js"
    digest: str  # the first HASH_CHARS hex digits of its SHA-256
    body: bytes
    media_type: str

    @property
    def path(self) -> str:
        """The URL path below the console's static root: ``<digest>/<name>``."""
        return f"{self.digest}/{self.name}"


class Assets:
    """Every static file, read once at start; looked up by name (templates) or by hashed path (requests)."""

    def __init__(self, root: Path = STATIC_DIR) -> None:
        self._by_name: dict[str, Asset] = {}
        for file in sorted(root.rglob("*")):
            if not file.is_file() or file.suffix not in _TYPES:
                continue
            body = file.read_bytes()
            name = file.relative_to(root).as_posix()
            media = (
                _TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            )
            self._by_name[name] = Asset(name, hashlib.sha256(body).hexdigest()[:HASH_CHARS], body, media)
        self._by_path = {a.path: a for a in self._by_name.values()}

    def url_path(self, name: str) -> str:
        """``<digest>/<name>`` for a template's link; ``KeyError`` for a file that is not there."""
        return self._by_name[name].path

    def find(self, path: str) -> Asset | None:
        """The asset a request path names, only if its digest is the current one."""
        return self._by_path.get(path)


def check_vendor_manifest(manifest: Path = MANIFEST) -> list[str]:
    """Problems with the vendored files: missing, or not the bytes the manifest records. Empty when fine."""
    problems: list[str] = []
    listed = json.loads(manifest.read_text())["files"]
    for entry in listed:
        file = manifest.parent / entry["file"]
        if not file.is_file():
            problems.append(f"{entry['file']}: missing")
            continue
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        if digest != entry["sha256"]:
            problems.append(f"{entry['file']}: sha256 {digest}, manifest says {entry['sha256']}")
        for field in ("package", "version", "license"):
            if not entry.get(field):
                problems.append(f"{entry['file']}: no {field} in the manifest")
    names = {e["file"] for e in listed}
    for file in manifest.parent.iterdir():
        if file.suffix in _TYPES and file.name not in names:
            problems.append(f"{file.name}: vendored but not in the manifest")
    return problems
