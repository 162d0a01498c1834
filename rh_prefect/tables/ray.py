"""Ray Datasets (``ray.data.Dataset``). Ray is an optional extra: ``pip install 'rh-prefect[ray]'``.

Written batch by batch from ``iter_batches``; fetched lazily with ``ray.data.read_parquet`` over the table
version's files, so reading runs on the Ray cluster in parallel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import pyarrow as pa

from rh_prefect.tables.base import Adapter, ArrowSource

if TYPE_CHECKING:  # pragma: no cover
    from rh_prefect.tables.dataset import Snapshot

_WRITE_BATCH_ROWS = 65_536


class RayAdapter(Adapter):
    kind = "ray"
    library = "ray.data"
    extra = "ray"
    lazy = True
    default_format = "numpy"
    accepts = "ray.data.Dataset"

    def matches(self, data: Any) -> bool:
        rd = self.loaded()
        return rd is not None and isinstance(data, rd.Dataset)

    def to_arrow(self, data: Any) -> ArrowSource:
        self.require()
        batches = iter(data.iter_batches(batch_size=_WRITE_BATCH_ROWS, batch_format="pyarrow"))
        first = next(batches, None)
        if first is None:
            return data.schema().base_schema.empty_table()
        schema = first.schema

        def gen() -> Any:
            yield from first.to_batches()
            for table in batches:
                yield from table.cast(schema).to_batches()

        return pa.RecordBatchReader.from_batches(schema, gen())

    def from_arrow(self, table: pa.Table) -> Any:
        rd = self.require()
        return rd.from_arrow(table)

    def from_snapshot(self, snapshot: "Snapshot", columns: Optional[list[str]], filter: Any) -> Any:
        rd = self.require()
        files = snapshot.file_paths()
        if not files:
            return rd.from_arrow(snapshot.schema.empty_table())
        kwargs: dict[str, Any] = {"filesystem": snapshot.arrow_fs, "columns": columns}
        if snapshot.manifest.partition_cols:
            kwargs["partitioning"] = rd.datasource.Partitioning("hive")
        if filter is not None:
            kwargs["filter"] = filter
        return rd.read_parquet(files, **kwargs)
