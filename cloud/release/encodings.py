"""The compressed and delta forms of a model, published beside it as TUF targets of their own (ADR 0027).

For every model the repository signs, it also signs:

- ``models/<name>/<version>/model.zst``: the model compressed with zstd;
- ``models/<name>/<version>/patch-<base sha256 prefix>.zst``: a delta from the
  previous version of the same model: the new file compressed by zstd with the
  old file as a raw-content dictionary (what ``zstd --patch-from`` does), with
  long-distance matching and a window that spans both files. A device that
  holds the old file rebuilds the new one from it and the patch.

Each is a target with its own length and sha256 and Roadside fields that name
what it encodes (``encoding_of``: the model target's path; ``encoding``;
``base_sha256`` for a patch). The model target lists them under
``transfers`` in its own signed fields, so a device learns of them from the
same signed metadata. The result of decoding is checked on the device against
the model target's own hash; any failure falls back to the next form, the last
being the model file itself. The only module on the hub that imports
``zstandard``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Final

from roadside.shared.errors import ConfigError

ZSTD: Final = "zstd"
ZSTD_PATCH: Final = "zstd-patch"
COMPRESSED_FILE: Final = "model.zst"
# Level 15 is where the patch stops shrinking on float32 weights (0.18x at 15 and at 19 for a
# head-only fine-tune of a 5 MB detector) at a fifth of level 19's time; compression alone gains
# nothing past level 9 on such weights.
LEVEL: Final = 15
# The device decodes with at most this window (2**27 = 128 MiB: a 64 MiB model and its base).
MAX_WINDOW_LOG: Final = 27
_MIN_WINDOW_LOG: Final = 10
# A form is published only when it saves at least this share of the bytes it replaces.
MIN_SAVING: Final = 0.05


@dataclass(frozen=True, slots=True)
class EncodedForm:
    """One transfer form of a model: its target file name (in the model's folder), bytes and fields."""

    filename: str
    data: bytes
    encoding: str
    base_sha256: str | None = None

    def custom(self, model_path: str) -> dict[str, Any]:
        """The Roadside fields of this form's own TUF target."""
        fields: dict[str, Any] = {"encoding_of": model_path, "encoding": self.encoding}
        if self.base_sha256 is not None:
            fields["base_sha256"] = self.base_sha256
        return fields

    def transfer(self, folder: str) -> dict[str, Any]:
        """The entry naming this form in the model target's ``transfers`` (its length and hash: its own target)."""
        entry: dict[str, Any] = {"path": f"{folder}/{self.filename}", "encoding": self.encoding}
        if self.base_sha256 is not None:
            entry["base_sha256"] = self.base_sha256
        return entry


log = logging.getLogger(__name__)


def _zstd() -> Any:
    """The zstandard module; ``ConfigError`` if the hub was installed without it."""
    try:
        import zstandard
    except ImportError as exc:
        raise ConfigError("zstandard is not installed: pip install 'roadside[cloud]'") from exc
    return zstandard


def window_log(total: int) -> int:
    """The zstd window (log2 bytes) that lets a patch reach back across its whole base."""
    return max(_MIN_WINDOW_LOG, min(MAX_WINDOW_LOG, math.ceil(math.log2(max(total, 2)))))


def compress(data: bytes) -> bytes:
    """``data`` as one zstd frame (the content size in the header)."""
    zstandard = _zstd()
    params = zstandard.ZstdCompressionParameters.from_level(
        LEVEL, source_size=len(data), window_log=window_log(len(data)), enable_ldm=True
    )
    return bytes(zstandard.ZstdCompressor(compression_params=params).compress(data))


def make_patch(base: bytes, data: bytes) -> bytes:
    """``data`` compressed with ``base`` as a raw-content dictionary: a binary delta from ``base``."""
    zstandard = _zstd()
    params = zstandard.ZstdCompressionParameters.from_level(
        LEVEL,
        source_size=len(data),
        window_log=window_log(len(base) + len(data)),
        enable_ldm=True,
    )
    dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return bytes(zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(data))


def patch_filename(base_sha256: str) -> str:
    return f"patch-{base_sha256[:16]}.zst"


def encoded_forms(data: bytes, bases: dict[str, bytes]) -> list[EncodedForm]:
    """The forms worth publishing for ``data``: compressed, and a patch from each base (by sha256).

    A form that saves less than ``MIN_SAVING`` of the model's bytes is left
    out (a patch between unrelated models, an incompressible file): a device
    would only fetch more for nothing.
    """
    forms = []
    try:
        compressed = compress(data)
    except ConfigError as exc:
        log.warning("publishing without compressed and patch forms: %s", exc)
        return []
    if len(compressed) <= len(data) * (1 - MIN_SAVING):
        forms.append(EncodedForm(COMPRESSED_FILE, compressed, ZSTD))
    fallback = min(len(compressed), len(data))  # what a device without the base fetches
    for sha256, base in bases.items():
        patch = make_patch(base, data)
        if len(patch) <= fallback * (1 - MIN_SAVING):
            forms.append(EncodedForm(patch_filename(sha256), patch, ZSTD_PATCH, sha256))
    return forms
