"""Arrow shapes: what a table kind hands the storage format (:data:`ArrowSource`), and the batch formats of
``Table.stream()`` (what each batch of rows is handed to the caller as)."""

from __future__ import annotations

from typing import Any, Callable, Union

import pyarrow as pa

from rh_prefect.errors import InvalidArgument

#: Table data as Arrow: a whole Table, or a RecordBatchReader that streams it (bounded memory)
ArrowSource = Union[pa.Table, pa.RecordBatchReader]


def _numpy(batch: pa.RecordBatch) -> dict[str, Any]:
    return {name: col.to_numpy(zero_copy_only=False) for name, col in zip(batch.schema.names, batch.columns)}


def _polars(batch: pa.RecordBatch) -> Any:
    import polars as pl

    return pl.from_arrow(batch)


#: name -> converter from a pyarrow RecordBatch
FORMATS: dict[str, Callable[[pa.RecordBatch], Any]] = {
    "pyarrow": lambda b: b,
    "pandas": lambda b: b.to_pandas(),
    "numpy": _numpy,
    "dict": lambda b: b.to_pydict(),
    "polars": _polars,
}
_ALIASES = {"arrow": "pyarrow", "pa": "pyarrow", "pd": "pandas", "np": "numpy", "pydict": "dict"}


def check_format(name: str) -> str:
    """The canonical format name, or :class:`InvalidArgument` listing the formats."""
    key = _ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in FORMATS:
        raise InvalidArgument(f"Unknown batch format {name!r}; use one of: {', '.join(FORMATS)}.")
    return key


def converter(name: str) -> Callable[[pa.RecordBatch], Any]:
    return FORMATS[check_format(name)]
