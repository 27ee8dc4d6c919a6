"""CSV export of any series: ``?format=csv`` or ``Accept: text/csv``.

One row per item of the JSON answer's list, with the same field names as
columns; times are ISO 8601 UTC, absent values are empty. Text cells that a
spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``) get a leading
``'``; numbers are left alone.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal

from fastapi import Response

CSV_MEDIA_TYPE: Final = "text/csv"
JSON_MEDIA_TYPE: Final = "application/json"
ExportFormat = Literal["json", "csv"]
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


def wants_csv(accept: str | None, requested: ExportFormat | None) -> bool:
    """``format`` decides when sent; else CSV only when ``Accept`` prefers ``text/csv`` to JSON."""
    if requested is not None:
        return requested == "csv"
    if not accept:
        return False
    csv_q = json_q = 0.0
    for media_range in accept.split(","):
        media_type, _, params = media_range.strip().partition(";")
        media_type = media_type.strip().lower()
        q = _quality(params)
        if media_type in (CSV_MEDIA_TYPE, "text/*"):
            csv_q = max(csv_q, q if media_type == CSV_MEDIA_TYPE else q * 0.99)
        elif media_type in (JSON_MEDIA_TYPE, "application/*", "*/*"):
            json_q = max(json_q, q if media_type == JSON_MEDIA_TYPE else q * 0.99)
    return csv_q > json_q


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                return min(max(float(value), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0


def cell(value: Any) -> str:
    """One CSV cell: ISO 8601 UTC times, empty for ``None``, formula-safe text."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def render(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([cell(row.get(column)) for column in columns])
    return out.getvalue()


def csv_response(
    columns: Sequence[str],
    rows: Iterable[Mapping[str, Any]],
    filename: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The rows as a CSV attachment named ``filename``."""
    return Response(
        render(columns, rows),
        media_type=CSV_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{filename}"', **(headers or {})},
    )


def csv_content(example: str) -> dict[str, Any]:
    """The OpenAPI ``content`` entry for a CSV answer."""
    return {CSV_MEDIA_TYPE: {"schema": {"type": "string"}, "example": example}}
