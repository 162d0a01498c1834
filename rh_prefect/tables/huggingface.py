"""Hugging Face ``datasets.Dataset`` (in memory or memory-mapped). Features travel in the Arrow schema metadata."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from rh_prefect.tables.base import Adapter, ArrowSource

_WRITE_BATCH_ROWS = 65_536


class HuggingFaceAdapter(Adapter):
    kind = "huggingface"
    library = "datasets"
    extra = "huggingface"
    default_format = "dict"
    accepts = "datasets.Dataset"

    def matches(self, data: Any) -> bool:
        datasets = self.loaded()
        return datasets is not None and isinstance(data, datasets.Dataset)

    def to_arrow(self, data: Any) -> ArrowSource:
        # Iterating in the "arrow" format honours an indices mapping (after select/shuffle/filter) and streams
        # a memory-mapped dataset batch by batch instead of loading it.
        schema = data.features.arrow_schema
        batches = (
            b for t in data.with_format("arrow").iter(batch_size=_WRITE_BATCH_ROWS) for b in t.cast(schema).to_batches()
        )
        return pa.RecordBatchReader.from_batches(schema, batches)

    def from_arrow(self, table: pa.Table) -> Any:
        datasets = self.require()
        return datasets.Dataset(table)
