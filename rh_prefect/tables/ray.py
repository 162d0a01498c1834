"""Ray Datasets (``ray.data.Dataset``). Ray is an optional extra: ``pip install 'rh-prefect[ray]'``.

Written batch by batch from ``iter_batches``; fetched lazily, one Ray read task per parquet file of the table's
version, so reading runs on the Ray cluster in parallel. The tasks read through the version's picklable
:class:`~rh_prefect.tables.dataset.Snapshot` (as the dask kind does), not ``ray.data.read_parquet``: that one needs
a picklable pyarrow filesystem, which an SSH connection is not, and refuses row filters since Ray 2.5x.
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
        files = len(snapshot.manifest.files)
        if not files:
            schema = snapshot.schema if columns is None else pa.schema([snapshot.schema.field(c) for c in columns])
            return rd.from_arrow(schema.empty_table())
        # One item per file, one block each: Ray schedules the reads in parallel and keeps the file order.
        items = rd.from_items([{"file": i} for i in range(files)], override_num_blocks=files)
        return items.map_batches(_ReadFiles(snapshot, columns, filter), batch_size=1, batch_format="pyarrow",
                                 zero_copy_batch=True)


class _ReadFiles:
    """Reads the parquet files named in a batch of ``{"file": index}`` rows; picklable for Ray's workers."""

    def __init__(self, snapshot: "Snapshot", columns: Optional[list[str]], filter: Any) -> None:
        self.snapshot, self.columns, self.filter = snapshot, columns, filter

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = [self.snapshot.read_file(i, columns=self.columns, filter=self.filter)
                  for i in batch.column("file").to_pylist()]
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)
