"""polars DataFrames (a LazyFrame: call ``.collect()`` first)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from rh_prefect.tables.base import Adapter, ArrowSource


class PolarsAdapter(Adapter):
    kind = "polars"
    library = "polars"
    extra = "polars"
    default_format = "polars"
    accepts = "polars.DataFrame"

    def matches(self, data: Any) -> bool:
        pl = self.loaded()
        return pl is not None and isinstance(data, pl.DataFrame)

    def to_arrow(self, data: Any) -> ArrowSource:
        pl = self.require()
        # The oldest compat level gives classic (large_)string columns that every parquet reader understands,
        # rather than string_view.
        return data.to_arrow(compat_level=pl.CompatLevel.oldest())

    def from_arrow(self, table: pa.Table) -> Any:
        pl = self.require()
        return pl.from_arrow(table)
