"""Plain Arrow tables: ``pyarrow.Table``, ``RecordBatch``, ``RecordBatchReader`` and ``pyarrow.dataset.Dataset``."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from rh_prefect.tables.base import Adapter, ArrowSource


class ArrowAdapter(Adapter):
    kind = "arrow"
    default_format = "pyarrow"
    accepts = "pyarrow.Table / RecordBatch / RecordBatchReader / pyarrow.dataset.Dataset"

    def matches(self, data: Any) -> bool:
        if isinstance(data, (pa.Table, pa.RecordBatch, pa.RecordBatchReader)):
            return True
        dataset = _dataset_module()
        return dataset is not None and isinstance(data, dataset.Dataset)

    def to_arrow(self, data: Any) -> ArrowSource:
        if isinstance(data, pa.RecordBatch):
            return pa.Table.from_batches([data])
        if isinstance(data, (pa.Table, pa.RecordBatchReader)):
            return data
        # a pyarrow.dataset.Dataset: scan it lazily, in order
        return data.scanner().to_reader()

    def replayable(self, data: Any) -> bool:
        # A reader is consumed by the write; a retried write could not read it again.
        return not isinstance(data, pa.RecordBatchReader)

    def from_arrow(self, table: pa.Table) -> pa.Table:
        return table


def _dataset_module() -> Any:
    import sys

    return sys.modules.get("pyarrow.dataset")
