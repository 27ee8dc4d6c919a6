"""Rebuilding a model from its compressed file or from a patch and the model the device holds (ADR 0027).

The forms are made by ``roadside.cloud.release.encodings``: one zstd frame,
for a patch compressed with the base model as a raw-content dictionary. The
output is capped at the model target's signed length while it streams, so a
hostile or broken frame cannot fill the disk; whether the bytes are the model
is decided by the caller against the model target's sha256. The only module on
the device that imports ``zstandard``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

from roadside.edge.ota.policy import ZSTD, ZSTD_PATCH
from roadside.shared.errors import ConfigError, TamperedTargetError

# The window a frame may ask for: a 64 MiB model and its base (the release side's MAX_WINDOW_LOG).
MAX_WINDOW_SIZE: Final = 1 << 27
_CHUNK: Final = 1024 * 1024


def decode_into(
    encoding: str, payload: Path, write: Callable[[bytes], object], max_bytes: int, base: bytes | None = None
) -> int:
    """Pass what ``payload`` encodes to ``write``, chunk by chunk; returns the bytes written.

    Raises :class:`TamperedTargetError` for an undecodable frame, output past
    ``max_bytes``, a patch without its base or an unknown encoding, and
    :class:`ConfigError` when zstandard is not installed (the caller falls back
    to the model file).
    """
    if encoding == ZSTD_PATCH and base is None:
        raise TamperedTargetError(f"{payload.name}: a patch needs the model it applies to")
    if encoding not in (ZSTD, ZSTD_PATCH):
        raise TamperedTargetError(f"{payload.name}: unknown encoding {encoding!r}")
    try:
        import zstandard
    except ImportError as exc:  # an agent installed without roadside[edge]'s zstandard: full downloads
        raise ConfigError("zstandard is not installed: pip install 'roadside[edge]'") from exc
    dictionary = (
        zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        if encoding == ZSTD_PATCH and base is not None
        else None
    )
    decompressor = zstandard.ZstdDecompressor(dict_data=dictionary, max_window_size=MAX_WINDOW_SIZE)
    written = 0
    try:
        with (
            payload.open("rb") as source,
            decompressor.stream_reader(source, read_across_frames=False) as reader,
        ):
            while chunk := reader.read(_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise TamperedTargetError(f"{payload.name} decodes past the model's {max_bytes} bytes")
                write(chunk)
    except zstandard.ZstdError as exc:
        raise TamperedTargetError(f"{payload.name} does not decode: {exc}") from exc
    return written
