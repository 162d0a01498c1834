"""Streaming a stored table in exact-size batches: ordered or deterministically shuffled, read ahead, resumable.

The plan is made from the manifest alone: the table is a sequence of *units* (one row group of one file, with
its row count known from the parquet metadata). Without shuffling the units are read in table order. With a
seed, the unit order is a seeded permutation (rows of every file and row group mix), and consecutive units are
gathered into *windows* of about ``shuffle_buffer_size`` rows whose rows are permuted with a generator seeded
by ``(seed, window number)``: the same seed gives the same order on every run and every system, a different
seed a different one. Rows are then cut into batches of exactly ``batch_size`` rows across unit boundaries
(only the last batch may be shorter, or dropped with ``drop_last``).

Reading: an ordered stream without filters is one pyarrow scan over the version's files, with pyarrow's own
read-ahead across files and row groups (as fast as ``pyarrow.dataset``'s ``to_batches``). Filtered and
shuffled streams read unit by unit on a small pool of reader threads.

Memory stays bounded: a background thread prepares batches about ``prefetch_batches`` ahead (in whole row
groups), and only a few row groups (fewer for wide tables, see ``settings.stream_read_budget``) are read and decoded
meanwhile; a shuffle window is the only other buffer.

Resumption: reads follow the package's retry policy (passed in as a :class:`RetryPolicy`). After a transient
error (a dropped connection) the connection is reset and reading resumes exactly where it was: a unit is
handed on only once read whole, and the ordered scan restarts at the row group of the next undelivered row,
dropping the rows of that group it had already delivered. Every row is delivered exactly once, in order.
Because the order is a pure function of the manifest and the seed, ``start_row=n`` also resumes a new stream
at its n-th row (whole units before it are skipped using the metadata row counts, without reading them).
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Optional, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from rh_prefect import settings
from rh_prefect.errors import InvalidArgument
from rh_prefect.tables.dataset import Snapshot, to_expression
from rh_prefect.tables.formats import check_format, converter

logger = logging.getLogger("rh_prefect.tables")
T = TypeVar("T")
@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before retrying a failed read (built from the package's one retry policy)."""

    delays: tuple[float, ...] = ()
    is_transient: Callable[[BaseException], bool] = lambda exc: False

    def pause(self, attempt: int, exc: BaseException) -> bool:
        """Sleep before retry number ``attempt`` (0-based) and return True, or return False: give up."""
        if attempt >= len(self.delays) or not self.is_transient(exc):
            return False
        logger.warning("table read failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, self.delays[attempt])
        time.sleep(self.delays[attempt])
        return True

    def call(self, read: Callable[[], T], reset: Callable[[], None]) -> T:
        """``read()``, retried after transient failures with ``reset()`` (reconnect) in between."""
        attempt = 0
        while True:
            try:
                return read()
            except Exception as exc:
                if not self.pause(attempt, exc):
                    raise
                attempt += 1
                reset()
#: a chunk handed from the reader to the caller: ``[(rows, batch), ...]``
Chunk = list[tuple[int, Any]]

# Row groups read concurrently at most: settings.stream_readers (local) / stream_remote_readers (over the network,
# where each read waits for a round trip), so I/O and decoding of the next groups overlap the consumer, within
# about settings.stream_read_budget of memory for the groups in flight (wide tables get fewer readers).
#: the ordered scan: files read at once (the next file opens while one is read)
SCAN_FILES_LOCAL = 2
SCAN_FILES_REMOTE = 2
#: default shuffle window, in row groups (each is at most ~64 MiB in memory by construction of the writer)
DEFAULT_WINDOW_UNITS = 4


@dataclass(frozen=True)
class StreamSpec:
    """The arguments of ``Table.stream()``, validated."""

    batch_size: int
    columns: Optional[tuple[str, ...]] = None
    filter: Any = None
    drop_last: bool = False
    shuffle_seed: Optional[int] = None
    shuffle_buffer_size: Optional[int] = None
    prefetch_batches: int = 1
    batch_format: str = "pyarrow"
    start_row: int = 0

    @classmethod
    def make(cls, batch_size: Any, columns: Any = None, filters: Any = None, drop_last: bool = False,
             shuffle_seed: Any = None, shuffle_buffer_size: Any = None, prefetch_batches: Any = 1,
             batch_format: str = "pyarrow", start_row: Any = 0) -> "StreamSpec":
        _positive_int("batch_size", batch_size)
        if shuffle_seed is not None and (not isinstance(shuffle_seed, int) or isinstance(shuffle_seed, bool)):
            raise InvalidArgument(f"shuffle_seed must be an int or None, not {shuffle_seed!r}.")
        if shuffle_buffer_size is not None:
            _positive_int("shuffle_buffer_size", shuffle_buffer_size)
        _positive_int("prefetch_batches", prefetch_batches, zero_ok=True)
        _positive_int("start_row", start_row, zero_ok=True)
        if isinstance(columns, str):
            columns = [columns]
        return cls(
            batch_size=batch_size, columns=tuple(columns) if columns is not None else None,
            filter=to_expression(filters), drop_last=bool(drop_last), shuffle_seed=shuffle_seed,
            shuffle_buffer_size=shuffle_buffer_size, prefetch_batches=prefetch_batches,
            batch_format=check_format(batch_format), start_row=start_row,
        )

    def starting_at(self, row: int) -> "StreamSpec":
        return replace(self, start_row=row)


def _positive_int(name: str, value: Any, zero_ok: bool = False) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if zero_ok else 1):
        need = "a non-negative int" if zero_ok else "a positive int"
        raise InvalidArgument(f"{name} must be {need}, got {value!r}.")


@dataclass(frozen=True)
class Unit:
    """One row group of one file of the snapshot."""

    file: int
    group: int
    rows: int


def plan(snapshot: Snapshot, spec: StreamSpec) -> list[list[Unit]]:
    """Read groups in delivery order: single units in table order, or shuffled units in shuffle windows."""
    units = [Unit(i, g, n) for i, f in enumerate(snapshot.manifest.files) for g, n in enumerate(f.row_groups) if n]
    if spec.shuffle_seed is None:
        return [[u] for u in units]
    order = np.random.default_rng(_seed(spec.shuffle_seed)).permutation(len(units))
    units = [units[i] for i in order]
    windows: list[list[Unit]] = []
    current: list[Unit] = []
    rows = 0
    for unit in units:
        current.append(unit)
        rows += unit.rows
        full = rows >= spec.shuffle_buffer_size if spec.shuffle_buffer_size else len(current) >= DEFAULT_WINDOW_UNITS
        if full and rows >= spec.batch_size:
            windows.append(current)
            current, rows = [], 0
    if current:
        windows.append(current)
    return windows


def _seed(seed: int) -> int:
    return seed & 0xFFFF_FFFF_FFFF_FFFF  # numpy seeds are non-negative; keep negative seeds distinct and valid


class _Rebatcher:
    """Cuts a sequence of Arrow tables into batches of exactly ``batch_size`` rows, converted to the format."""

    def __init__(self, batch_size: int, drop_last: bool, batch_format: str) -> None:
        self.size, self.drop_last = batch_size, drop_last
        self.convert = converter(batch_format)
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0

    def push(self, data: "pa.Table | pa.RecordBatch") -> Chunk:
        out: Chunk = []
        size = self.size
        for batch in ([data] if isinstance(data, pa.RecordBatch) else data.to_batches()):
            n = batch.num_rows
            if not n:
                continue
            offset = 0
            if self.pending_rows:
                head = batch.slice(0, size - self.pending_rows)
                self.pending.append(head)
                self.pending_rows += head.num_rows
                offset = head.num_rows
                if self.pending_rows < size:
                    continue
                out.append((size, self.convert(pa.concat_batches(self.pending))))
                self.pending, self.pending_rows = [], 0
            while n - offset >= size:
                out.append((size, self.convert(batch.slice(offset, size))))
                offset += size
            if offset < n:
                self.pending, self.pending_rows = [batch.slice(offset)], n - offset
        return out

    def finish(self) -> Chunk:
        if not self.pending_rows or self.drop_last:
            return []
        return [(self.pending_rows, self.convert(pa.concat_batches(self.pending)))]


def chunks(snapshot: Snapshot, spec: StreamSpec, retry: RetryPolicy) -> Iterator[Chunk]:
    """The stream as chunks of ready batches (about one row group or shuffle window each), read in the calling
    thread; :func:`background` moves it to a read-ahead thread."""
    columns = snapshot.columns(spec.columns)
    if spec.shuffle_seed is None and spec.filter is None and spec.prefetch_batches:
        return _produce_scan(snapshot, spec, columns, retry)
    return _produce(snapshot, spec, columns, plan(snapshot, spec), retry)


def read_ahead_depth(snapshot: Snapshot, spec: StreamSpec) -> int:
    """Chunks to prepare beyond the one being consumed so that about ``prefetch_batches`` batches are ready.

    A chunk holds a whole row group (or shuffle window) of batches, and the next row groups are already being
    read by the reader pool, so small prefetches need no extra chunk at all: memory stays at a few row groups.
    """
    if spec.prefetch_batches == 0:
        return 0
    files = snapshot.manifest.files
    groups = sum(len(f.row_groups) for f in files) or 1
    rows_per_chunk = max(1, snapshot.manifest.num_rows // groups)
    if spec.shuffle_seed is not None:
        rows_per_chunk *= DEFAULT_WINDOW_UNITS
    return -(-spec.prefetch_batches * spec.batch_size // rows_per_chunk) - 1


def _produce_scan(snapshot: Snapshot, spec: StreamSpec, columns: list[str], retry: RetryPolicy) -> Iterator[Chunk]:
    """Ordered and unfiltered: one pyarrow scan, restarted at the next undelivered row after a transient error."""
    rebatcher = _Rebatcher(spec.batch_size, spec.drop_last, spec.batch_format)
    position, total = spec.start_row, snapshot.manifest.num_rows
    attempt = 0
    while position < total:
        try:
            for batch in _scan_from(snapshot, columns, position):
                position += batch.num_rows
                attempt = 0  # progress: a later, unrelated failure gets the full set of retries again
                out = rebatcher.push(batch)
                if out:
                    yield out
            break
        except Exception as exc:
            if not retry.pause(attempt, exc):
                raise
            attempt += 1
            snapshot.reset()
    last = rebatcher.finish()
    if last:
        yield last


def _scan_from(snapshot: Snapshot, columns: list[str], position: int) -> Iterator[pa.RecordBatch]:
    """Record batches of the table from row ``position`` on, in order (one scan, pyarrow's read-ahead)."""
    files = snapshot.manifest.files
    first, skip = 0, position
    while first < len(files) and skip >= files[first].rows:
        skip -= files[first].rows
        first += 1
    if first == len(files):
        return
    groups = files[first].row_groups
    group = 0
    while skip >= groups[group]:
        skip -= groups[group]
        group += 1
    head = snapshot.fragment(first)
    if group:
        head = head.subset(row_group_ids=list(range(group, len(groups))))
    fragments = [head] + [snapshot.fragment(i) for i in range(first + 1, len(files))]
    dataset = ds.FileSystemDataset(fragments, snapshot.schema, ds.ParquetFileFormat(), snapshot.arrow_fs)
    batch_rows = max(max(f.row_groups, default=1) for f in files)
    files_ahead, batches_ahead, opts = _scan_readahead(snapshot)
    for batch in dataset.to_batches(columns=columns, batch_size=batch_rows, batch_readahead=batches_ahead,
                                    fragment_readahead=files_ahead, fragment_scan_options=opts):
        if skip:
            if batch.num_rows <= skip:
                skip -= batch.num_rows
                continue
            batch, skip = batch.slice(skip), 0
        yield batch


def _produce(snapshot: Snapshot, spec: StreamSpec, columns: list[str], groups: list[list[Unit]],
             retry: RetryPolicy) -> Iterator[Chunk]:
    rebatcher = _Rebatcher(spec.batch_size, spec.drop_last, spec.batch_format)
    skip = spec.start_row
    todo: list[tuple[int, list[Unit]]] = []
    for number, group in enumerate(groups):
        group_rows = sum(u.rows for u in group)
        if spec.filter is None and skip >= group_rows:
            skip -= group_rows  # known from the metadata: skip without reading
            continue
        todo.append((number, group))

    def read(unit: Unit) -> pa.Table:
        return retry.call(lambda: snapshot.read_row_group(unit.file, unit.group, columns, spec.filter), snapshot.reset)

    readers = _readers(snapshot) if spec.prefetch_batches else 1  # prefetch_batches=0: read nothing ahead
    with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="rh-table-read") as pool:
        for number, tables in _read_ahead(pool, todo, read, readers):
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
            if spec.shuffle_seed is not None and table.num_rows > 1:
                rng = np.random.default_rng([_seed(spec.shuffle_seed), number])
                table = table.take(rng.permutation(table.num_rows))
            if skip:
                dropped = min(skip, table.num_rows)
                table, skip = table.slice(dropped), skip - dropped
            out = rebatcher.push(table)
            if out:
                yield out
    last = rebatcher.finish()
    if last:
        yield last


def _group_bytes(snapshot: Snapshot) -> int:
    files = snapshot.manifest.files
    groups = sum(len(f.row_groups) for f in files) or 1
    return max(1, 2 * sum(f.bytes for f in files) // groups)  # compressed size, doubled as a decoded estimate


def _readers(snapshot: Snapshot) -> int:
    """Row groups read at once by the unit-by-unit reader."""
    tuned = settings.current()
    most = tuned.stream_readers if snapshot.system.is_local else tuned.stream_remote_readers
    return max(1, min(most, tuned.stream_read_budget // _group_bytes(snapshot)))


def _scan_readahead(snapshot: Snapshot) -> tuple[int, int, ds.ParquetFragmentScanOptions]:
    """(files, row groups per file, scan options) for the ordered scan, within ``settings.stream_read_budget``.

    Over the network, pyarrow's pre-buffering coalesces a row group's column chunks into few large reads; a file
    being scanned then holds about five row groups' worth of memory (measured: ~50 MiB with 4 MiB groups). On
    local disk reads are cheap and pre-buffering only doubles that, so it is off there.
    """
    local = snapshot.system.is_local
    fits = settings.current().stream_read_budget // ((3 if local else 5) * _group_bytes(snapshot))
    files = max(1, min(SCAN_FILES_LOCAL if local else SCAN_FILES_REMOTE, fits))
    return files, (2 if fits >= 1 else 1), ds.ParquetFragmentScanOptions(pre_buffer=not local)


def _read_ahead(pool: ThreadPoolExecutor, todo: list[tuple[int, list[Unit]]], read: Callable[[Unit], pa.Table],
                readers: int) -> Iterator[tuple[int, list[pa.Table]]]:
    """Yield each group's tables in order while the next units are already being read (at most ``readers``)."""
    flat = deque((number, index, unit) for number, group in todo for index, unit in enumerate(group))
    sizes = {number: len(group) for number, group in todo}
    inflight: deque[tuple[int, Future]] = deque()
    done: list[pa.Table] = []
    try:
        while flat or inflight:
            while flat and len(inflight) < readers:
                number, _, unit = flat.popleft()
                inflight.append((number, pool.submit(read, unit)))
            number, fut = inflight.popleft()
            done.append(fut.result())
            if len(done) == sizes[number]:
                yield number, done
                done = []
    finally:
        for _, fut in inflight:
            fut.cancel()


class background(Iterator[T]):
    """Iterate ``factory()`` on a thread of its own, at most ``depth`` items ahead of the consumer (0: each item
    is produced only when asked for). Errors reach the consumer in order.

    The source is created, driven and closed on that thread only. That matters for Prefect generator tasks:
    closing one runs Prefect machinery, which deadlocks if it happens in a garbage-collector finaliser on one
    of Prefect's own event-loop threads. An abandoned iterator only sets a flag (never joins); the thread then
    closes the source itself. The caller's context (a Prefect flow run) is copied to the thread, so task runs
    nest under the caller's flow run.
    """

    def __init__(self, factory: Callable[[], Iterator[T]], depth: int) -> None:
        self._queue: "queue.SimpleQueue[tuple[str, Any]]" = queue.SimpleQueue()
        self._tokens = threading.Semaphore(depth)
        self._stop = threading.Event()
        self._done = False
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run, factory), name="rh-table-stream",
                                        daemon=True)
        self._thread.start()

    def _wait_for_demand(self) -> bool:
        while not self._stop.is_set():
            if self._tokens.acquire(timeout=0.1):
                return not self._stop.is_set()
        return False

    def _run(self, factory: Callable[[], Iterator[T]]) -> None:
        source = None
        try:
            source = factory()
            while self._wait_for_demand():
                try:
                    item = next(source)
                except StopIteration:
                    self._queue.put(("end", None))
                    return
                self._queue.put(("item", item))
        except BaseException as exc:  # handed to the consumer, which re-raises it where the user sees it
            self._queue.put(("error", exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> "background[T]":
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        self._tokens.release()  # ask for one more item
        kind, item = self._queue.get()
        if kind == "item":
            return item
        self._done = True
        self._stop.set()
        if kind == "end":
            raise StopIteration
        raise item

    def close(self, wait: bool = False) -> None:
        """Stop the reader; with ``wait``, also wait until its thread has finished (never from a finaliser)."""
        self._done = True
        self._stop.set()
        if wait and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)

    def __del__(self) -> None:
        self._stop.set()


__all__ = ["Chunk", "RetryPolicy", "StreamSpec", "Unit", "background", "chunks", "plan", "read_ahead_depth"]
