"""The copy engine: moves files between any two systems, concurrently, streaming, atomically, resumably.

It knows systems only through :class:`~rh_prefect.systems.base.System` (capabilities, fsspec filesystem) and
never asks which backend it is talking to. One copy:

1. lists the source once and the destination once;
2. skips files already at the destination with the same size and a modification time no older than the
   source's (so a re-run, or a retry after a fault, transfers only what is missing);
3. copies the rest on a bounded thread pool - server-side when both ends are the same store, otherwise by
   streaming in fixed-size chunks (never a whole file in memory);
4. writes each file under a hidden temporary name and renames it into place on stores where a write is not
   atomic by itself, so a reader never sees a half-written file under its final name;
5. checks the byte count of every streamed file, and reports files, bytes, skips and throughput.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import posixpath
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Iterator, Optional

from rh_prefect import settings
from rh_prefect.errors import AlreadyExists, IntegrityError, NotFound, RhError, TransferError
from rh_prefect.progress import Progress, human_bytes, summary_markdown
from rh_prefect.systems.base import System, within_deadline

if TYPE_CHECKING:
    import asyncio

# asyncio, concurrent.futures and fsspec are imported where a copy needs them: listing a local folder (the command
# line's ls) needs none of them (~0.1 s of CPU at import).

logger = logging.getLogger("rh_prefect.transfer")

# Streams move settings.chunk_size bytes per read and write (8 MiB).

# What every copy in this process has moved so far; read it with moved_here().
_COUNTERS = {"bytes_copied": 0, "files_copied": 0}
_COUNTERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Moved:
    """Bytes and files that copies moved through one process, as :func:`moved_here` counts them.

    Subtract an earlier snapshot to get what happened in between.
    """

    bytes_copied: int = 0
    files_copied: int = 0

    def __sub__(self, earlier: "Moved") -> "Moved":
        return Moved(self.bytes_copied - earlier.bytes_copied, self.files_copied - earlier.files_copied)


def moved_here() -> Moved:
    """The bytes and files every copy has moved through this process so far (server-side copies and copies run
    by a worker or another process move none here). Shows where the bytes of a copy flowed::

        before = transfer.moved_here()
        folder.to("s3", "/bucket/data", via="worker")
        assert transfer.moved_here() - before == transfer.Moved()  # nothing passed through this process
    """
    with _COUNTERS_LOCK:
        return Moved(_COUNTERS["bytes_copied"], _COUNTERS["files_copied"])


@dataclass
class CopyReport:
    """What a copy did."""

    files_copied: int = 0
    files_skipped: int = 0
    bytes_copied: int = 0
    bytes_skipped: int = 0
    seconds: float = 0.0
    server_side: bool = False
    failures: dict[str, str] = field(default_factory=dict)
    #: temporary files left by earlier interrupted writes, removed from the destination
    temps_removed: int = 0

    @property
    def throughput(self) -> float:
        """Bytes per second actually copied."""
        return self.bytes_copied / self.seconds if self.seconds > 0 else 0.0

    def markdown(self, label: str) -> str:
        """The copy's summary as the markdown artifact a copy inside a Prefect run gets."""
        return summary_markdown(label, self.files_copied, self.bytes_copied, self.files_skipped, self.bytes_skipped,
                                self.seconds)

    def summary(self) -> str:
        mode = " (server-side)" if self.server_side else ""
        return (
            f"copied {self.files_copied} files / {human_bytes(self.bytes_copied)}{mode}, skipped {self.files_skipped} "
            f"unchanged ({human_bytes(self.bytes_skipped)}), in {self.seconds:.2f}s at {human_bytes(self.throughput)}/s"
        )


@dataclass(frozen=True)
class _Job:
    key: str  # relative path, "/"-separated
    src: str  # source fs path
    dst: str  # destination fs path
    size: int


def _count(nbytes: int, nfiles: int = 0) -> None:
    with _COUNTERS_LOCK:
        _COUNTERS["bytes_copied"] += nbytes
        _COUNTERS["files_copied"] += nfiles


# A temporary file untouched for settings.stale_temp_seconds (an hour) was left by a write that died (a killed
# process): a copy onto its directory removes it. Live writes touch their file as they go, so a slow write is
# never taken for one.


def list_files(system: System, root: str, temps: Optional[list[dict[str, Any]]] = None) -> dict[str, dict[str, Any]]:
    """``{relative key: info}`` of every file under ``root`` (fs path), leaving out unfinished temporary files
    (appended to ``temps`` when given: the hidden ``.name.rh-tmp-...`` files of single-file writes)."""
    out: dict[str, dict[str, Any]] = {}
    for page in _pages(system, root, temps):
        out.update(page)
    return out


def _pages(system: System, root: str, temps: Optional[list[dict[str, Any]]] = None) -> Iterator[dict[str, dict[str, Any]]]:
    """:func:`list_files` in pages, as the system's listing arrives (:meth:`System.iter_files`); nothing at all
    when ``root`` does not exist."""
    pages = system.iter_files(root)
    try:
        try:
            first = next(pages)
        except (FileNotFoundError, StopIteration):
            return
        for found in itertools.chain([first], pages):
            yield _keyed(system, root, found, temps)
    finally:
        pages.close()


def _keyed(system: System, root: str, found: dict[str, dict[str, Any]],
           temps: Optional[list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Listing entries (``{fs path: info}``) as ``{key relative to root: info}``, temporary files set aside."""
    prefix = root.rstrip("/") + "/"
    out = {}
    for path, info in found.items():
        if info.get("type") == "directory":
            continue
        norm = path if path.startswith("/") or not root.startswith("/") else "/" + path
        if norm == root.rstrip("/"):  # root is itself a file
            key = posixpath.basename(norm)
        elif norm.startswith(prefix):
            key = norm[len(prefix) :]
        else:
            continue
        if not key or key.endswith("/"):  # a directory placeholder object (a "folder" made in a web console)
            continue
        if system.is_temp_name(key):
            head, tail = posixpath.split(key)
            if temps is not None and system.is_temp_name(tail) and not system.is_temp_name(head):
                temps.append(dict(info, path=norm))
            continue
        out[key] = dict(info, path=norm)
    return out


def _remove_stale_temps(system: System, temps: list[dict[str, Any]]) -> int:
    """Remove temporary files untouched for ``settings.stale_temp_seconds`` (best effort); returns how many."""
    cutoff = time.time() - settings.current().stale_temp_seconds
    removed = 0
    for info in temps:
        mtime = system.mtime(info)
        if mtime is None or mtime > cutoff:
            continue
        try:
            system.fs.rm_file(info["path"])
            removed += 1
        except OSError as exc:  # gone already (another copy cleaned it), or not ours to remove: leave it
            logger.debug("could not remove stale temporary file %s: %s", info["path"], exc)
    if removed:
        logger.info("removed %d temporary file(s) left by interrupted writes under %s", removed,
                    system.describe())
    return removed


def _unchanged(src: System, src_info: dict, dst: System, dst_info: Optional[dict]) -> bool:
    if dst_info is None or int(dst_info.get("size") or 0) != int(src_info.get("size") or 0):
        return False
    src_m, dst_m = src.mtime(src_info), dst.mtime(dst_info)
    return src_m is not None and dst_m is not None and dst_m + 1.0 >= src_m


def copy_tree(
    src: System,
    src_root: str,
    dst: System,
    dst_root: str,
    *,
    overwrite: bool = True,
    keys: Optional[list[str]] = None,
    max_workers: Optional[int] = None,
    progress: Optional[Progress] = None,
) -> CopyReport:
    """Copy every file under ``src_root`` on ``src`` to the same relative paths under ``dst_root`` on ``dst``.

    ``src_root``/``dst_root`` are filesystem paths (``System.fs_path``). With ``overwrite=False`` a file that
    exists at the destination with different content raises :class:`AlreadyExists` before anything is copied.
    Otherwise copying starts with the first page of a source listed in pages (object stores, 1000 objects a
    page) while the next pages are listed, as rclone does.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    dst.check_writable(dst_root)
    started = time.perf_counter()
    report = CopyReport(server_side=src.same_store(dst))
    concurrency = max(1, min(max_workers or 64, src.max_concurrency, dst.max_concurrency))
    planner = _Planner(src, src_root, dst, dst_root, report.server_side, concurrency)
    progress = progress or Progress(f"copy {src.describe()} -> {dst.describe()}")
    progress.start(0, 0)
    failures: dict[str, BaseException] = {}
    running: dict[Any, _Unit] = {}
    njobs = 0

    def collect(fut: Any) -> None:
        unit = running.pop(fut)
        done = unit.jobs
        try:
            nbytes = fut.result()
        except _SomeFailed as partial:  # a batch: some files committed, some not
            failures.update(partial.failures)
            done, nbytes = partial.done, partial.nbytes
        except Exception as exc:  # collected per unit: one bad file must not hide the others' outcome
            failures.update({j.key: exc for j in unit.jobs})
            return
        report.files_copied += len(done)
        report.bytes_copied += nbytes
        progress.advance(len(done), sum(j.size for j in done))

    stale: list[dict[str, Any]] = []
    made: set[str] = set()
    try:
        # Both sides are listed at once (connections included): a re-run of a finished copy is mostly listing.
        # Within one store the destination is listed through the source's connection, which the server-side
        # copy uses for both ends anyway: one client to set up instead of two (~0.1 s of CPU for an S3 client).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rh-list") as lister, \
                ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="rh-copy") as pool:
            dst_listing = lister.submit(list_files, src if src.same_store(dst) else dst, dst_root, stale)
            dst_files: Optional[dict[str, dict[str, Any]]] = None
            pages = _source_pages(src, src_root, keys, overwrite)
            try:
                for page in pages:
                    if dst_files is None:
                        dst_files = dst_listing.result()
                    jobs, skipped = _page_jobs(src, page, dst, dst_files, dst_root, overwrite)
                    report.files_skipped += len(skipped)
                    report.bytes_skipped += sum(skipped)
                    units = planner.units(jobs)
                    for parent in sorted({posixpath.dirname(j.dst) for u in units if not u.makes_dirs
                                          for j in u.jobs} - made):
                        dst.makedirs(parent)
                        made.add(parent)
                    progress.add(len(jobs), sum(j.size for j in jobs), len(skipped), sum(skipped))
                    njobs += len(jobs)
                    for unit in units:
                        running[pool.submit(unit.run)] = unit
                    for fut in [f for f in running if f.done()]:
                        collect(fut)
                for fut in as_completed(list(running)):
                    collect(fut)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # a listing failed midway, or an interrupt
                raise
            finally:
                pages.close()
    except BaseException as exc:
        progress.finish(error=exc)
        raise
    progress.finish(error=next(iter(failures.values()), None))
    report.seconds = time.perf_counter() - started
    if failures:
        report.failures = {k: f"{type(e).__name__}: {e}" for k, e in failures.items()}
        first_key, first = next(iter(failures.items()))
        if len(failures) == njobs and isinstance(first, RhError):
            raise first
        raise TransferError(
            f"{len(failures)} of {njobs} files failed to copy to {dst.describe()} (first: {first_key}: "
            f"{type(first).__name__}: {first}). Files already committed stay; run the copy again to resume.",
            failures,
        ) from first
    if stale and keys is None:  # a whole-folder copy completed: its destination directory is ours to tidy
        report.temps_removed = _remove_stale_temps(dst, stale)
    logger.info("%s -> %s: %s", src.describe(), dst.describe(), report.summary())
    return report


def _source_pages(src: System, src_root: str, keys: Optional[list[str]],
                  overwrite: bool) -> Iterator[dict[str, dict[str, Any]]]:
    """The source listing in the pages the copy works through. One page (the whole listing) when nothing may
    start before it ends: picked ``keys`` must all exist, and ``overwrite=False`` checks every clash first."""
    pages = _pages(src, src_root)
    try:
        if keys is None and overwrite:
            listed = 0
            for page in pages:
                listed += len(page)
                yield page
            if not listed:
                _require_source(src, src_root)
            return
        src_files: dict[str, dict[str, Any]] = {}
        for page in pages:
            src_files.update(page)
        if not src_files:
            _require_source(src, src_root)
        if keys is not None:
            missing = [k for k in keys if k not in src_files]
            if missing:
                raise NotFound(f"Not in the source folder: {missing[:5]}")
            src_files = {k: src_files[k] for k in keys}
        yield src_files
    finally:
        pages.close()


def _require_source(src: System, src_root: str) -> None:
    """NotFound, unless ``src_root`` exists (an empty directory: nothing to copy)."""
    if not src.exists(src_root):
        raise NotFound(f"Nothing to copy: {src.url(src.user_path(src_root))} does not exist; check the path, "
                       "or write to the folder first.")


def _page_jobs(src: System, page: dict[str, dict[str, Any]], dst: System, dst_files: dict[str, dict[str, Any]],
               dst_root: str, overwrite: bool) -> tuple[list[_Job], list[int]]:
    """The files of one page of the source listing to copy, and the sizes of those skipped as unchanged;
    :class:`AlreadyExists` (before anything is copied) for clashes when ``overwrite`` is False."""
    jobs: list[_Job] = []
    skipped: list[int] = []
    clashes = []
    for key, info in sorted(page.items()):
        if _unchanged(src, info, dst, dst_files.get(key)):
            skipped.append(int(info.get("size") or 0))
            continue
        if key in dst_files and not overwrite:
            clashes.append(key)
        jobs.append(_Job(key, info["path"], posixpath.join(dst_root, key), int(info.get("size") or 0)))
    if clashes:
        raise AlreadyExists(
            f"{len(clashes)} file(s) already exist at the destination with different content (e.g. {clashes[:3]}); "
            "pass overwrite=True to replace them. Nothing was copied."
        )
    return jobs, skipped


#: files up to this size travel in bulk streams when a system offers them (tar over SSH)
BULK_MAX_FILE = 4 * 2**20
#: one bulk stream carries at most this many files / bytes, so several streams run in parallel
BULK_BATCH_FILES = 500
BULK_BATCH_BYTES = 128 * 2**20
#: parallel bulk streams (each is one channel on the remote host)
BULK_STREAMS = 2
#: below this many bytes (and half a batch of files) one stream carries them all
BULK_SPLIT_BYTES = 16 * 2**20


#: small files go in batches of this many to the event loop of an async filesystem (s3fs, gcsfs, sshfs)
ASYNC_BATCH_FILES = 100


@dataclass
class _Unit:
    """One piece of work for the pool: a single file, or a batch of small files (one stream, or coroutines)."""

    jobs: list[_Job]
    run: Any  # () -> bytes moved through this process
    makes_dirs: bool = False  # True when the unit creates its destination directories itself


class _SomeFailed(Exception):
    """Raised by a batch unit when some of its files failed: the others are committed."""

    def __init__(self, done: list[_Job], nbytes: int, failures: dict[str, BaseException]) -> None:
        super().__init__(f"{len(failures)} files failed")
        self.done, self.nbytes, self.failures = done, nbytes, failures


class _Planner:
    """Turns jobs into units of work for the pool. One per copy: its gates bound the whole copy, however many
    pages of the source listing its jobs come from."""

    def __init__(self, src: System, src_root: str, dst: System, dst_root: str, server_side: bool,
                 concurrency: int) -> None:
        self.src, self.src_root, self.dst, self.dst_root = src, src_root, dst, dst_root
        self.server_side = server_side
        self.bulk: Optional[str] = None
        if not server_side and src.is_local and dst.bulk_writes:
            self.bulk = "up"
        elif not server_side and dst.is_local and src.bulk_reads:
            self.bulk = "down"
        elif not server_side and src.bulk_reads and dst.writable:
            self.bulk = "through"  # e.g. a tar stream from a cluster, each file uploaded to a bucket as it arrives
        self.one = _async_copier(src, dst, server_side)
        # Files small enough to be bound by per-request overhead run as coroutines on the filesystem's event
        # loop, ``concurrency`` at once: about half the CPU of one thread per file handing calls to the loop.
        import asyncio

        self.gate = asyncio.Semaphore(concurrency)
        self.bulk_gate = threading.Semaphore(BULK_STREAMS)  # each stream holds a channel on the remote host

    def units(self, jobs: list[_Job]) -> list[_Unit]:
        src, dst, server_side = self.src, self.dst, self.server_side
        small = [j for j in jobs if j.size <= BULK_MAX_FILE] if self.bulk else []
        if len(small) < 8:  # a stream costs a remote process; not worth it for a handful of files
            small = []
        small_keys = {j.key for j in small}
        rest = [j for j in jobs if j.key not in small_keys]
        units = []
        one = self.one
        if one is not None:
            few = [j for j in rest if j.size <= BULK_MAX_FILE]
            rest = [j for j in rest if j.size > BULK_MAX_FILE]
            from fsspec.asyn import sync

            loop = (src.fs if server_side or not src.is_local else dst.fs).loop
            for i in range(0, len(few), ASYNC_BATCH_FILES):
                batch = few[i : i + ASYNC_BATCH_FILES]
                units.append(_Unit(batch, lambda b=batch: sync(loop, _copy_batch, b, one, self.gate)))
        units += [_Unit([j], lambda j=j: copy_file(src, j.src, dst, j.dst, j.size, server_side)) for j in rest]
        if small:
            total = sum(j.size for j in small)
            # A second stream in parallel pays once there is enough to share: each costs a remote session and
            # process start (200 files of 1 KiB: 0.23-0.34 s in one stream, 0.33-0.51 s in two).
            parallel = len(small) > BULK_BATCH_FILES // 2 or total > BULK_SPLIT_BYTES
            nbatches = max(min(BULK_STREAMS, len(small)) if parallel else 1, -(-len(small) // BULK_BATCH_FILES),
                           -(-total // BULK_BATCH_BYTES))
            # Runs of neighbouring keys (jobs come sorted): each stream then carries whole directories, which the
            # receiving end can put in place with one rename each instead of merging them file by file.
            for i in range(nbatches):
                batch = small[i * len(small) // nbatches:(i + 1) * len(small) // nbatches]
                units.append(_Unit(batch, lambda b=batch: _gated(self.bulk_gate, _copy_bulk, src, self.src_root, dst,
                                                                 self.dst_root, b, self.bulk), makes_dirs=True))
        return units


def _is_async(system: System) -> bool:
    return bool(getattr(system.fs, "async_impl", False))


def _async_copier(src: System, dst: System, server_side: bool) -> Optional[Any]:
    """A coroutine function copying one small file (``_Job`` -> bytes moved) when the systems' filesystems
    are asynchronous and every file can be committed without a rename on the remote side; else None."""
    if server_side:
        if not (src.atomic_writes and _is_async(src)):
            return None

        async def server(job: _Job) -> int:
            await src.server_side_copy_async(job.src, job.dst, job.size)
            return 0

        return server
    if dst.is_local and _is_async(src):
        async def get(job: _Job) -> int:
            with _committing(dst, job.dst) as target:
                nbytes = await src.get_file_async(job.src, target, job.size)
                if nbytes != job.size:  # inside the block: the temporary file is discarded, not committed
                    raise IntegrityError(f"{job.src}: read {nbytes} bytes but the source listed {job.size}; "
                                         "copy again.")
            _count(job.size, 1)
            return job.size

        return get
    if src.is_local and dst.atomic_writes and _is_async(dst):
        async def put(job: _Job) -> int:
            await dst.fs._put_file(job.src, job.dst, **dst.put_options(job.size))
            _count(job.size, 1)
            return job.size

        return put
    if dst.atomic_writes and not src.is_local and _is_async(src) and _is_async(dst) and src.fs.loop is dst.fs.loop:
        async def through(job: _Job) -> int:
            data = await src.cat_file_async(job.src, job.size)
            if len(data) != job.size:
                raise IntegrityError(f"{job.src}: read {len(data)} bytes but the source listed {job.size}; copy again.")
            await dst.fs._pipe_file(job.dst, data)  # one complete-object upload: visible all at once
            _count(job.size, 1)
            return job.size

        return through
    return None


async def _copy_batch(batch: list[_Job], one: Any, gate: asyncio.Semaphore) -> int:
    async def guarded(job: _Job) -> int:
        async with gate:
            return await within_deadline(one(job), job.size, job.key)

    import asyncio

    results = await asyncio.gather(*(guarded(j) for j in batch), return_exceptions=True)
    failures = {j.key: r for j, r in zip(batch, results) if isinstance(r, BaseException)}
    nbytes = sum(r for r in results if not isinstance(r, BaseException))
    if failures:
        raise _SomeFailed([j for j in batch if j.key not in failures], nbytes, failures)
    return nbytes


def _gated(gate: threading.Semaphore, fn: Any, *args: Any) -> Any:
    with gate:
        return fn(*args)


def _copy_bulk(src: System, src_root: str, dst: System, dst_root: str, batch: list[_Job], direction: str) -> int:
    keys = [j.key for j in batch]
    if direction == "through":
        return _copy_bulk_through(src, src_root, dst, batch)
    if direction == "up":
        dst.bulk_upload(src_root, keys, dst_root)
    else:
        src.bulk_download(src_root, keys, dst_root)
    nbytes = sum(j.size for j in batch)
    _count(nbytes, len(batch))
    return nbytes


#: writers per bulk stream when its files go to a remote system (each holds at most two files in memory)
BULK_THROUGH_WRITERS = 4


def _copy_bulk_through(src: System, src_root: str, dst: System, batch: list[_Job]) -> int:
    """One bulk read stream from ``src``; each file is written to ``dst`` as it arrives, by a few writer
    threads (object stores take one request per file, so several must be in flight). Memory: at most
    ``2 * BULK_THROUGH_WRITERS`` small files (<= BULK_MAX_FILE each) are held at once."""
    jobs = {j.key: j for j in batch}
    for parent in sorted({posixpath.dirname(j.dst) for j in batch}):
        dst.makedirs(parent)
    room = threading.Semaphore(2 * BULK_THROUGH_WRITERS)
    errors: list[BaseException] = []
    written: list[int] = []

    def write(job: _Job, data: bytes) -> None:
        try:
            if len(data) != job.size:
                raise IntegrityError(f"{job.src}: read {len(data)} bytes but the source listed {job.size}; copy again.")
            if dst.atomic_writes:
                dst.fs.pipe_file(job.dst, data)  # one complete-object upload: visible all at once
            else:
                with _committing(dst, job.dst) as target:
                    dst.fs.pipe_file(target, data)
            written.append(len(data))
        except BaseException as exc:  # raised by the stream below (first one wins)
            errors.append(exc)
        finally:
            room.release()

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=BULK_THROUGH_WRITERS, thread_name_prefix="rh-bulk-write") as writers:
        def handle(key: str, data: bytes) -> None:
            if errors:
                raise errors[0]  # stop reading: a write already failed
            room.acquire()
            writers.submit(write, jobs[key], data)

        try:
            src.bulk_read(src_root, list(jobs), handle)
        finally:
            writers.shutdown(wait=True)
    if errors:
        raise errors[0]
    nbytes = sum(written)
    _count(nbytes, len(batch))
    return nbytes


#: files above this size hold one of BIG_FILES_IN_FLIGHT slots while they move, bounding memory per process
BIG_FILE = 64 * 2**20
BIG_FILES_IN_FLIGHT = 2
_BIG_GATE = threading.Semaphore(BIG_FILES_IN_FLIGHT)


@contextlib.contextmanager
def _big_file_gate(size: Optional[int]) -> Iterator[None]:
    if size is not None and size > BIG_FILE:
        with _BIG_GATE:
            yield
    else:
        yield


def copy_file(
    src: System, src_path: str, dst: System, dst_path: str, size: Optional[int] = None, server_side: bool = False
) -> int:
    """Copy one file (fs paths) and commit it atomically; returns the bytes moved through this process."""
    if server_side:
        with _committing(dst, dst_path) as target:
            src.server_side_copy(src_path, target, size)
        return 0
    if src.is_local:
        with _committing(dst, dst_path) as target:
            with _big_file_gate(size):
                dst.put_file(src_path, target, size)
        nbytes = size if size is not None else dst.fs.size(dst_path)
    elif dst.is_local:
        with _committing(dst, dst_path) as target:
            with _big_file_gate(size):
                src.fs.get_file(src_path, target, **src.get_options(size))
        nbytes = size if size is not None else dst.fs.size(dst_path)
    else:
        with _big_file_gate(size), src.open_read(src_path, size) as reader, \
                open_write(dst, dst_path, size=size) as writer:
            chunk = settings.current().chunk_size
            nbytes = _pump_overlapped(reader, writer, chunk) if size is None or size > chunk else _pump(reader, writer, chunk)
            if size is not None and nbytes != size:  # inside the block: the upload is discarded, not committed
                raise IntegrityError(f"{src_path}: read {nbytes} bytes but the source listed {size}; copy again.")
    _count(nbytes, 1)
    return nbytes


def copy_one(src: System, src_path: str, dst: System, dst_path: str) -> int:
    """Copy the file ``src_path`` (an fs path) to ``dst_path``, committed atomically, server-side within one store;
    returns the bytes moved through this process."""
    return copy_file(src, src_path, dst, dst_path, src.fs.size(src_path), src.same_store(dst))


def _pump(reader: IO[bytes], writer: IO[bytes], chunk_size: int) -> int:
    total = 0
    while True:
        chunk = reader.read(chunk_size)
        if not chunk:
            return total
        writer.write(chunk)
        total += len(chunk)


#: chunks read ahead of the writer in a streaming copy between two remote systems
READ_AHEAD_CHUNKS = 1


def _pump_overlapped(reader: IO[bytes], writer: IO[bytes], chunk_size: int) -> int:
    """Like :func:`_pump`, but a thread reads the next chunk while this one is being written, so a copy between
    two remote systems takes about max(read, write) instead of read + write. At most ``READ_AHEAD_CHUNKS`` + 2
    chunks are held at once."""
    chunks: queue.Queue = queue.Queue(maxsize=READ_AHEAD_CHUNKS)
    stop = threading.Event()

    def offer(item: Any) -> None:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def read_ahead() -> None:
        try:
            while not stop.is_set():
                chunk = reader.read(chunk_size)
                offer(chunk)
                if not chunk:
                    return
        except BaseException as exc:  # handed to the writing side, which raises it
            offer(exc)

    thread = threading.Thread(target=read_ahead, name="rh-read-ahead", daemon=True)
    thread.start()
    total = 0
    try:
        while True:
            item = chunks.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                return total
            writer.write(item)
            total += len(item)
    finally:
        stop.set()
        # The reader stops after the read in progress; the caller closes it only once this thread is done.
        thread.join(timeout=120)


@contextlib.contextmanager
def _committing(system: System, fs_path: str) -> Iterator[str]:
    """Yield the path to write to; on success make it appear under ``fs_path`` in one step."""
    if system.atomic_writes:
        yield fs_path
        return
    tmp = system.temp_path(fs_path)
    try:
        yield tmp
        system.commit_temp(tmp, fs_path)
    except BaseException:
        _discard(system, tmp)
        raise


def _discard(system: System, tmp: str) -> None:
    try:
        if system.fs.exists(tmp):
            system.fs.rm_file(tmp)
    except OSError as exc:  # best effort: a leftover hidden temp file is ignored by listings and copies
        logger.warning("could not remove temporary file %s: %s", tmp, exc)


@contextlib.contextmanager
def open_write(system: System, fs_path: str, block_size: Optional[int] = None,
               size: Optional[int] = None) -> Iterator[IO[bytes]]:
    """A binary file object whose content appears under ``fs_path`` only when the block exits cleanly.
    ``size``: how many bytes will be written, when known (lets a store pick its upload strategy);
    ``block_size``: the write buffer (default ``settings.chunk_size``)."""
    block_size = block_size or settings.current().chunk_size
    system.check_writable(fs_path)
    system.makedirs(posixpath.dirname(fs_path))
    if system.atomic_writes:
        # Object stores publish an object only when the upload completes; abort on error so no part lingers.
        f = system.open_upload(fs_path, block_size, size)
        try:
            yield f
        except BaseException:
            try:
                f.discard()
            except OSError as exc:  # the original error matters more; an unfinished upload is never visible
                logger.warning("could not abort upload of %s: %s", fs_path, exc)
            finally:
                # A discarded file that is not marked closed is flushed when garbage-collected: gcsfs would then
                # publish the partial buffer (a write smaller than one block) under the final name.
                f.closed = True
            raise
        f.close()
        return
    with _committing(system, fs_path) as target:
        with system.fs.open(target, "wb") as f:
            yield f


def write_bytes(system: System, fs_path: str, data: bytes) -> None:
    """Write a small payload atomically."""
    with open_write(system, fs_path) as f:
        f.write(data)


__all__ = ["CopyReport", "Moved", "copy_file", "copy_one", "copy_tree", "list_files", "moved_here", "open_write",
           "write_bytes"]

