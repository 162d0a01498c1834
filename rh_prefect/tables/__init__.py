"""Table storage and table kinds: the parquet dataset format (:mod:`.dataset`), streaming (:mod:`.stream`),
batch formats (:mod:`.formats`) and one adapter module per kind (arrow, pandas, dask, ray, huggingface, polars).

The user-facing Table block is :mod:`rh_prefect.resources.table`; this package knows nothing about Prefect.
"""

from rh_prefect.tables.base import KINDS, Adapter, adapter, adapter_for_data

__all__ = ["KINDS", "Adapter", "adapter", "adapter_for_data"]
