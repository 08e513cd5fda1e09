"""The answer of an online read, in the shapes ML code wants."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:  # pragma: no cover
    import pandas
    import polars


class OnlineResponse:
    """Features of entities, one row per entity, in the order asked.

    Held as one Arrow table: the entity columns, then for each group its features
    (``<group>__<feature>``; a time series' as lists, newest first), its row status
    (``<group>__status``: ``present``, ``not_found``, ``expired`` or ``error``) and its event
    time (``<group>__event_time``; a list for a time series). The ``to_*`` methods give the
    entity and feature columns, named by feature alone as Feast names them unless
    ``full_feature_names``; ``statuses=True`` adds the status and event-time columns.
    """

    def __init__(
        self,
        table: pa.Table,
        full_feature_names: bool = False,
        format: str = "json",
        entity_order: list[str] | None = None,
    ) -> None:
        self._table = table
        self._entity_order = entity_order or []
        self._full = full_feature_names
        #: How the server answered: ``arrow`` or ``json``.
        self.format = format
        metadata = table.schema.metadata or {}
        self.groups: list[dict[str, Any]] = json.loads(metadata.get(b"cellar.groups", b"[]"))
        request_id = metadata.get(b"cellar.request_id")
        #: The id the server logged this answer under, when the feature service logs.
        self.request_id: str | None = request_id.decode() if request_id else None

    @property
    def entity_columns(self) -> list[str]:
        grouped = {f"{g['group']}__" for g in self.groups}
        names = [
            name
            for name in self._table.column_names
            if not any(name.startswith(prefix) for prefix in grouped)
        ]
        order = {name: i for i, name in enumerate(self._entity_order)}
        return sorted(names, key=lambda n: order.get(n, len(order)))

    def __len__(self) -> int:
        return self._table.num_rows

    def __repr__(self) -> str:
        groups = ", ".join(g["group"] for g in self.groups)
        return f"OnlineResponse({len(self)} rows; {groups})"

    def to_arrow(
        self, full_feature_names: bool | None = None, statuses: bool = False
    ) -> pa.Table:
        full = self._full if full_feature_names is None else full_feature_names
        entity = list(self.entity_columns)
        short = [f for g in self.groups for f in g["features"]]
        # A feature whose name another column also has keeps its group's name.
        taken = entity + short
        names = list(entity)
        columns = [self._table.column(n) for n in entity]
        for group in self.groups:
            g = group["group"]
            for feature in group["features"]:
                qualified = f"{g}__{feature}"
                names.append(qualified if full or taken.count(feature) > 1 else feature)
                columns.append(self._table.column(qualified))
            if statuses:
                for extra in ("status", "event_time"):
                    column = f"{g}__{extra}"
                    if column in self._table.column_names:
                        names.append(column)
                        columns.append(self._table.column(column))
        return pa.Table.from_arrays(columns, names=names)

    def to_dict(
        self, full_feature_names: bool | None = None, statuses: bool = False
    ) -> dict[str, list[Any]]:
        return self.to_arrow(full_feature_names, statuses).to_pydict()

    def to_pandas(
        self, full_feature_names: bool | None = None, statuses: bool = False
    ) -> pandas.DataFrame:
        return self.to_arrow(full_feature_names, statuses).to_pandas()

    def to_df(
        self, full_feature_names: bool | None = None, statuses: bool = False
    ) -> pandas.DataFrame:
        """Feast's name for :meth:`to_pandas`."""
        return self.to_pandas(full_feature_names, statuses)

    def to_polars(
        self, full_feature_names: bool | None = None, statuses: bool = False
    ) -> polars.DataFrame:
        import polars

        frame = polars.from_arrow(self.to_arrow(full_feature_names, statuses))
        assert isinstance(frame, polars.DataFrame)
        return frame

    def statuses(self) -> dict[str, list[str | None]]:
        """Each group's row statuses."""
        return {
            g["group"]: self._table.column(f"{g['group']}__status").to_pylist()
            for g in self.groups
        }
