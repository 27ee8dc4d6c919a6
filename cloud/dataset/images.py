"""Image sizes read from headers, before anything is decoded.

A PNG of a few hundred kilobytes can declare 25000x25000 pixels; OpenCV's own cap is
2**30 pixels, so ``cv2.imdecode`` would allocate almost 2 GB for it on the ingest
thread. Every image that reaches the hub (a device's hard example, an imported file)
is therefore measured from its header first (PNG ``IHDR``, JPEG ``SOF``, BMP info
header) and refused above :data:`MAX_IMAGE_PIXELS`; other formats are refused without
being decoded at all. Pure functions over bytes: no OpenCV here.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final, Literal

from roadside.shared.errors import SchemaError

ImageFormat = Literal["jpeg", "png", "bmp"]

# 8K UHD: about 100 MB once decoded to BGR. Cameras on poles send far less (and a sample
# must fit a 256 KiB message), so anything larger is a mistake or an attack.
MAX_IMAGE_PIXELS: Final = 7680 * 4320
ALL_FORMATS: Final[frozenset[ImageFormat]] = frozenset({"jpeg", "png", "bmp"})

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers that carry the frame size (not DHT C4, JPG C8, DAC CC).
_JPEG_SOF: Final = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE: Final = frozenset({0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})
_MAX_SIDE: Final = 1 << 16  # no format here goes beyond; larger values are corrupt headers


class ImageRefusedError(SchemaError):
    """An image refused before decoding; ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def sniff_format(data: bytes) -> ImageFormat | None:
    """The format the first bytes announce, or ``None``."""
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"BM"):
        return "bmp"
    return None


def header_size(data: bytes, formats: Collection[ImageFormat] = ALL_FORMATS) -> tuple[int, int]:
    """(width, height) as the header declares them; ``ImageRefusedError`` if it cannot be read."""
    fmt = sniff_format(data)
    allowed = "/".join(sorted(f.upper() for f in formats))
    if fmt is None:
        raise ImageRefusedError("undecodable", f"the image does not decode as {allowed} (unknown format)")
    if fmt not in formats:
        raise ImageRefusedError("unsupported_format", f"the image is {fmt.upper()}, not {allowed}")
    width, height = {"png": _png_size, "jpeg": _jpeg_size, "bmp": _bmp_size}[fmt](data)
    if not (0 < width < _MAX_SIDE and 0 < height < _MAX_SIDE):
        raise ImageRefusedError("undecodable", f"the {fmt} header declares {width}x{height}")
    return width, height


def check_pixels(width: int, height: int, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse a size above ``max_pixels`` (``reason`` ``too_large``)."""
    if width * height > max_pixels:
        raise ImageRefusedError(
            "too_large",
            f"the image declares {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        )


def checked_header_size(
    data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, formats: Collection[ImageFormat] = ALL_FORMATS
) -> tuple[int, int]:
    """The header's (width, height), refused if unreadable, of another format, or above ``max_pixels``."""
    width, height = header_size(data, formats)
    check_pixels(width, height, max_pixels)
    return width, height


def _png_size(data: bytes) -> tuple[int, int]:
    # The signature, then IHDR must be the first chunk: length 13, type, width, height (big-endian).
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageRefusedError("undecodable", "the PNG has no IHDR chunk first")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the marker segments up to the first SOF; entropy-coded data (after SOS) is never read."""
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            raise ImageRefusedError("undecodable", f"the JPEG has no marker at byte {i}")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            break
        if i + 2 > n:
            break
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2:
            raise ImageRefusedError("undecodable", f"the JPEG has a segment of length {length}")
        if marker in _JPEG_SOF:
            if i + 7 > n:
                break
            # length(2) precision(1) height(2) width(2); height 0 means "in a DNL later": refused.
            return int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 3 : i + 5], "big")
        i += length
    raise ImageRefusedError("undecodable", "the JPEG has no frame header (SOF) before its scan data")


def _bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise ImageRefusedError("undecodable", "the BMP header is truncated")
    info = int.from_bytes(data[14:18], "little")
    if info == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
    width = int.from_bytes(data[18:22], "little", signed=True)
    height = int.from_bytes(data[22:26], "little", signed=True)
    return width, abs(height)  # a negative height is a top-down bitmap


__all__ = [
    "ALL_FORMATS",
    "MAX_IMAGE_PIXELS",
    "ImageFormat",
    "ImageRefusedError",
    "check_pixels",
    "checked_header_size",
    "header_size",
    "sniff_format",
]
