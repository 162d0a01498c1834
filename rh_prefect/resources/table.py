"""Table: a parquet table on any system, written atomically and streamed in exact batches.

One block type ("rh Table") covers every kind of table data; the kind (arrow, pandas, dask, ray, huggingface,
polars) is a field, and :class:`PandasTable`, :class:`DaskTable`, ... are thin subclasses that only choose the
adapter (:mod:`rh_prefect.tables`) converting to and from Arrow. Storage, atomic versions and streaming are
the same code for every kind (:mod:`rh_prefect.tables.dataset`, :mod:`rh_prefect.tables.stream`).

Example:
    ```python
    import pandas as pd
    import rh_prefect as rh

    df = pd.DataFrame({"id": range(1000), "text": [f"row {i}" for i in range(1000)]})
    t = rh.table(data=df, name="@/my_pandas_table", path="/preproc-data/pandas", system="s3", mkdir=True).save()
    reloaded = rh.table(name="@/my_pandas_table", dryrun=True)   # a reference: no data is read
    for batch in reloaded.stream(batch_size=100):                # pandas DataFrames of exactly 100 rows
        ...
    ```
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import queue
import random
import threading
import time
import weakref
from typing import Any, ClassVar, Iterator, Literal, Optional, Union

import pyarrow as pa
from prefect import task
from prefect.context import TaskRunContext
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from rh_prefect import settings
from rh_prefect.runtime import events, registry, tasks
from rh_prefect.errors import InvalidArgument, NotFound, RhError
from rh_prefect.resources.base import StoredResource, SystemArg, place
from rh_prefect.resources.cluster import Cluster
from rh_prefect.systems import System
from rh_prefect.tables.base import KINDS, Adapter, adapter, adapter_for_data
from rh_prefect.tables.formats import check_format
from rh_prefect.versions import Version, check_version_id

logger = logging.getLogger("rh_prefect.table")


class _OnFirstUse:
    """A module imported when one of its attributes is first read. ``dataset`` and ``stream`` need
    ``pyarrow.dataset``, which imports pandas: ~0.2 s that every process loading rh block types would pay
    (Prefect imports ``rh_prefect.blocks`` through the ``prefect.collections`` entry point whenever it resolves
    a block, e.g. in each flow run of a deployment with block parameters), whether or not it touches a Table."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import importlib

        return getattr(importlib.import_module(self._name), attr)


dataset: Any = _OnFirstUse("rh_prefect.tables.dataset")
stream: Any = _OnFirstUse("rh_prefect.tables.stream")
Kind = Literal["arrow", "pandas", "dask", "ray", "huggingface", "polars"]

_CODE_EXAMPLE = """```python
import rh_prefect as rh

t = rh.table(name="@/my_table")            # a PandasTable, DaskTable, ... as it was saved
df = t.fetch(columns=["id", "text"])       # the kind's own object (dask and ray: lazy)
for batch in t.stream(batch_size=100, shuffle_seed=0):
    ...
```"""


class Table(StoredResource):
    """A table stored as a parquet dataset on the local disk, a cluster (SSH), S3 or GCS.

    Writes are atomic (readers see the old or the new version, never a mix); appends check the schema. Each write
    makes an immutable version: the block records the one it describes (``version``) and reads exactly that one;
    ``versions()`` lists the kept ones, ``rh.table(name=..., version=...)`` reads an older one, ``rollback()``
    makes one current again. ``stream()`` yields exact-size batches, in table order or a seeded shuffle, reading ahead
    in the background with bounded memory. ``fetch()`` returns the kind's own object (``pyarrow.Table`` here;
    see PandasTable, DaskTable, RayTable, HuggingFaceTable, PolarsTable).

    Example:
        ```python
        import pyarrow as pa
        import rh_prefect as rh

        t = rh.table(data=pa.table({"a": [1, 2, 3]}), name="my-table", path="/tmp/my-table").save()
        assert len(rh.table(name="my-table")) == 3
        ```
    """

    _block_type_name = "rh Table"
    _description = (
        "A parquet table (from pyarrow, pandas, dask, ray, Hugging Face datasets or polars) on local disk, a "
        "cluster (SSH), S3 or GCS: atomic writes, exact-size streaming, copies between systems."
    )
    _code_example = _CODE_EXAMPLE
    _documentation_url = None
    # Every kind shares this block schema: the JSON schema title must not follow the Python class name.
    model_config = ConfigDict(title="Table")
    #: the kind a class stands for; the subclasses only change this
    _default_kind: ClassVar[str] = "arrow"

    kind: Optional[Kind] = Field(
        default=None, title="Kind",
        description="What fetch() returns: arrow (pyarrow.Table), pandas, dask, ray, huggingface or polars.",
    )
    partition_cols: Optional[list[str]] = Field(
        default=None, title="Partition columns", description="Columns the data is hive-partitioned by, if any."
    )
    table_schema: Optional[str] = Field(
        default=None, title="Schema", description="Columns and types, from the parquet metadata of the last write."
    )
    row_count: Optional[int] = Field(
        default=None, title="Rows", description="Number of rows of the version this block describes."
    )
    version: Optional[str] = Field(
        default=None, title="Version",
        description="The stored version this block describes and reads (its manifest is kept in '_rh_versions/' "
        "under the path). Empty: the table's current version.",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, title="Metadata", description="Free-form information about the table (JSON)."
    )
    stream_format: Optional[str] = Field(
        default=None, title="Stream format",
        description="Default batch format of stream(): pyarrow, pandas, numpy, dict or polars. Empty: per kind.",
    )
    _data: Any = PrivateAttr(default=None)
    #: the version this object last committed (None: it wrote nothing)
    _written: Optional[str] = PrivateAttr(default=None)
    #: loaded at a fixed version (rh.table(..., version=V)): reads only that version, writes nothing

    @model_validator(mode="after")
    def _check_kind(self) -> "Table":
        if self.kind is None:
            self.kind = type(self)._default_kind  # type: ignore[assignment]
        elif type(self) is not Table and self.kind != type(self)._default_kind:
            raise ValueError(f"A {type(self).__name__} has kind {type(self)._default_kind!r}, not {self.kind!r}.")
        if self.stream_format is not None:
            self.stream_format = check_format(self.stream_format)
        return self

    # -- one block type for every kind --------------------------------------------------------------------
    @classmethod
    def __dispatch_key__(cls) -> Optional[str]:
        # Prefect's block registry maps a block type slug to ONE class. The kind subclasses get keys of their
        # own so that "rh-table" keeps dispatching to Table; loading then picks the subclass by `kind`.
        if "_block_type_name" in cls.__dict__:  # Table itself (the check runs while the class is being built)
            return super().__dispatch_key__()
        return f"{cls.get_block_type_slug()}:{cls._default_kind}"

    @classmethod
    def _from_block_document(cls, block_document: Any) -> "Table":
        kind = (block_document.data or {}).get("kind") or "arrow"
        target = _KIND_CLASSES.get(kind, Table)
        if not issubclass(target, cls):
            raise NotFound(
                f"Block {block_document.name!r} holds a {target.__name__} (kind {kind!r}), not a {cls.__name__}; "
                f"load it with rh.table(name=...) or {target.__name__}.load(...)."
            )
        return super(Table, target)._from_block_document(block_document)  # type: ignore[misc]

    @classmethod
    def _load_named(cls, name: str) -> "Table":
        obj = registry.Resource._load_named.__func__(Table, name)  # type: ignore[attr-defined]
        if not isinstance(obj, cls):
            raise NotFound(f"{name!r} is a {type(obj).__name__}, not a {cls.__name__}; load it with rh.table(name={name!r}).")
        return obj

    # Prefect reads a block's fields with dict(block) (when a block is a task or flow parameter); since
    # iterating a Table yields its rows, dict() must go through the mapping protocol instead.
    def keys(self) -> list[str]:
        return [k for k, _ in super().__iter__()]

    def __getitem__(self, key: str) -> Any:
        if key in type(self).model_fields or key in (self.__pydantic_extra__ or {}):
            return getattr(self, key)
        raise KeyError(key)

    def __bool__(self) -> bool:
        return True  # a Table is a reference, not a container: no truthiness from len(), which reads storage

    # -- helpers ------------------------------------------------------------------------------------------
    @property
    def adapter(self) -> Adapter:
        """The adapter converting this kind to and from Arrow."""
        return adapter(self.kind or self._default_kind)

    def _label(self) -> str:
        return f"table {self.name!r} ({self.url})" if self.name else f"table {self.url}"

    def _snapshot(self) -> dataset.Snapshot:
        return dataset.Snapshot.open(self.sys, self.fs_path, self.url, self.version)

    def _manifest(self) -> dataset.Manifest:
        return self._snapshot().manifest

    def _record(self, manifest: dataset.Manifest) -> None:
        self.table_schema = dataset.schema_text(manifest.schema)
        self.row_count = manifest.num_rows
        self.partition_cols = list(manifest.partition_cols) or None
        self.version = manifest.version

    def save(self, name: Optional[str] = None, overwrite: Optional[bool] = None) -> "Table":  # type: ignore[override]
        """Register the table by name and return it (see :meth:`rh_prefect.runtime.registry.Resource.save`)."""
        self._refuse_if_pinned("be saved (that would re-point the name without a rollback)")
        super().save(name, overwrite)
        self._settle()
        return self

    def _settle(self) -> None:
        """After registering a version this object wrote: if another writer committed a newer version of the same
        table meanwhile (and registered first), record that version's schema and row count instead, so the
        entry describes what is stored. Only the small pointer file is read."""
        for _ in range(10):
            if self._written is None:
                return
            try:
                current = dataset.read_manifest(self.sys, self.fs_path)
            except Exception as exc:  # the data is committed and registered; the counts are informational
                logger.warning("could not re-read %s after registering it: %s", self._label(), exc)
                return
            if current is None or current.version == self._written:
                return
            self._record(current)
            self._written = current.version
            # the other writer announced its version (under this name when it registered it): not again here
            self._announced = (self.event_resource()["prefect.resource.id"], current.version)
            super().save()

    # -- writing ------------------------------------------------------------------------------------------
    def write(self, data: Any = None, mode: str = "overwrite") -> "Table":
        """Write ``data`` (or the data this table was created with) and return the table.

        ``mode="overwrite"`` replaces the table atomically; ``mode="append"`` adds the rows after those of the
        table's current version (they must have the same columns and types:
        :class:`~rh_prefect.errors.SchemaMismatch` otherwise). Either way a new version is made (see
        :meth:`versions`), and this table then describes and reads it.
        A saved table's registry entry is updated with the new schema and row count.

        Example:
            >>> t = rh.table(data=df, path="/tmp/t")
            >>> t.write(more_rows, mode="append")
        """
        self._refuse_if_pinned("be written")
        if mode not in ("overwrite", "append"):
            raise InvalidArgument(f"mode must be 'overwrite' or 'append', not {mode!r}.")
        if data is None:
            data = self._data
            if data is None:
                raise InvalidArgument(f"Nothing to write to {self._label()}: pass data, e.g. table.write(df).")
        ad = adapter_for_data(data)
        self.sys.check_writable(self.path or "")
        _ensure_bucket(self.sys, self.fs_path, create=False)
        job = _WriteJob(self.sys, self.fs_path, ad, data, mode, tuple(self.partition_cols or ()), self.kind or "arrow",
                        self.metadata)
        manifest = tasks.run(_write_task, job)
        self._written = manifest.version
        self._data = None
        self._record(manifest)
        self._announce(events.WRITTEN, asset=True, payload={"mode": mode, "rows": manifest.num_rows})
        if tasks.in_prefect_run():
            self._publish_artifact()
        if self._block_document_id is not None:
            self.save()  # keep the registry entry's schema and row count true
        return self

    #: rows shown in the table artifact a write publishes inside a flow
    ARTIFACT_ROWS: ClassVar[int] = 10

    def _publish_artifact(self) -> None:
        """Inside a Prefect run: a table artifact with the first rows, described by schema and row count, so the
        UI shows what was written."""
        from prefect.artifacts import create_table_artifact

        first = tasks.run(_read_task, self.sys, self.fs_path, self.url, None, None, self.ARTIFACT_ROWS,
                          self.version)
        rows = [{k: _artifact_cell(v) for k, v in row.items()} for row in first.to_pylist()]
        what = self.name or self.url
        create_table_artifact(
            table=rows,
            description=f"**{what}** ({self.kind}) at `{self.url}`: {self.row_count} rows; first {len(rows)} shown.\n\n"
            f"Schema:\n```\n{self.table_schema}\n```",
        )

    # -- reading ------------------------------------------------------------------------------------------
    def fetch(self, columns: Optional[list[str]] = None, filters: Any = None) -> Any:
        """The table (or some columns / rows) as the kind's own object: pyarrow.Table, pandas or polars
        DataFrame, datasets.Dataset; a lazy dask DataFrame or Ray Dataset (read in parallel when computed).

        ``filters``: a pyarrow expression (``pc.field("a") > 3``) or tuples (``[("a", ">", 3)]``).

        Example:
            >>> rh.table(name="my-table").fetch(columns=["id"], filters=[("id", "<", 10)])
        """
        if self._data is not None:
            return self._data
        self._note_read()
        ad = self.adapter
        expr = dataset.to_expression(filters)
        if ad.lazy:
            snap = self._snapshot()
            return ad.from_snapshot(snap, snap.columns(columns), expr)
        table = tasks.run(_read_task, self.sys, self.fs_path, self.url, _opt_list(columns), expr, None,
                          self.version)
        return ad.from_arrow(table)

    @property
    def data(self) -> Any:
        """The whole table, as :meth:`fetch` returns it (Runhouse's ``table.data``)."""
        return self.fetch()

    def head(self, n: int = 5, columns: Optional[list[str]] = None) -> Any:
        """The first ``n`` rows, in memory, as the kind's object (dask: pandas); reads only the first row groups."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise InvalidArgument(f"head(n): n must be a non-negative int, got {n!r}.")
        self._note_read()
        table = tasks.run(_read_task, self.sys, self.fs_path, self.url, _opt_list(columns), None, n, self.version)
        return self.adapter.head_from_arrow(table)

    def stream(
        self,
        batch_size: int,
        columns: Optional[list[str]] = None,
        filters: Any = None,
        drop_last: bool = False,
        shuffle_seed: Optional[int] = None,
        shuffle_buffer_size: Optional[int] = None,
        prefetch_batches: int = 1,
        batch_format: Optional[str] = None,
        *,
        start_row: int = 0,
    ) -> "TableStream":
        """Iterate over the table in batches of exactly ``batch_size`` rows (the last may be shorter, or dropped
        with ``drop_last``).

        Without ``shuffle_seed`` rows come in table order; with it, in a deterministic shuffle across files and
        row groups (mixed within windows of ``shuffle_buffer_size`` rows; default four row groups).
        ``batch_format``: "pyarrow", "pandas", "numpy" (dict of arrays), "dict" (dict of lists) or "polars";
        default: the saved ``stream_format``, else the kind's (pandas for PandasTable, dict for Hugging Face, ...).
        A background thread reads about ``prefetch_batches`` batches ahead (0: no thread). The stream runs as a
        Prefect task; a dropped connection is retried and resumes at the right row. ``start_row`` skips rows
        (resume a stream from ``stream.rows_delivered``).

        Example:
            >>> for batch in rh.table(name="my-table").stream(batch_size=100, shuffle_seed=1):
            ...     train_step(batch)
        """
        fmt = batch_format or self.stream_format or self.adapter.default_format
        spec = stream.StreamSpec.make(batch_size, columns, filters, drop_last, shuffle_seed, shuffle_buffer_size,
                                      prefetch_batches, fmt, start_row)
        self._note_read()
        return TableStream(self.sys, self.fs_path, self.url, spec, self.version)

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        """Rows as dicts, in table order."""
        for batch in self.stream(batch_size=_ROW_BATCH, batch_format="pyarrow"):
            yield from batch.to_pylist()

    def __len__(self) -> int:
        return self.num_rows

    @property
    def num_rows(self) -> int:
        """Rows in the current version, from the table's metadata (no data is read)."""
        return self._manifest().num_rows

    @property
    def schema(self) -> pa.Schema:  # type: ignore[override]
        """The Arrow schema of the current version, from the table's metadata (no data is read)."""
        return self._manifest().schema

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def exists_in_system(self) -> bool:
        """True if a table is stored at this table's path."""
        return dataset.read_manifest(self.sys, self.fs_path) is not None

    # -- versions -------------------------------------------------------------------------------------------
    def data_version(self) -> str:
        """The version this table reads, for caches keyed on the data (``rh.DATA_VERSIONS``): the version it
        records (loaded by name, pinned with ``version=``, or just written) - nothing is read; a table that
        records none (stored by an older release) reads its pointer, one small file. Data handed over and not
        written yet is hashed."""
        if self._data is not None:
            from prefect.utilities.hashing import hash_objects

            return "unwritten-" + (hash_objects(self.adapter.to_arrow(self._data), raise_on_failure=True) or "")
        if self.version:
            return self.version
        with self.sys.guard(self._label()):
            manifest = dataset.read_manifest(self.sys, self.fs_path)
        return manifest.version if manifest is not None else "absent"

    def versions(self) -> list[Version]:
        """The kept versions of the table, oldest first, read from storage: each with its id, creation time,
        rows, data bytes and checksum (sha256 of its manifest); ``current`` marks the one the table's pointer
        names. Each write (overwrite or append) adds one; the newest ``settings.table_versions_kept`` (default 5,
        ``RH_PREFECT_TABLE_VERSIONS_KEPT``) are kept, and always the current one.

        Example:
            >>> [v.id for v in rh.table(name="/ds/bert_preproc").versions()]
            ['v-20261204T112144123456Z-1a2b3c4d', 'v-20261204T113001000001Z-5e6f7a8b']
            >>> old = rh.table(name="/ds/bert_preproc", version="v-20261204T112144123456Z-1a2b3c4d")
        """
        with self.sys.guard(self._label()):
            return dataset.list_versions(self.sys, self.fs_path)

    def rollback(self, version: str) -> "Table":
        """Make the kept version ``version`` the table's current version again, in one atomic step (the table's
        pointer is rewritten with that version's manifest; nothing is copied or dropped), and return the table,
        which then reads that version. A saved table's registry entry follows, so loads by name read it too.

        Raises :class:`~rh_prefect.errors.NotFound` (listing the kept versions) when the version is not kept, and
        changes nothing then.

        Example:
            >>> t = rh.table(name="/ds/bert_preproc")
            >>> t.rollback(t.versions()[-2].id)
        """
        self._refuse_if_pinned("be rolled back")
        check_version_id(version, self._label())
        self.sys.check_writable(self.path or "")
        manifest = tasks.run(_rollback_task, self.sys, self.fs_path, version, self._label())
        self._written = manifest.version
        self._record(manifest)
        self._announce(events.WRITTEN, asset=True, payload={"rollback": True, "rows": manifest.num_rows})
        if self._block_document_id is not None:
            self.save()
        return self

    def _pin(self, version: str) -> "Table":
        """Fix this table at the kept version ``version`` (read-only); NotFound naming the kept ones otherwise."""
        check_version_id(version, self._label())
        with self.sys.guard(self._label()):
            manifest = dataset.read_version(self.sys, self.fs_path, version)
            if manifest is None:
                raise dataset.missing_version(self.sys, self.fs_path, version, self._label())
        self._record(manifest)
        self._pinned = True
        return self

    # -- moving and deleting -------------------------------------------------------------------------------
    def to(self, system: SystemArg, path: Optional[str] = None, via: str = "auto") -> "Table":
        """Copy the table's current version to another system or place and return the Table there (not saved).

        The files go through the copy engine as a retryable task (files already at the destination are
        skipped, so a re-run resumes); the destination's pointer is committed last, so readers there see the
        old or the new table, never a partial copy. ``via``: where the bytes flow - ``"worker"`` (a flow run on the
        worker of the cluster holding the table), ``"local"`` (this process) or ``"auto"`` (the worker when one is
        online).

        Example:
            >>> s3_table = rh.table(name="my-table").to("s3", path="/my-bucket/tables/my-table")
        """
        return super().to(system, path, via=via)

    def copy_to(self, system: SystemArg, path: Optional[str] = None) -> "Table":
        """Copy through this process (the engine, as a retryable task) and return the Table there."""
        dst_sys, dst_path = self.destination(system, path)
        dst_root = dst_sys.fs_path(dst_path)
        dst_sys.check_writable(dst_path)
        dst_sys.ensure_container(dst_root)
        snap = self._snapshot()
        report = None
        same_place = dst_sys == self.sys and dst_root.rstrip("/") == self.fs_path.rstrip("/")
        if not same_place:
            keys = [f.path for f in snap.manifest.files]
            if keys:
                report = tasks.run(tasks.copy_tree_task, self.sys, self.fs_path, dst_sys, dst_root, keys=keys)
            dataset.commit(dst_sys, dst_root, snap.manifest)
        new = self.relocated(dst_sys, dst_path)
        new._last_report = report  # what the copy did (files, bytes, skips), e.g. for the transfer flow's summary
        new._record(snap.manifest)
        if not same_place:
            new.announce_copy(self)
        return new

    def _relocated_extra(self, new: "Table") -> None:
        new.metadata = dict(self.metadata)
        new._data = None
        new._pinned = False  # a copy is a table of its own, whose current version is the one copied

    def has_unwritten_data(self) -> bool:
        return self._data is not None

    def rm(self) -> None:
        """Delete the table's data, every version (pointer first, so readers never see a half-deleted table).
        The registry entry stays; remove it with ``rh.delete(name)``."""
        self._refuse_if_pinned("delete the table")
        self.sys.check_writable(self.path or "")
        dataset.remove_table(self.sys, self.fs_path)
        self._announce(events.DELETED)


class PandasTable(Table):
    """A Table whose data is a pandas DataFrame: ``fetch()`` returns one, ``stream()`` yields DataFrames."""

    _default_kind = "pandas"


class DaskTable(Table):
    """A Table whose data is a dask DataFrame: ``fetch()`` is lazy (one partition per parquet file, read in
    parallel on the active dask.distributed Client when computed); ``stream()`` yields pandas DataFrames."""

    _default_kind = "dask"


class RayTable(Table):
    """A Table whose data is a Ray Dataset: ``fetch()`` is a lazy ``ray.data`` read of the parquet files.
    Needs ``pip install 'rh-prefect[ray]'``."""

    _default_kind = "ray"


class HuggingFaceTable(Table):
    """A Table whose data is a Hugging Face ``datasets.Dataset``; ``stream()`` yields dicts of lists."""

    _default_kind = "huggingface"


class PolarsTable(Table):
    """A Table whose data is a polars DataFrame; ``stream()`` yields polars DataFrames."""

    _default_kind = "polars"


_KIND_CLASSES: dict[str, type[Table]] = {
    "arrow": Table, "pandas": PandasTable, "dask": DaskTable, "ray": RayTable, "huggingface": HuggingFaceTable,
    "polars": PolarsTable,
}
assert set(_KIND_CLASSES) == set(KINDS)
#: rows per batch when iterating rows
_ROW_BATCH = 4096


# ------------------------------------------------------------------------------------------------- streaming
class TableStream:
    """An iterator over a table's batches (see :meth:`Table.stream`).

    ``rows_delivered`` counts the rows handed out so far; ``table.stream(..., start_row=s.rows_delivered)``
    continues a stream where it stopped.

    Each stream is one Prefect task run ("rh-table-stream"): it starts once the stream has run for
    ``settings.stream_record_after`` (a shorter stream is recorded when it ends), ends with it (Completed with the
    number of rows delivered, or Failed with the stream's error) and nests under the caller's flow run.
    The task run is kept beside the data path rather than on it: batches never pass through Prefect's generator
    machinery, so the ~50 ms of task-run bookkeeping does not delay the first batch, no Prefect code runs per
    batch, and a sub-second stream does not share the GIL with it. :meth:`recorded` waits for the record. Retries follow the package's policy per row group inside the reader (a Prefect-level retry would
    replay the stream from its first row).
    """

    def __init__(self, system: System, root: str, url: str, spec: stream.StreamSpec,
                 version: Optional[str] = None) -> None:
        self._system, self._root, self._url, self.spec = system, root, url, spec
        #: the version this stream reads (None until it starts, for a table that records no version)
        self.version = version
        self._fixed = version is not None
        self.rows_delivered = 0
        self._iter: Optional[Iterator[Any]] = None
        self._reader: Optional[stream.background] = None
        self._run: Optional[_StreamRun] = None

    def __iter__(self) -> Iterator[Any]:
        # The generator itself: a for loop then resumes it directly, with no Python call per batch in between.
        if self._iter is None:
            self._iter = self._batches()
        return self._iter

    def __next__(self) -> Any:
        return next(iter(self))

    def close(self) -> None:
        """Stop reading (also happens when the stream is garbage-collected or a for loop breaks)."""
        if self._iter is not None:
            self._iter.close()  # type: ignore[attr-defined]
        if self._reader is not None:
            self._reader.close(wait=True)

    def _batches(self) -> Iterator[Any]:
        # The task run starts once the stream has run for settings.stream_record_after: a long stream shows as Running
        # while it runs, and a short one (a fraction of a second) is recorded when it ends, its bookkeeping
        # (~50 ms of CPU) no longer competing with the data for the GIL.
        self._run = None
        deadline = time.monotonic() + settings.current().stream_record_after
        try:
            for batch in self._read():
                yield batch
                if self._run is None and time.monotonic() >= deadline:
                    self._run = _StreamRun(self._url, self.spec)
        except BaseException as exc:
            self._run = self._run or _StreamRun(self._url, self.spec)
            self._run.finish(self.rows_delivered, exc if not isinstance(exc, GeneratorExit) else None)
            raise
        self._run = self._run or _StreamRun(self._url, self.spec)
        self._run.finish(self.rows_delivered)

    def recorded(self, timeout: Optional[float] = None) -> bool:
        """Wait until this stream's Prefect task run has ended (it is recorded on a thread of its own, after the
        stream's last batch for a short stream); True once it has, False on timeout or if it never started."""
        if self._run is None:
            return False
        self._run._thread.join(timeout)
        return not self._run._thread.is_alive()

    def _read(self) -> Iterator[Any]:
        restarts = 0
        while True:
            snap = dataset.Snapshot.open(self._system, self._root, self._url, self.version if self._fixed else None)
            self.version = snap.manifest.version
            snap.columns(self.spec.columns)  # fail on a bad column name before starting anything
            spec = self.spec.starting_at(self.spec.start_row + self.rows_delivered)
            chunks = self._reader = stream.background(lambda: stream.chunks(snap, spec, _retry_policy()),
                                                      stream.read_ahead_depth(snap, spec))
            try:
                for chunk in chunks:
                    for rows, batch in chunk:
                        self.rows_delivered += rows
                        yield batch
                    del chunk, batch  # hold no row group while the next one is prepared
                return
            except FileNotFoundError as exc:
                if self._fixed:  # a kept version never changes: it was dropped by retention, or deleted
                    raise NotFound(
                        f"Version {self.version} of table {self._url} was dropped (retention keeps the newest "
                        f"{settings.current().table_versions_kept}) or deleted while being streamed, after "
                        f"{self.rows_delivered} rows. Load the table again by name to read its current version."
                    ) from exc
                # A listed file vanished: the current version was replaced and dropped after the pointer was read.
                now = dataset.read_manifest(self._system, self._root)
                if now is None or now.version == snap.manifest.version:
                    raise NotFound(f"A file of table {self._url} is missing ({exc}); the table is damaged or was "
                                   "deleted. Write it again.") from exc
                if self.rows_delivered == 0 and restarts < 3:
                    restarts += 1
                    continue  # nothing handed out yet: read the new version instead
                raise NotFound(
                    f"Table {self._url} was overwritten while being streamed, after {self.rows_delivered} rows; "
                    "its old version is gone. Start a new stream to read the new version."
                ) from exc
            finally:
                chunks.close()


class _StreamRun:
    """The Prefect task run standing for one stream, on a thread of its own (see :class:`TableStream`)."""

    _open: "weakref.WeakSet[_StreamRun]" = weakref.WeakSet()
    _exit_hook = False

    def __init__(self, url: str, spec: stream.StreamSpec) -> None:
        self._outcome: "queue.SimpleQueue[tuple[int, Optional[BaseException]]]" = queue.SimpleQueue()
        self._finished = False
        context = contextvars.copy_context()  # so the task run nests under the caller's flow run
        self._thread = threading.Thread(target=context.run, args=(self._run, url, spec), name="rh-table-stream-run",
                                        daemon=True)
        if not _StreamRun._exit_hook:
            _StreamRun._register_exit_hook()
        try:
            self._thread.start()
        except RuntimeError as exc:  # no thread to spare (memory exhausted): the data matters more than the record
            logger.warning("could not record the stream of %s as a Prefect task run: %s", url, exc)
            self._finished = True
            return
        _StreamRun._open.add(self)

    def _run(self, url: str, spec: stream.StreamSpec) -> None:
        try:
            tasks.run(_stream_task, url, spec.batch_size, spec.shuffle_seed, self._outcome)
        except _StreamFailed:
            pass  # the stream's own error already reached its consumer; the task run records it as Failed
        except Exception as exc:  # the data does not depend on the bookkeeping: say so and carry on
            logger.warning("could not record the stream of %s as a Prefect task run: %s: %s", url,
                           type(exc).__name__, exc)

    def finish(self, rows: int, error: Optional[BaseException] = None) -> None:
        if not self._finished:
            self._finished = True
            self._outcome.put((rows, error))

    def __del__(self) -> None:
        self.finish(-1)  # abandoned without finishing: end the task run (never join here)

    @classmethod
    def _register_exit_hook(cls) -> None:
        """End open stream runs at interpreter exit, before Prefect drains its event queue.

        Prefect flushes its events in a ``threading`` exit hook, which runs before any ``atexit`` handler and
        after which no event can be sent (a late one prints a "can't register atexit after shutdown" traceback).
        Threading's exit hooks run last-registered-first, so the events service is started first and this hook
        registered after it: a short script that reads a table and exits then records its stream cleanly.
        """
        from prefect.events.worker import EventsWorker

        cls._exit_hook = True
        try:
            EventsWorker.instance()
            threading._register_atexit(cls._finish_all)  # type: ignore[attr-defined]
        except Exception:  # no such hook on this Python, or already shutting down: fall back to atexit
            atexit.register(cls._finish_all)

    @classmethod
    def _finish_all(cls) -> None:
        # At interpreter exit: end every open task run and give it a moment to reach the server.
        runs = list(cls._open)
        for run in runs:
            run.finish(-1)
        for run in runs:
            run._thread.join(timeout=5)


class _StreamFailed(RhError):
    """Raised inside the stream's task run so Prefect records the stream's error."""


# ------------------------------------------------------------------------------------------------- tasks
class _WriteJob:
    """Everything a write needs. A plain object, so Prefect does not walk the data looking for futures."""

    def __init__(self, system: System, root: str, ad: Adapter, data: Any, mode: str,
                 partition_cols: tuple[str, ...], kind: str, metadata: dict[str, Any]) -> None:
        self.system, self.root, self.adapter, self.data, self.mode = system, root, ad, data, mode
        self.partition_cols, self.kind, self.metadata = partition_cols, kind, metadata
        self.attempts = 0


@tasks.rh_task("rh-table-write")
def _write_task(job: _WriteJob) -> dataset.Manifest:
    """Write a new version of a table and commit it (see :mod:`rh_prefect.tables.dataset`)."""
    job.attempts += 1
    if job.attempts > 1:
        if not job.adapter.replayable(job.data):
            raise RhError(
                "The write failed part-way and its data was a one-shot RecordBatchReader, which cannot be read "
                "again; nothing was committed. Pass a pyarrow.Table (or re-create the reader) and write again."
            )
        job.system.reset()  # retrying after a transient failure: reconnect
    base = None
    if job.mode == "append":
        base = dataset.read_manifest(job.system, job.root)  # appending to nothing creates the table
    source = job.adapter.to_arrow(job.data)
    manifest = dataset.write_version(job.system, job.root, source, partition_cols=job.partition_cols,
                                     kind=job.kind, metadata=job.metadata, base=base)
    dataset.commit(job.system, job.root, manifest, expect_version=base.version if base is not None else None)
    return manifest


@tasks.rh_task("rh-table-rollback")
def _rollback_task(system: System, root: str, version: str, label: str) -> dataset.Manifest:
    """Make a kept version current again (see :func:`rh_prefect.tables.dataset.rollback`)."""
    tasks.reset_on_retry(system)
    with system.guard(label):
        return dataset.rollback(system, root, version, label)


@tasks.rh_task("rh-table-read")
def _read_task(system: System, root: str, url: str, columns: Optional[list[str]], filter: Any,
               limit: Optional[int], version: Optional[str] = None) -> pa.Table:
    """Read a whole version (or its first ``limit`` rows) as one Arrow table, in table order: version
    ``version``, or the current one when it is None."""
    ctx = TaskRunContext.get()
    if ctx is not None and ctx.task_run.run_count > 1:
        system.reset()
    for attempt in range(5):
        snap = dataset.Snapshot.open(system, root, url, version)
        try:
            if limit is None:
                return snap.read(columns=columns, filter=filter)
            return _head(snap, limit, columns)
        except FileNotFoundError as exc:
            if version is not None:  # a kept version never changes: it was dropped meanwhile
                raise NotFound(
                    f"Version {version} of table {url} was dropped (retention keeps the newest "
                    f"{settings.current().table_versions_kept}) or deleted while being read. Load the table again "
                    "by name to read its current version."
                ) from exc
            # Overwritten between reading the pointer and reading the files: read the new version whole.
            now = dataset.read_manifest(system, root)
            if now is None or now.version == snap.manifest.version or attempt == 4:
                raise
    raise AssertionError("unreachable")


def _head(snap: dataset.Snapshot, n: int, columns: Optional[list[str]]) -> pa.Table:
    cols = snap.columns(columns)
    tables: list[pa.Table] = []
    got = 0
    for i, entry in enumerate(snap.manifest.files):
        for g in range(len(entry.row_groups)):
            if got >= n:
                break
            t = snap.read_row_group(i, g, cols, None)
            tables.append(t)
            got += t.num_rows
    if not tables:
        return pa.schema([snap.schema.field(c) for c in cols]).empty_table()
    return pa.concat_tables(tables).slice(0, n)


def _retry_policy() -> stream.RetryPolicy:
    """The package's retry policy (same attempts, backoff, jitter and transient-error test as its Prefect tasks)
    for reads inside a stream, where a Prefect-level retry would replay the stream from its first row."""
    jitter = float(tasks.RETRY_POLICY.get("retry_jitter_factor") or 0)
    return stream.RetryPolicy(tuple(d * (1 + random.uniform(0, jitter)) for d in tasks.retry_delays()),
                              tasks.is_transient)


_STREAM_POLICY = {**tasks.RETRY_POLICY, "retries": 0, "retry_condition_fn": None, "timeout_seconds": None}


@task(name="rh-table-stream", **_STREAM_POLICY)
def _stream_task(table: str, batch_size: int, shuffle_seed: Optional[int], outcome: Any) -> int:
    """One table stream, from its first batch to its end; returns the rows delivered (-1: abandoned unfinished).

    Retries happen inside the reader (see :func:`_retry_policy`), never here: a retried stream task would
    replay rows the consumer already has.
    """
    rows, error = outcome.get()
    if error is not None:
        raise _StreamFailed(f"Streaming {table} failed after {max(rows, 0)} rows: {type(error).__name__}: {error}")
    return rows


def _artifact_cell(value: Any) -> Any:
    """A JSON-friendly, short rendering of one cell for the UI."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value.hex() if isinstance(value, bytes) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _ensure_bucket(sys: System, fs_path: str, create: bool) -> None:
    try:
        sys.ensure_container(fs_path, create=create)
    except NotFound as exc:
        what = str(exc).split(";")[0].rstrip(".")  # the system's own advice names another API
        raise NotFound(f"{what}; create it, or pass mkdir=True to rh.table() to create it for you. "
                       "Nothing was written.") from None


def _opt_list(columns: Any) -> Optional[list[str]]:
    if columns is None:
        return None
    return [columns] if isinstance(columns, str) else list(columns)


# ------------------------------------------------------------------------------------------------- factory
def table(
    data: Any = None,
    name: Optional[str] = None,
    path: Optional[Union[str, os.PathLike]] = None,
    system: SystemArg = None,
    partition_cols: Optional[list[str]] = None,
    mkdir: bool = False,
    dryrun: bool = False,
    stream_format: Optional[str] = None,
    metadata: Optional[dict[str, Any]] = None,
    *,
    cluster: Optional[Cluster] = None,
    credentials: Any = None,
    version: Optional[str] = None,
) -> Table:
    """Create (write) a table from data, or load a saved one by name.

    * ``rh.table(data=df, name=..., path=..., system=...)`` writes ``df`` as a parquet dataset and returns the
      Table of its kind (PandasTable for a pandas DataFrame, ...). ``mkdir=True`` creates a missing bucket;
      without it a missing bucket is a :class:`~rh_prefect.errors.NotFound` error. Call ``.save()`` to register it.
    * ``rh.table(name="@/my_table")`` loads the saved table (NotFound if there is none).
    * ``rh.table(path=..., system=...)`` refers to a table already stored there.
    * ``dryrun=True`` never reads or writes data: with data, ``table.write()`` writes it later.
    * ``version="v-..."`` (with a name or a path): exactly that kept version (see :meth:`Table.versions`), also
      after newer writes; such a table is read-only. NotFound, listing the kept versions, when it is not kept.

    Example:
        >>> t = rh.table(data=df, name="@/my_pandas_table", path="/preproc-data/pandas", system="s3",
        ...              mkdir=True).save()
        >>> reloaded = rh.table(name="@/my_pandas_table", dryrun=True)
    """
    if stream_format is not None:
        stream_format = check_format(stream_format)
    if version is not None:
        if data is not None:
            raise InvalidArgument("rh.table(data=..., version=...) cannot be combined: a write makes a new version. "
                                  "Pass version= only to read a kept version; nothing was written.")
        check_version_id(version, f"table {name or path}")
    if data is None and name is not None and path is None and system is None and cluster is None \
            and credentials is None:
        t = Table._load_named(name)
        if stream_format is not None:
            t.stream_format = stream_format
        if metadata is not None:
            t.metadata = dict(metadata)
        return t._pin(version) if version is not None else t
    if isinstance(system, Cluster):
        cluster, system = system, "ssh"
    sys, where = place(name, system, os.fspath(path) if path is not None else None, cluster=cluster,
                       credentials=credentials, kind="table")
    manifest = None
    if data is not None:
        kind = adapter_for_data(data).kind
    elif dryrun:
        kind = "arrow"
    else:
        manifest = dataset.read_manifest(sys, sys.fs_path(where))
        kind = manifest.kind if manifest is not None else "arrow"
    fields = dict(sys.block_fields(), path=where, kind=kind, partition_cols=list(partition_cols) if partition_cols else None,
                  metadata=dict(metadata or (manifest.metadata if manifest else {})), stream_format=stream_format)
    t = _KIND_CLASSES[kind](**fields)
    t._sys = sys
    t._set_name(name)
    if manifest is not None:
        t._record(manifest)
    if version is not None:
        return t._pin(version)
    if data is not None:
        sys.check_writable(where)
        if dryrun:
            t._data = data
        else:
            t._check_name_free()  # a name owned by another resource type fails before anything is written
            _ensure_bucket(sys, sys.fs_path(where), create=mkdir)
            t.write(data)
    return t


__all__ = ["DaskTable", "HuggingFaceTable", "PandasTable", "PolarsTable", "RayTable", "Table", "TableStream", "table"]
