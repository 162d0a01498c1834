"""Parquet table storage: immutable versions, each a manifest, one of them current by one small pointer file.

Layout of a table stored at ``<root>`` (on any System: local disk, a cluster over SFTP, S3, GCS)::

    <root>/_rh_table.json                               the pointer: the manifest of the current version
    <root>/_rh_versions/<version>.json                  the manifest of every kept version (the current one too)
    <root>/v-<UTC time>-<id>/part-<i>.parquet           parquet files (zstd; ~64-128k-row groups)
    <root>/v-<UTC time>-<id>/<col>=<value>/part-<i>.parquet     the same with hive partitions

A manifest lists every file of its version with its row count, row-group sizes and byte size, plus the Arrow
schema, partition columns, kind, metadata and when the version was made. Readers read a manifest first and then
only the files it lists; listing directories is never needed, and ``len()``/``schema`` need no data file at all.
A version id is the name of the directory its new files were written to (``v-...``, see :mod:`rh_prefect.versions`).

**Overwrite** writes a fresh version directory, then its manifest under ``_rh_versions/``, then replaces the
pointer with the same manifest in one atomic write (:func:`rh_prefect.transfer.write_bytes`: an object upload on
buckets, temp file + rename elsewhere): that write is the commit. A reader sees the old complete version or the
new complete version, never a mix. Nothing deletes the table folder first.

**Append** (``mode="append"``) writes only the new rows, into a fresh version directory, and commits a manifest
listing the old files followed by the new ones: old files are neither copied nor touched, and a reader sees
either the old rows or old + new rows, in order. The new rows must have the table's columns and types (the
check names every differing column and nothing is written otherwise). An append verifies, just before its
commit, that no other writer committed since it started, and otherwise fails without committing (retry it).

**Versions are kept** (:func:`retain`, after each commit): the newest ``settings.table_versions_kept`` manifests
(by the time they were made), always the current one, and every version younger than
``settings.versions_min_age`` (a registration or a reader may still be on its way to it, as for a Blob); older
manifests are deleted first, then the version
directories that no kept manifest lists a file of (an append's manifest lists files of older directories, so
reference counting is by manifest). A kept version never changes, so a reader holding it (``Snapshot``, a Table
loaded at ``version=``) reads the same rows however many writers are at work; :func:`rollback` makes a kept
version current again by writing its manifest to the pointer. A reader whose version is dropped meanwhile gets a
clear :class:`NotFound` (a stream: after the rows it delivered), never rows of another version. A read of the
current version (no version given) that finds a listed file gone re-reads the pointer and reads the new
version whole.

**Concurrent writers**: the last pointer written wins and is always complete. A version written by a writer
that lost such a race is kept like any other; one written by a writer that crashed before its manifest was
stored is referenced by no manifest, and a later write sweeps such version directories once they are older than
:data:`ORPHAN_AGE` (7 hours, longer than the write task's timeout). A writer checks that its version directory
still exists right before committing, so even a write slower than that never commits a pointer to swept files.
Tables written before versions were kept have a pointer and no ``_rh_versions/``: the pointer's version is
listed as their only version, and the next commit stores its manifest like any other.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import posixpath
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import Any, Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rh_prefect import settings, transfer
from rh_prefect.errors import InvalidArgument, NotFound, RhError, SchemaMismatch
from rh_prefect.systems.base import System
from rh_prefect.tables.formats import ArrowSource
from rh_prefect.versions import Version, check_version_id, id_time, is_version_id, listing, new_version_id

logger = logging.getLogger("rh_prefect.tables")

POINTER = "_rh_table.json"
#: the directory (under the table's root) holding the manifest of every kept version, ``<version>.json``
VERSIONS_DIR = "_rh_versions"
FORMAT = "rh-table"
FORMAT_VERSION = 1
# Row groups hold at most settings.table_max_group_rows rows and about settings.table_group_bytes of memory, so
# wide rows get smaller groups (streaming memory stays bounded); settings.table_groups_per_file groups per file
# let lazy kinds (dask, ray) read in parallel, one partition per file.
#: unreferenced version directories older than this are swept; longer than the write task's timeout (6 h)
ORPHAN_AGE = timedelta(hours=7)


# --------------------------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class FileEntry:
    """One parquet file of a version: path relative to the table root, rows, bytes, rows per row group."""

    path: str
    rows: int
    bytes: int
    row_groups: tuple[int, ...]

    @property
    def version(self) -> str:
        return self.path.split("/", 1)[0]


@dataclass(frozen=True)
class Manifest:
    """What the pointer file says: the files and schema of the current version."""

    version: str
    schema: pa.Schema
    files: tuple[FileEntry, ...]
    partition_cols: tuple[str, ...] = ()
    kind: str = "arrow"
    metadata: dict[str, Any] = field(default_factory=dict)
    created: str = ""

    @property
    def num_rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def versions(self) -> set[str]:
        """Version directories this manifest references (more than one after appends)."""
        return {f.version for f in self.files} | {self.version}

    @property
    def size(self) -> int:
        """Bytes of the data files this version lists."""
        return sum(f.bytes for f in self.files)

    @property
    def checksum(self) -> str:
        """sha256 of the manifest as stored (its JSON): the same for a version wherever it was copied."""
        return hashlib.sha256(self.to_json()).hexdigest()

    @property
    def created_at(self) -> datetime:
        """When the version was made (UTC): its ``created`` field, else the time in its id."""
        try:
            when = datetime.fromisoformat(self.created)
            return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        except (TypeError, ValueError):
            return id_time(self.version) or datetime.fromtimestamp(0, timezone.utc)

    def describe(self, current: bool) -> Version:
        """This version as ``Table.versions()`` lists it."""
        return Version(id=self.version, created=self.created_at, rows=self.num_rows, size=self.size,
                       checksum=self.checksum, current=current)

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "created": self.created,
            "kind": self.kind,
            "num_rows": self.num_rows,
            "partition_cols": list(self.partition_cols),
            "metadata": self.metadata,
            "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode("ascii"),
            "schema_text": schema_text(self.schema),
            "files": [{"path": f.path, "rows": f.rows, "bytes": f.bytes, "row_groups": list(f.row_groups)}
                      for f in self.files],
        }
        return json.dumps(doc, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> "Manifest":
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT or int(doc.get("format_version", 0)) > FORMAT_VERSION:
                raise ValueError(f"format {doc.get('format')!r} version {doc.get('format_version')!r}")
            schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(doc["schema"])))
            files = tuple(FileEntry(f["path"], int(f["rows"]), int(f["bytes"]), tuple(f["row_groups"]))
                          for f in doc["files"])
        except (ValueError, KeyError, TypeError, pa.ArrowInvalid) as exc:
            raise RhError(
                f"{where} is not a table pointer this version of rh-prefect understands ({exc}); upgrade "
                "rh-prefect, or write the table again."
            ) from None
        return cls(version=doc["version"], schema=schema, files=files,
                   partition_cols=tuple(doc.get("partition_cols") or ()), kind=doc.get("kind", "arrow"),
                   metadata=dict(doc.get("metadata") or {}), created=doc.get("created", ""))


def schema_text(schema: pa.Schema) -> str:
    """A readable one-line-per-column description (for the Prefect UI), without the binary metadata."""
    return schema.remove_metadata().to_string(show_field_metadata=False)


def pointer_path(root: str) -> str:
    return posixpath.join(root, POINTER)


def version_manifest_path(root: str, version: str) -> str:
    """Where the manifest of version ``version`` is kept (``version`` must be a version id: never a path)."""
    return posixpath.join(root, VERSIONS_DIR, f"{check_version_id(version, 'a table')}.json")


def read_manifest(system: System, root: str) -> Optional[Manifest]:
    """The current manifest of the table at ``root`` (fs path), or None when no table is stored there."""
    path = pointer_path(root)
    try:
        with system.guard(system.url(system.user_path(root))):  # refused credentials etc.: our errors
            raw = system.fs.cat_file(path)
    except FileNotFoundError:
        return None
    return Manifest.from_json(raw, system.url(system.user_path(path)))


# --------------------------------------------------------------------------------------------- writing
def arrow_fs(system: System) -> pafs.FileSystem:
    """A pyarrow filesystem for the system: Arrow's own for local disk, the system's fsspec one otherwise."""
    if system.is_local:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(system.fs))


class _ReadHandler(pafs.FSSpecHandler):
    """Opens listed files for pyarrow with their size from the manifest and no fsspec read cache: no metadata
    request per open, and no read-ahead thread per file (pyarrow coalesces its own range reads)."""

    def __init__(self, fs: Any, sizes: dict[str, int]) -> None:
        super().__init__(fs)
        self._sizes = sizes

    def open_input_file(self, path: str) -> Any:
        size = self._sizes.get(path)
        if not size:
            return super().open_input_file(path)
        # cache_type and size are fsspec's standard buffered-file options; backends without them ignore them
        return pa.PythonFile(self.fs.open(path, mode="rb", cache_type="none", size=size), mode="r")


def new_version_name() -> str:
    return new_version_id()


def _version_time(name: str) -> Optional[datetime]:
    return id_time(name)


def schema_differences(expected: pa.Schema, got: pa.Schema) -> list[str]:
    """Human-readable differences between the table's schema and new data's (empty when compatible)."""
    diffs = []
    names = set(got.names)
    for f in expected:
        if f.name not in names:
            diffs.append(f"column {f.name!r} ({f.type}) is missing")
        elif not _same_type(f.type, got.field(f.name).type):
            diffs.append(f"column {f.name!r} is {got.field(f.name).type} but the table has {f.type}")
    for name in got.names:
        if name not in expected.names:
            diffs.append(f"column {name!r} ({got.field(name).type}) is not in the table")
    return diffs


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    return a == b or _normal(a) == _normal(b)


def _normal(t: pa.DataType) -> Any:
    # Offsets width and views are storage details: string == large_string == string_view for our purpose.
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "binary"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
        return ("list", _normal(t.value_type))
    if pa.types.is_dictionary(t):
        return _normal(t.value_type)
    return t


def _cast_source(source: ArrowSource, schema: pa.Schema) -> ArrowSource:
    """Data with the table's column order and types (after :func:`schema_differences` found them compatible)."""
    if isinstance(source, pa.Table):
        return source.select(schema.names).cast(schema)
    return pa.RecordBatchReader.from_batches(schema, (b.select(schema.names).cast(schema) for b in source))


def _with_group_size(source: ArrowSource) -> tuple[ArrowSource, int]:
    """Rows per row group: ~table_group_bytes of memory per group, between the min and max group rows settings."""
    tuned = settings.current()
    if isinstance(source, pa.Table):
        sample_bytes, sample_rows = source.nbytes, source.num_rows
    else:
        reader = source
        first = None
        for batch in reader:  # skip empty leading batches; keep the first real one for the write
            if batch.num_rows:
                first = batch
                break
        if first is None:
            return reader.schema.empty_table(), tuned.table_max_group_rows
        sample_bytes, sample_rows = first.nbytes, first.num_rows

        def chained() -> Iterator[pa.RecordBatch]:
            yield first
            yield from reader

        source = pa.RecordBatchReader.from_batches(reader.schema, chained())
    row_bytes = max(1.0, sample_bytes / max(1, sample_rows))
    rows = int(min(tuned.table_max_group_rows, max(tuned.table_min_group_rows, tuned.table_group_bytes // row_bytes)))
    return source, rows


def _check_partition_cols(schema: pa.Schema, partition_cols: Sequence[str]) -> None:
    missing = [c for c in partition_cols if c not in schema.names]
    if missing:
        raise InvalidArgument(f"partition_cols {missing} are not columns of the data; columns: {schema.names}.")
    if partition_cols and len(partition_cols) == len(schema.names):
        raise InvalidArgument("partition_cols cannot be every column: at least one column must stay in the files.")


def write_version(
    system: System,
    root: str,
    source: ArrowSource,
    *,
    partition_cols: Sequence[str] = (),
    kind: str = "arrow",
    metadata: Optional[dict[str, Any]] = None,
    base: Optional[Manifest] = None,
) -> Manifest:
    """Write ``source`` as a new version directory under ``root`` and return its (uncommitted) manifest.

    With ``base`` (an append) the data must match the base's schema; the manifest lists base's files first.
    On failure the partial version directory is removed and nothing else changes.
    """
    schema = source.schema
    if base is not None:
        diffs = schema_differences(base.schema, schema)
        if diffs:
            raise SchemaMismatch(
                "Cannot append: the new rows do not match the table's schema: " + "; ".join(diffs)
                + ". Nothing was written; convert the data to the table's columns and types first, or overwrite."
            )
        source = _cast_source(source, base.schema)
        partition_cols, schema = base.partition_cols, base.schema
    _check_partition_cols(schema, partition_cols)
    source, group_rows = _with_group_size(source)

    version = new_version_name()
    vdir = posixpath.join(root, version)
    written: list[ds.WrittenFile] = []
    partitioning = None
    if partition_cols:
        partitioning = ds.partitioning(pa.schema([schema.field(c) for c in partition_cols]), flavor="hive")
    system.makedirs(vdir)
    try:
        ds.write_dataset(
            source,
            vdir,
            format="parquet",
            filesystem=arrow_fs(system),
            file_options=ds.ParquetFileFormat().make_write_options(compression="zstd"),
            partitioning=partitioning,
            basename_template="part-{i}.parquet",
            max_rows_per_group=group_rows,
            min_rows_per_group=group_rows,
            max_rows_per_file=group_rows * settings.current().table_groups_per_file,
            existing_data_behavior="overwrite_or_ignore",
            preserve_order=True,
            file_visitor=written.append,
        )
    except BaseException:
        remove_version(system, root, version)
        raise
    files = sorted((_entry(system, root, wf) for wf in written), key=_file_order)
    new = Manifest(
        version=version,
        schema=schema,
        files=tuple(files),
        partition_cols=tuple(partition_cols),
        kind=kind,
        metadata=dict(metadata or {}),
        # to the microsecond: retention orders versions by it (see retain)
        created=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
    )
    if base is not None:
        new = replace(new, files=base.files + new.files, metadata=dict(metadata if metadata is not None else base.metadata))
    return new


def _entry(system: System, root: str, wf: ds.WrittenFile) -> FileEntry:
    path = wf.path
    prefix = root.rstrip("/") + "/"
    # pyarrow reports the path as it was given; normalise a leading slash difference (object stores)
    rel = path[len(prefix):] if path.startswith(prefix) else path[len(prefix.lstrip("/")):]
    meta = wf.metadata
    return FileEntry(
        path=rel,
        rows=meta.num_rows,
        bytes=int(wf.size or 0),
        row_groups=tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups)),
    )


def _file_order(entry: FileEntry) -> tuple:
    head, base = posixpath.split(entry.path)
    number = base[len("part-"):-len(".parquet")]
    return (head, int(number) if number.isdigit() else 0, base)


def commit(system: System, root: str, manifest: Manifest, *, expect_version: Optional[str] = None) -> None:
    """Make ``manifest`` the table's current version: store it under ``_rh_versions/``, then write it to the
    pointer (the commit), then drop what retention no longer keeps (:func:`retain`). A copy commits the source's
    manifest unchanged, so the destination's current version has the source's id, rows and checksum.

    With ``expect_version`` (appends) the commit happens only if the pointer still names that version.
    """
    current = read_manifest(system, root)
    if expect_version is not None and (current.version if current else None) != expect_version:
        remove_version(system, root, manifest.version)
        raise RhError(
            f"The table at {system.url(system.user_path(root))} was rewritten by another writer during this "
            "append; nothing was committed. Run the append again."
        )
    newest = [f for f in manifest.files if f.version == manifest.version]
    if newest:
        system.fs.invalidate_cache(posixpath.join(root, manifest.version))
        if not system.fs.exists(posixpath.join(root, newest[0].path)):
            # Swept as an orphan by another writer (only after ORPHAN_AGE): never commit a pointer to nothing.
            raise RhError(
                f"The new version of the table at {system.url(system.user_path(root))} disappeared before its "
                "commit (a write that ran longer than 7 hours is cleaned up as abandoned); write it again."
            )
    raw = manifest.to_json()
    if current is not None and current.version != manifest.version:
        _adopt(system, root, current)
    transfer.write_bytes(system, version_manifest_path(root, manifest.version), raw)
    transfer.write_bytes(system, pointer_path(root), raw)
    retain(system, root, protect=(manifest.version,))


def _adopt(system: System, root: str, current: Manifest) -> None:
    """Store the manifest of a current version that has none under ``_rh_versions/`` (a table written before
    versions were kept), so that it stays a version once it is no longer current."""
    path = version_manifest_path(root, current.version)
    try:
        if system.fs.exists(path):
            return
        transfer.write_bytes(system, path, current.to_json())
    except OSError as exc:  # the commit matters more; the old version is then simply not kept
        logger.warning("could not keep the previous version %s of %s: %s", current.version, root, exc)


def stored_versions(system: System, root: str) -> dict[str, Manifest]:
    """``{version id: manifest}`` of the versions kept under ``_rh_versions/`` (a fresh listing); a manifest
    that cannot be read is left out with a warning (it may be being dropped by another writer)."""
    vdir = posixpath.join(root, VERSIONS_DIR)
    try:
        system.fs.invalidate_cache(vdir)
        with system.guard(system.url(system.user_path(root))):
            entries = system.fs.ls(vdir, detail=False)
    except FileNotFoundError:
        return {}
    found: dict[str, Manifest] = {}
    for entry in entries:
        name = posixpath.basename(entry.rstrip("/"))
        if not name.endswith(".json") or not is_version_id(name[:-5]):
            continue  # temporary files of a manifest being written, or anything else
        try:
            raw = system.fs.cat_file(posixpath.join(vdir, name))
        except FileNotFoundError:
            continue  # dropped by a concurrent writer's retention
        found[name[:-5]] = Manifest.from_json(raw, system.url(system.user_path(posixpath.join(vdir, name))))
    return found


def read_version(system: System, root: str, version: str) -> Optional[Manifest]:
    """The manifest of version ``version`` of the table at ``root``, or None when it is not kept."""
    path = version_manifest_path(root, version)
    try:
        with system.guard(system.url(system.user_path(root))):
            raw = system.fs.cat_file(path)
    except FileNotFoundError:
        current = read_manifest(system, root)  # a table written before versions were kept: only the pointer
        return current if current is not None and current.version == version else None
    return Manifest.from_json(raw, system.url(system.user_path(path)))


def list_versions(system: System, root: str) -> list[Version]:
    """Every kept version of the table at ``root``, oldest first; ``current`` marks the pointer's."""
    current = read_manifest(system, root)
    found = stored_versions(system, root)
    if current is not None:
        found.setdefault(current.version, current)
    now = current.version if current is not None else None
    return [m.describe(m.version == now) for m in sorted(found.values(), key=_age)]


def _age(manifest: Manifest) -> tuple[datetime, str]:
    return manifest.created_at, manifest.version


def missing_version(system: System, root: str, version: str, label: str) -> NotFound:
    """The NotFound for a version that is not kept: it names the version and the ones that are."""
    try:
        kept = [v.id for v in list_versions(system, root)]
    except (OSError, RhError):
        kept = []
    return NotFound(
        f"{label} has no version {version}: it was never written here or retention dropped it (a table keeps its "
        f"newest {settings.current().table_versions_kept} versions, setting table_versions_kept). Kept versions, "
        f"newest first: {listing(kept)}. List them with table.versions(). Nothing was changed."
    )


def rollback(system: System, root: str, version: str, label: str) -> Manifest:
    """Make kept version ``version`` current again: its manifest becomes the pointer, in one atomic write.
    Nothing is dropped. NotFound (naming the kept versions) when it is not kept or its files are gone."""
    manifest = read_version(system, root, check_version_id(version, label))
    if manifest is None:
        raise missing_version(system, root, version, label)
    for directory in sorted(manifest.versions):
        listed = [f for f in manifest.files if f.version == directory]
        if listed and not system.fs.exists(posixpath.join(root, listed[0].path)):
            raise NotFound(f"{label}: the files of version {version} are gone (dropped by retention while it was "
                           "being rolled back to, or deleted outside rh_prefect); nothing was changed.")
    transfer.write_bytes(system, pointer_path(root), manifest.to_json())
    return manifest


def retain(system: System, root: str, protect: Sequence[str] = ()) -> list[str]:
    """Drop the versions beyond the newest ``settings.table_versions_kept`` (never the current one, those in
    ``protect``, nor those younger than ``settings.versions_min_age``), then the version directories no kept
    manifest references, and orphaned version directories (referenced by no manifest) older than
    :data:`ORPHAN_AGE`. Best effort: a failure is logged, since the commit it follows is complete. Returns the ids
    of the versions dropped."""
    try:
        current = read_manifest(system, root)
        stored = stored_versions(system, root)
    except (OSError, RhError) as exc:
        logger.warning("could not list the versions of table %s to drop old ones: %s", root, exc)
        return []
    config = settings.current()
    ordered = sorted(stored.values(), key=_age)
    young = datetime.now(timezone.utc) - timedelta(seconds=config.versions_min_age)
    keep = {m.version for m in ordered[-config.table_versions_kept:]} | set(protect)
    keep |= {m.version for m in ordered if m.created_at >= young}
    if current is not None:
        keep.add(current.version)
    dropped = [m for m in ordered if m.version not in keep]
    for m in dropped:  # the manifest first: once it is gone the version is no longer listed or readable by id
        try:
            system.fs.rm_file(version_manifest_path(root, m.version))
        except FileNotFoundError:
            pass  # dropped by a concurrent writer's retention already
        except OSError as exc:
            logger.warning("could not drop version %s of table %s: %s", m.version, root, exc)
            keep.add(m.version)  # still listed: its files stay
    dropped = [m for m in dropped if m.version not in keep]
    referenced: set[str] = set()
    for m in [*stored.values(), *([current] if current is not None else [])]:
        if m.version in keep:
            referenced |= m.versions
    doomed = set().union(*(m.versions for m in dropped)) - referenced
    try:
        system.fs.invalidate_cache(root)
        entries = system.fs.ls(root, detail=False)
    except FileNotFoundError:
        entries = []
    cutoff = datetime.now(timezone.utc) - ORPHAN_AGE
    listed = referenced | set().union(*(m.versions for m in stored.values()))
    for entry in entries:
        name = posixpath.basename(entry.rstrip("/"))
        if name.startswith("v-") and name not in listed:
            born = _version_time(name)
            if born is not None and born < cutoff:
                doomed.add(name)
    for name in sorted(doomed):
        remove_version(system, root, name)
    return [m.version for m in dropped]


def remove_version(system: System, root: str, version: str) -> None:
    """Delete one version directory; a failure is logged (an unreferenced directory is invisible to readers)."""
    path = posixpath.join(root, version)
    try:
        system.rm_tree(path)
    except FileNotFoundError:
        pass  # already gone: deleted by a concurrent writer, which is the outcome we wanted
    except OSError as exc:
        logger.warning("could not delete old table version %s: %s (it is not referenced; the next write retries)",
                       path, exc)


def remove_table(system: System, root: str) -> None:
    """Delete a table: the pointer and the kept versions' manifests first (readers then see no table, neither the
    current version nor an old one by id), then everything under ``root``."""
    try:
        system.fs.rm_file(pointer_path(root))
    except FileNotFoundError:
        pass  # no pointer: nothing is visible already
    for version in stored_versions(system, root):
        try:
            system.fs.rm_file(version_manifest_path(root, version))
        except FileNotFoundError:
            pass  # dropped meanwhile by a writer's retention
    try:
        system.rm_tree(root)
    except FileNotFoundError:
        pass  # nothing stored: the table is gone, as asked
    system.fs.invalidate_cache(root)


# --------------------------------------------------------------------------------------------- reading
def to_expression(filters: Any) -> Optional[ds.Expression]:
    """``filters`` as a pyarrow Expression: an Expression, or DNF tuples ``[("col", ">", 3), ...]``."""
    if filters is None or isinstance(filters, ds.Expression):
        return filters
    if isinstance(filters, (list, tuple)):
        try:
            return pq.filters_to_expression(list(filters))
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(
                f"filters {filters!r} are not valid: {exc}. Use a pyarrow Expression (pc.field('a') > 3) or "
                "tuples like [('a', '>', 3)]."
            ) from None
    raise InvalidArgument(f"filters must be a pyarrow Expression or a list of tuples, not {type(filters).__name__}.")


class Snapshot:
    """One committed version of a table, ready to read. Picklable (dask/ray workers read from it)."""

    def __init__(self, system: System, root: str, manifest: Manifest) -> None:
        self.system, self.root, self.manifest = system, root, manifest
        self._fragments: dict[int, ds.ParquetFileFragment] = {}

    @classmethod
    def open(cls, system: System, root: str, url: Optional[str] = None, version: Optional[str] = None) -> "Snapshot":
        """The version ``version`` of the table at ``root`` (None: the current one); NotFound when there is none."""
        where = url or system.url(system.user_path(root))
        if version is not None:
            manifest = read_version(system, root, version)
            if manifest is None:
                if read_manifest(system, root) is None and not stored_versions(system, root):
                    raise NotFound(f"No table is stored at {where}; write one with rh.table(data=..., path=...) "
                                   "or check the path.")
                raise missing_version(system, root, version, f"The table at {where}")
            return cls(system, root, manifest)
        manifest = read_manifest(system, root)
        if manifest is None:
            raise NotFound(
                f"No table is stored at {where}; write one with "
                "rh.table(data=..., path=...) or check the path."
            )
        return cls(system, root, manifest)

    @property
    def schema(self) -> pa.Schema:
        return self.manifest.schema

    @cached_property
    def arrow_fs(self) -> pafs.FileSystem:
        if self.system.is_local:
            return arrow_fs(self.system)
        sizes = {posixpath.join(self.root, f.path): f.bytes for f in self.manifest.files}
        return pafs.PyFileSystem(_ReadHandler(self.system.fs, sizes))

    @cached_property
    def _partitioning(self) -> Optional[ds.Partitioning]:
        cols = self.manifest.partition_cols
        if not cols:
            return None
        return ds.partitioning(pa.schema([self.schema.field(c) for c in cols]), flavor="hive")

    def file_paths(self) -> list[str]:
        return [posixpath.join(self.root, f.path) for f in self.manifest.files]

    def columns(self, columns: Optional[Sequence[str]]) -> list[str]:
        """Validated column list (default: all, in the table's order)."""
        if columns is None:
            return list(self.schema.names)
        if isinstance(columns, str):
            columns = [columns]
        unknown = [c for c in columns if c not in self.schema.names]
        if unknown:
            raise InvalidArgument(f"Unknown column(s) {unknown}; the table has {self.schema.names}.")
        return list(columns)

    def fragment(self, index: int) -> ds.ParquetFileFragment:
        frag = self._fragments.get(index)
        if frag is None:
            entry = self.manifest.files[index]
            expr = None
            if self._partitioning is not None:
                expr = self._partitioning.parse(entry.path.split("/", 1)[1])
            frag = ds.ParquetFileFormat().make_fragment(
                posixpath.join(self.root, entry.path), filesystem=self.arrow_fs, partition_expression=expr,
                file_size=entry.bytes or None,
            )
            self._fragments[index] = frag
        return frag

    def dataset(self) -> ds.FileSystemDataset:
        frags = [self.fragment(i) for i in range(len(self.manifest.files))]
        return ds.FileSystemDataset(frags, self.schema, ds.ParquetFileFormat(), self.arrow_fs)

    def read(self, columns: Optional[Sequence[str]] = None, filter: Any = None) -> pa.Table:
        """The whole version (or the chosen columns / rows) as one Arrow table, in table order."""
        cols = self.columns(columns)
        return self.dataset().to_table(columns=cols, filter=to_expression(filter))

    def read_file(self, index: int, columns: Optional[Sequence[str]] = None, filter: Any = None) -> pa.Table:
        return self.fragment(index).to_table(schema=self.schema, columns=self.columns(columns),
                                             filter=to_expression(filter))

    def read_row_group(self, index: int, group: int, columns: list[str], filter: Optional[ds.Expression]) -> pa.Table:
        """One row group (already-validated columns and expression), as a single-chunk table when possible."""
        frag = self.fragment(index)
        sub = frag.subset(row_group_ids=[group])
        rows = self.manifest.files[index].row_groups[group]
        return sub.to_table(schema=self.schema, columns=columns, filter=filter, batch_size=max(rows, 1))

    def reset(self) -> None:
        """Forget open files and connections, e.g. after a dropped connection, so the next read reconnects."""
        self._fragments.clear()
        self.__dict__.pop("arrow_fs", None)
        self.system.reset()

    def __getstate__(self) -> dict[str, Any]:
        # A live filesystem (an SSH connection, an event loop) does not travel to another process: ship the
        # system's description and let the worker connect on first use.
        system = object.__new__(type(self.system))
        system.__dict__.update({k: v for k, v in self.system.__dict__.items() if k != "fs"})
        return {"system": system, "root": self.root, "manifest": self.manifest}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["system"], state["root"], state["manifest"])  # type: ignore[misc]


__all__ = [
    "FileEntry", "Manifest", "POINTER", "Snapshot", "VERSIONS_DIR", "arrow_fs", "commit", "list_versions",
    "missing_version", "read_manifest", "read_version", "remove_table", "remove_version", "retain", "rollback",
    "schema_differences", "schema_text", "stored_versions", "to_expression", "write_version",
]
