"""Tables as CSV when the client asks for ``Accept: text/csv``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, get_args

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

CSV_TYPE = "text/csv"


def wants_csv(request: Request) -> bool:
    """Whether the client prefers CSV to JSON."""
    accept = request.headers.get("accept", "")
    return CSV_TYPE in accept and "application/json" not in accept.split(CSV_TYPE)[0]


def _nested(kind: Any) -> type[BaseModel] | None:
    """The model a field holds (alone, or in a union such as ``Model | None``), if any."""
    for candidate in (kind, *get_args(kind)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def csv_columns(model: type[BaseModel]) -> tuple[str, ...]:
    """The CSV columns of ``model``: its fields, those of a nested model as ``outerInner``
    (as :func:`csv_response` spreads nested objects)."""
    columns: list[str] = []
    for name, field in model.model_fields.items():
        alias, nested = field.alias or name, _nested(field.annotation)
        if nested is None:
            columns.append(alias)
        else:
            columns += [alias + inner[:1].upper() + inner[1:] for inner in csv_columns(nested)]
    return tuple(columns)


def table_responses(model: type[BaseModel], columns: Sequence[str]) -> dict[int | str, Any]:
    """OpenAPI for a 200 of ``model`` as JSON, or as CSV of ``columns`` on ``Accept: text/csv``."""
    csv_doc = {"type": "string", "description": "CSV with a header row: " + ",".join(columns)}
    return {200: {"model": model, "content": {CSV_TYPE: {"schema": csv_doc}}}}


def csv_response(columns: Sequence[str], rows: Iterable[dict[str, Any]], filename: str) -> Response:
    """``rows`` (dicts keyed by ``columns``) as a CSV download; times in ISO 8601.

    A nested dict's values are columns of their own: ``{"coverage": {"vehicle": 1}}``
    fills the column ``coverageVehicle``.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        flat = _flatten(row)
        writer.writerow([_cell(flat.get(column)) for column in columns])
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with ``Z``, as every response writes times."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = prefix + key[:1].upper() + key[1:] if prefix else key
        if isinstance(value, dict):
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, list):
        return " ".join(map(str, value))
    return value
