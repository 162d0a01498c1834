"""dask DataFrames: written partition by partition, fetched lazily (one partition per parquet file).

With a ``dask.distributed`` Client active, ``fetch()``'s partitions are read in parallel on its workers.
An unnamed index is not stored (as with ``to_parquet(write_index=False)``); a named index is a column.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Optional

import pyarrow as pa

from rh_prefect.tables.base import Adapter, ArrowSource

if TYPE_CHECKING:  # pragma: no cover
    from rh_prefect.tables.dataset import Snapshot


class DaskAdapter(Adapter):
    kind = "dask"
    library = "dask.dataframe"
    extra = "dask"
    lazy = True
    default_format = "pandas"
    accepts = "dask.dataframe.DataFrame"

    def matches(self, data: Any) -> bool:
        dd = self.loaded()
        return dd is not None and isinstance(data, dd.DataFrame)

    def to_arrow(self, data: Any) -> ArrowSource:
        keep_index = data.index.name is not None
        parts = data.to_delayed()
        if not parts:
            return pa.Table.from_pandas(data._meta, preserve_index=keep_index)
        # The first partition fixes the schema; the rest are cast to it (a partition whose string column is all
        # null would otherwise infer another type).
        first = pa.Table.from_pandas(parts[0].compute(), preserve_index=keep_index)

        def batches() -> Iterator[pa.RecordBatch]:
            yield from first.to_batches()
            for part in parts[1:]:
                table = pa.Table.from_pandas(part.compute(), preserve_index=keep_index)
                yield from table.select(first.schema.names).cast(first.schema).to_batches()

        return pa.RecordBatchReader.from_batches(first.schema, batches())

    def from_arrow(self, table: pa.Table) -> Any:
        dd = self.require()
        return dd.from_pandas(table.to_pandas(), npartitions=1)

    def head_from_arrow(self, table: pa.Table) -> Any:
        return table.to_pandas()

    def from_snapshot(self, snapshot: "Snapshot", columns: Optional[list[str]], filter: Any) -> Any:
        dd = self.require()
        schema = snapshot.schema if columns is None else pa.schema([snapshot.schema.field(c) for c in columns])
        meta = schema.empty_table().to_pandas()
        files = list(range(len(snapshot.manifest.files)))
        if not files:
            return dd.from_pandas(meta, npartitions=1)
        return dd.from_map(_ReadFile(snapshot, columns, filter), files, meta=meta, label="rh-table-read",
                           enforce_metadata=False)


class _ReadFile:
    """Reads one parquet file of a snapshot into pandas; picklable, so distributed workers can run it."""

    def __init__(self, snapshot: "Snapshot", columns: Optional[list[str]], filter: Any) -> None:
        self.snapshot, self.columns, self.filter = snapshot, columns, filter

    def __call__(self, index: int) -> Any:
        return self.snapshot.read_file(index, columns=self.columns, filter=self.filter).to_pandas()
