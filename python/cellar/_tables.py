"""Tables in and out: what callers pass (dicts of columns, lists of rows, pandas, polars,
pyarrow) as JSON-ready columns, and the answers of ``/v1/features`` as one Arrow table."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

#: The media type of an Arrow IPC stream, which ``/v1/features`` answers when asked.
ARROW_STREAM = "application/vnd.apache.arrow.stream"


def columns_of(data: Any) -> dict[str, list[Any]]:
    """``data`` as named columns of plain Python values.

    Takes a mapping of columns (lists, tuples, numpy arrays, pandas or polars series, Arrow
    arrays; a lone value is a column of one), a list of row mappings, or a pandas, polars or
    pyarrow table.
    """
    if data is None:
        return {}
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        return data.to_pydict()
    module = type(data).__module__
    if module.startswith("pandas") and hasattr(data, "columns"):
        return pa.Table.from_pandas(data, preserve_index=False).to_pydict()
    if module.startswith("polars") and hasattr(data, "to_arrow"):
        return data.to_arrow().to_pydict()
    if isinstance(data, Mapping):
        return {str(name): _column(values) for name, values in data.items()}
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        names: dict[str, None] = {}
        for row in data:
            if not isinstance(row, Mapping):
                raise TypeError(
                    f"rows must be mappings of column to value, not {type(row).__name__}"
                )
            names.update(dict.fromkeys(str(k) for k in row))
        return {name: [row.get(name) for row in data] for name in names}
    raise TypeError(
        "expected a dict of columns, a list of rows, or a pandas, polars or pyarrow table; "
        f"got {type(data).__name__}"
    )


def _column(values: Any) -> list[Any]:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.to_pylist()
    if hasattr(values, "to_list"):  # pandas and polars series
        return list(values.to_list())
    if hasattr(values, "tolist"):  # numpy arrays
        return list(values.tolist())
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        return [values]
    return list(values)


def _json_default(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        # A time without a zone is taken as UTC, as Feast takes it.
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    raise TypeError(f"{type(value).__name__} is not a value Cellar takes")


def dumps(body: Any) -> bytes:
    """``body`` as JSON, with times, numpy scalars and sets as Cellar reads them."""
    return json.dumps(body, default=_json_default, separators=(",", ":")).encode()


def _times(values: list[Any]) -> pa.Array:
    """RFC 3339 strings (or nulls) as UTC timestamps in milliseconds."""
    return pa.array(
        [None if v is None else _parse_time(v) for v in values],
        type=pa.timestamp("ms", tz="UTC"),
    )


def _parse_time(value: Any) -> _dt.datetime:
    if isinstance(value, (int, float)):
        return _dt.datetime.fromtimestamp(value / 1000, tz=_dt.timezone.utc)
    text = str(value)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return _dt.datetime.fromisoformat(text)


def table_from_json(answer: Mapping[str, Any]) -> pa.Table:
    """The JSON answer of ``/v1/features`` as the table the Arrow answer gives: the entity
    columns, then each group's features as ``<group>__<feature>`` (time series as lists,
    newest first; null without records), its row status as ``<group>__status`` and its event time (a list of them
    for a time series) as ``<group>__event_time``."""
    entities = answer.get("entities") or {}
    columns: dict[str, pa.Array] = {}
    for name, values in entities.items():
        columns[name] = pa.array(values)
    rows_total = len(next(iter(entities.values()), []))
    groups = []
    for result in answer.get("results", []):
        group, kind = result["group"], result.get("kind", "attribute")
        features = list(result.get("features", []))
        rows = result.get("rows", [])
        rows_total = max(rows_total, len(rows))
        groups.append({"group": group, "kind": kind, "features": features})
        if kind == "timeseries":
            for i, feature in enumerate(features):
                columns[f"{group}__{feature}"] = pa.array(
                    [
                        [r["values"][i] for r in row["records"]] if row.get("records") else None
                        for row in rows
                    ]
                )
            columns[f"{group}__status"] = pa.array([row.get("status") for row in rows], pa.string())
            columns[f"{group}__event_time"] = pa.array(
                [
                    [_parse_time(r["event_time"]) for r in row["records"]]
                    if row.get("records")
                    else None
                    for row in rows
                ],
                type=pa.list_(pa.timestamp("ms", tz="UTC")),
            )
        else:
            for i, feature in enumerate(features):
                columns[f"{group}__{feature}"] = pa.array(
                    [row["values"][i] if "values" in row else None for row in rows]
                )
            columns[f"{group}__status"] = pa.array([row.get("status") for row in rows], pa.string())
            if kind != "on_demand":
                columns[f"{group}__event_time"] = _times([row.get("event_time") for row in rows])
    metadata = {"cellar.groups": json.dumps(groups)}
    if answer.get("request_id"):
        metadata["cellar.request_id"] = str(answer["request_id"])
    if not columns:
        return pa.table({}, metadata=metadata)
    return pa.table(columns, metadata={k.encode(): v.encode() for k, v in metadata.items()})


def table_from_ipc(body: bytes) -> pa.Table:
    """An Arrow IPC stream, as the server wrote it."""
    with pa.ipc.open_stream(body) as reader:
        return reader.read_all()
