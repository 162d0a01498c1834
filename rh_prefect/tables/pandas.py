"""pandas DataFrames. A default ``RangeIndex`` is not stored (it comes back as one); any other index is a column."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from rh_prefect.tables.base import Adapter, ArrowSource


class PandasAdapter(Adapter):
    kind = "pandas"
    library = "pandas"
    extra = "all"
    default_format = "pandas"
    accepts = "pandas.DataFrame"

    def matches(self, data: Any) -> bool:
        pd = self.loaded()
        return pd is not None and isinstance(data, pd.DataFrame)

    def to_arrow(self, data: Any) -> ArrowSource:
        return pa.Table.from_pandas(data, preserve_index=not is_default_index(data.index))

    def from_arrow(self, table: pa.Table) -> Any:
        self.require()
        return table.to_pandas()


def is_default_index(index: Any) -> bool:
    """True for the unnamed ``RangeIndex(0, n)`` that pandas creates by itself (nothing worth storing)."""
    import pandas as pd

    return (
        isinstance(index, pd.RangeIndex) and index.name is None and index.start == 0 and index.step == 1
    )
