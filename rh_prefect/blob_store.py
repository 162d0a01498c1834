"""Blob storage format: immutable version objects beside the blob's file, committed by one pointer.

Layout of a blob whose path is ``P`` (on any System: local disk, a cluster over SFTP, S3, GCS)::

    <dir of P>/<name of P>                                    the published copy: a plain file, latest version
    <dir of P>/.<name of P>.rh-versions/v-<UTC time>Z-<id>    one immutable object per write
    <dir of P>/.<name of P>.rh-versions/v-<UTC time>Z-<id>.json   what it is: size, sha256, serializer, created

**Write** (:func:`write`): the bytes stream into a new version object, committed atomically by the copy engine's
writer (temporary name + rename on file/ssh, one whole-object upload on s3/gs) while their size and sha256 are
computed; then its description (size, sha256, serializer, time) is stored beside it, so that any kept version can
be read verified, listed and rolled back to without the registry; then ``P`` is *published*: replaced, atomically, by a copy of that object made on the store itself
(S3 CopyObject, a GCS rewrite, ``cp`` on the SSH host, a local copy); then versions beyond the newest
``settings.blob_versions_kept`` are dropped. Nothing else is ever written, and nothing is read back.

**Commit**: the caller records ``(version, size, sha256)`` - a Blob block - and saving that record is the commit
point (the pointer). A version is written before any record can name it, and never changes afterwards.

**Read** (:func:`verified`, :func:`open_read`): a reader that holds a record reads the version object it names,
never ``P``, checking size and sha256 while it streams (before anything is deserialized). So it gets exactly the
bytes its record describes, or :class:`IntegrityError` (the bytes were changed behind rh-prefect's back), or
:class:`NotFound` (the version was dropped by retention, or the blob was removed): no waiting, no polling. A
record without a version (a blob described by path only, or saved before versions existed) reads ``P``.

**P is for other tools** (``aws s3 cp``, ``gsutil``, ``scp``, a plain ``open``): it always holds one complete
version, the latest one published. With concurrent writers it may hold another writer's complete version than
the one the registry names (the last registration wins, the last publication wins, and the two races are
independent); it is never a torn file.

**Versions and rollback**: :func:`list_versions` lists the kept versions from storage; :func:`rollback` publishes
``P`` from a kept version and returns its description, for the caller to record (the registry entry is the
commit). A Blob's current version is the one its record names.

**Retention**: after each write the newest ``blob_versions_kept`` versions (by version id, which sorts by UTC
time) are kept, plus the one just written, the one the writer's previous record named, and every version younger
than ``versions_min_age`` (10 minutes): with many concurrent writers, a registration that arrives late, or a
reader that has just loaded the entry, may name a version that is no longer among the newest N, and it must still
be there (Delta Lake keeps unreferenced files by age for the same reason). A reader holding a record of a version
that was dropped later gets a NotFound that says so.

Hidden names: the versions directory (see :data:`~rh_prefect.systems.base.VERSIONS_SUFFIX`) is one of the names
:meth:`~rh_prefect.systems.base.System.is_temp_name` reports, so folder listings and folder copies leave it out.

This module is a storage format: it knows only systems, the copy engine, errors and settings.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import IO, Any, Iterable, Iterator, Optional

from rh_prefect import settings, transfer
from rh_prefect.errors import IntegrityError, InvalidArgument, NotFound, RhError
from rh_prefect.systems.base import VERSIONS_SUFFIX, System
from rh_prefect import versions as _versions
from rh_prefect.versions import Version

logger = logging.getLogger("rh_prefect.blob")

#: remote versions up to this size are verified in memory before they are handed on; larger ones in a temp file
SPOOL_IN_MEMORY = 64 * 2**20
#: a version's description beside it: ``<version id>`` + this
INFO_SUFFIX = ".json"
_INFO_FORMAT = "rh-blob-version"

# --------------------------------------------------------------------------------------------- names
#: the version ids Table and Blob share (:mod:`rh_prefect.versions`)
new_version_id = _versions.new_version_id
is_version_id = _versions.is_version_id


def _version_id(when: datetime) -> str:
    """The smallest version id made at ``when`` (ids sort by their UTC time)."""
    return f"v-{when.strftime('%Y%m%dT%H%M%S%f')}Z"


def versions_dir(fs_path: str) -> str:
    """The hidden directory that holds the versions of the blob at ``fs_path``."""
    head, tail = posixpath.split(fs_path.rstrip("/"))
    return posixpath.join(head, f".{tail}{VERSIONS_SUFFIX}")


def info_path(fs_path: str, version: str) -> str:
    """Where the description (size, sha256, serializer, created) of version ``version`` is kept."""
    return version_path(fs_path, version) + INFO_SUFFIX


def version_path(fs_path: str, version: str) -> str:
    """Where version ``version`` of the blob at ``fs_path`` is stored. A version that is not an id (a block edited
    by hand) is refused: it must never lead a read or a delete outside the versions directory."""
    if not isinstance(version, str) or not is_version_id(version):
        raise InvalidArgument(
            f"{version!r} is not a blob version id (like 'v-20261204T112144123456Z-1a2b3c4d'); load the blob "
            "again by name, or clear its version field to read the file at its path."
        )
    return posixpath.join(versions_dir(fs_path), version)


# --------------------------------------------------------------------------------------------- writing
class HashingWriter(io.RawIOBase):
    """Forwards writes to a binary file in bounded chunks while counting bytes and computing sha256."""

    def __init__(self, f: IO[bytes]) -> None:
        super().__init__()
        self._f = f
        self._sha = hashlib.sha256()
        self.size = 0
        #: the error the underlying file raised, if any: a storage failure, not the serializer's fault
        self.io_error: Optional[BaseException] = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")  # numpy buffers arrive as typed, multi-dimensional views
        total = view.nbytes
        chunk_size = settings.current().chunk_size
        for start in range(0, total, chunk_size):
            piece = view[start : start + chunk_size]
            self._sha.update(piece)
            chunk = data if isinstance(data, bytes) and total <= chunk_size else bytes(piece)
            try:
                self._f.write(chunk)
            except BaseException as exc:
                self.io_error = exc
                raise
            self.size += len(chunk)
        return total

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


class VersionWriter(HashingWriter):
    """What :func:`write` yields: a writer of one new version. ``version`` is its id; ``size`` and ``sha256``
    describe the bytes written, and are final once the ``with`` block has exited cleanly."""

    def __init__(self, f: IO[bytes], version: str) -> None:
        super().__init__(f)
        self.version = version


@contextmanager
def write(system: System, fs_path: str, *, size: Optional[int] = None,
          keep: Iterable[Optional[str]] = (), serializer: Optional[str] = None) -> Iterator[VersionWriter]:
    """Write a new version of the blob at ``fs_path`` (see the module docstring): the bytes written to the
    yielded writer become an immutable version object when the block exits cleanly, then ``fs_path`` is
    published as a copy of it and older versions beyond the kept number are dropped (never those in ``keep``,
    e.g. the version the caller's record names now). If the block raises, nothing is committed: no version
    object, ``fs_path`` unchanged. ``size``: the byte count, when known (lets a store pick its upload strategy).

    The caller records ``(writer.version, writer.size, writer.sha256)``; the same is stored beside the version
    (with ``serializer``), so the version can be read verified and rolled back to later.
    """
    version = new_version_id()
    target = version_path(fs_path, version)
    try:
        with transfer.open_write(system, target, size=size) as raw:
            writer = VersionWriter(raw, version)
            yield writer
    except BaseException:
        _forget_empty_dir(system, versions_dir(fs_path))
        raise
    _write_info(system, fs_path, version, writer.size, writer.sha256, serializer)
    publish(system, fs_path, version, writer.size)
    sweep(system, fs_path, keep=(version, *keep))


def _write_info(system: System, fs_path: str, version: str, size: int, sha256: Optional[str],
                serializer: Optional[str], created: Optional[str] = None) -> None:
    doc = {"format": _INFO_FORMAT, "version": version, "size": size, "sha256": sha256, "serializer": serializer,
           "created": created or datetime.now(timezone.utc).isoformat(timespec="microseconds")}
    transfer.write_bytes(system, info_path(fs_path, version), json.dumps(doc, indent=1).encode("utf-8"))


def read_info(system: System, fs_path: str, version: str) -> Optional[dict[str, Any]]:
    """The description stored beside version ``version`` (size, sha256, serializer, created), or None when there
    is none (a version written before descriptions were stored, or one being dropped)."""
    try:
        raw = system.fs.cat_file(info_path(fs_path, version))
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        if doc.get("format") != _INFO_FORMAT or doc.get("version") != version:
            raise ValueError(doc.get("format"))
        return doc
    except (ValueError, AttributeError) as exc:
        raise RhError(f"The description of blob version {version} at {system.url(system.user_path(fs_path))} "
                      f"cannot be read ({exc}); upgrade rh-prefect, or write the blob again.") from None


def _forget_empty_dir(system: System, vdir: str) -> None:
    """After a failed write: remove the versions directory if the write made it and nothing else is in it, so a
    failed first write leaves the place as it was."""
    try:
        system.remove_empty_dir(vdir)
    except OSError:
        pass  # not empty (other versions, another writer's temporary file) or not there: it stays, as it should


def publish(system: System, fs_path: str, version: str, size: Optional[int] = None) -> None:
    """Replace the file at ``fs_path`` by a copy of version ``version`` made on the store itself (no byte
    through this process), committed atomically: other tools reading ``fs_path`` see one complete version."""
    transfer.copy_file(system, version_path(fs_path, version), system, fs_path, size, server_side=True)


def versions(system: System, fs_path: str) -> list[str]:
    """The ids of the versions stored for the blob at ``fs_path``, oldest first (a fresh listing)."""
    return sorted(_listing(system, fs_path)[0])


def list_versions(system: System, fs_path: str, current: Optional[str]) -> list[Version]:
    """Every kept version of the blob at ``fs_path``, oldest first, described from storage; ``current``: the
    version the caller's record names."""
    found = _listing(system, fs_path)[0]
    out = []
    for vid in sorted(found):
        info = read_info(system, fs_path, vid) or {}
        try:
            created = datetime.fromisoformat(info["created"])
        except (KeyError, TypeError, ValueError):
            created = _versions.id_time(vid) or datetime.fromtimestamp(0, timezone.utc)
        size = info.get("size", found[vid].get("size"))
        out.append(Version(id=vid, created=created, rows=None, size=int(size or 0), checksum=info.get("sha256"),
                           current=vid == current))
    return out


def missing_version(system: System, fs_path: str, version: str, label: str) -> NotFound:
    """The NotFound for a version that is not stored: it names it and the versions that are."""
    try:
        kept = versions(system, fs_path)
    except OSError:
        kept = []
    return NotFound(
        f"{label} has no version {version}: it was never written here or retention dropped it (a blob keeps its "
        f"newest {settings.current().blob_versions_kept} versions, setting blob_versions_kept). Kept versions, "
        f"newest first: {_versions.listing(kept)}. List them with blob.versions(). Nothing was changed."
    )


def describe(system: System, fs_path: str, version: str, label: str) -> tuple[int, Optional[str], Optional[str]]:
    """``(size, sha256, serializer)`` of the stored version ``version``: from its description, or for a version
    stored without one, its size (sha256 and serializer None). NotFound naming the kept versions otherwise."""
    path = version_path(fs_path, version)
    try:
        size = int(system.fs.size(path))
    except FileNotFoundError:
        raise missing_version(system, fs_path, version, label) from None
    info = read_info(system, fs_path, version) or {}
    return size, info.get("sha256"), info.get("serializer")


def rollback(system: System, fs_path: str, version: str, label: str) -> tuple[int, str, Optional[str]]:
    """Publish ``fs_path`` from the kept version ``version`` and return its ``(size, sha256, serializer)``, for
    the caller to record (that record is the commit). A version stored without a description is read once to
    compute its sha256. NotFound (naming the kept versions) when it is not stored; nothing changes then."""
    size, sha256, serializer = describe(system, fs_path, version, label)
    if sha256 is None:
        with open_read(system, fs_path, version, label) as f:
            size, sha256 = digest(f)
    publish(system, fs_path, version, size)
    return size, sha256, serializer


def _listing(system: System, fs_path: str) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """``({version id: info}, [info of temporary files and descriptions without a version, in the versions
    directory])``."""
    vdir = versions_dir(fs_path)
    found: dict[str, dict[str, Any]] = {}
    temps: list[dict[str, Any]] = []
    infos: dict[str, dict[str, Any]] = {}
    try:
        for page in system.iter_files(vdir):  # object stores: a paged listing of the prefix, not the cached one
            for path, info in page.items():
                name = posixpath.basename(path.rstrip("/"))
                if is_version_id(name):
                    found[name] = dict(info, path=path)
                elif name.endswith(INFO_SUFFIX) and is_version_id(name[:-len(INFO_SUFFIX)]):
                    infos[name[:-len(INFO_SUFFIX)]] = dict(info, path=path)
                elif ".rh-tmp-" in name:
                    temps.append(dict(info, path=path))
    except FileNotFoundError:
        pass
    # A description whose version is gone (dropped, or a write that died between the two) goes like a temp file.
    temps += [info for vid, info in infos.items() if vid not in found]
    return found, temps


def sweep(system: System, fs_path: str, keep: Iterable[Optional[str]] = ()) -> list[str]:
    """Drop the versions of the blob at ``fs_path`` beyond the newest ``settings.blob_versions_kept``, except
    those in ``keep`` and those younger than ``settings.versions_min_age`` (a registration or a reader may still
    be on its way to them); also temporary files of writes that died, once older than ``settings.stale_temp_seconds``.
    Best effort (a failure is logged: the write it follows is complete). Returns the ids dropped."""
    config = settings.current()
    try:
        found, temps = _listing(system, fs_path)
    except OSError as exc:
        logger.warning("could not list the versions of %s to drop old ones: %s", fs_path, exc)
        return []
    keep = {k for k in keep if k}
    ordered = sorted(found, reverse=True)
    young = _version_id(datetime.now(timezone.utc) - timedelta(seconds=config.versions_min_age))
    drop = [v for v in ordered[config.blob_versions_kept:] if v not in keep and v < young]
    cutoff = time.time() - config.stale_temp_seconds
    stale = [t["path"] for t in temps if (system.mtime(t) or cutoff) < cutoff]
    dropped = []
    # the version object first, then its description: a description never outlives its version for long
    doomed = [p for v in drop for p in (found[v]["path"], found[v]["path"] + INFO_SUFFIX)]
    for path in doomed + stale:
        try:
            system.fs.rm_file(path)
        except FileNotFoundError:
            pass  # another writer's sweep took it first
        except OSError as exc:
            logger.warning("could not drop old blob version %s: %s", path, exc)
            continue
        dropped.append(posixpath.basename(path))
    return [d for d in dropped if is_version_id(d)]


def copy(src: System, src_fs_path: str, dst: System, dst_fs_path: str, version: str, label: str,
         size: Optional[int] = None, sha256: Optional[str] = None, serializer: Optional[str] = None) -> None:
    """Copy version ``version`` of the blob at ``src_fs_path`` on ``src`` to the same version of the blob at
    ``dst_fs_path`` on ``dst`` (server-side within one store, otherwise streamed in chunks), then publish the
    destination's file and drop its old versions: the copy carries the version it copied. ``size``: the size
    the caller's record names, checked against the source before and the destination after the copy; ``sha256``
    and ``serializer``: the record's, stored beside the copy when the source has no description."""
    source = version_path(src_fs_path, version)
    try:
        with src.guard(label):
            actual = int(src.fs.size(source))
    except FileNotFoundError:
        raise _missing(src, src_fs_path, version, label) from None
    if size is not None and actual != size:
        raise IntegrityError(
            f"{label} records {size} bytes for version {version}, but {actual} bytes are stored: it was changed "
            "outside rh_prefect. Check it with blob.verify() and rewrite it with blob.write(data)."
        )
    target = version_path(dst_fs_path, version)
    dst.makedirs(posixpath.dirname(target))
    transfer.copy_file(src, source, dst, target, actual, src.same_store(dst))
    copied = int(dst.fs.size(target))
    if copied != actual:
        raise IntegrityError(
            f"{label} was copied to {dst.url(dst.user_path(dst_fs_path))}, but the copy has {copied} bytes where "
            f"the source has {actual}; copy it again."
        )
    info = read_info(src, src_fs_path, version) or {}
    _write_info(dst, dst_fs_path, version, actual, info.get("sha256", sha256), info.get("serializer", serializer),
                info.get("created"))
    publish(dst, dst_fs_path, version, actual)
    sweep(dst, dst_fs_path, keep=(version,))


def remove(system: System, fs_path: str) -> None:
    """Delete the blob at ``fs_path``: its file and all its versions (nothing there is fine)."""
    for path in (fs_path, versions_dir(fs_path)):
        try:
            system.rm_tree(path)
        except FileNotFoundError:
            pass


def exists(system: System, fs_path: str, version: Optional[str]) -> bool:
    """True when the bytes a record names are stored: version ``version``, or the file when it is None."""
    path = fs_path if version is None else version_path(fs_path, version)
    return bool(system.fs.isfile(path))


# --------------------------------------------------------------------------------------------- reading
def _missing(system: System, fs_path: str, version: Optional[str], label: str) -> NotFound:
    """The NotFound for bytes that are not there: a dropped version when the blob is still stored, else none."""
    url = system.url(system.user_path(fs_path))
    if version is not None and (system.fs.exists(fs_path) or versions(system, fs_path)):
        return NotFound(
            f"{label}: version {version} is no longer stored - a blob keeps its newest "
            f"{settings.current().blob_versions_kept} versions (setting blob_versions_kept) and this one was "
            "dropped after newer writes. Load the blob again (rh.blob(name=...)) to read its current version."
        )
    return NotFound(
        f"{label} has no stored bytes (nothing at {url}); write it first with blob.write(data), or check the path."
    )


@contextmanager
def open_read(system: System, fs_path: str, version: Optional[str], label: str) -> Iterator[IO[bytes]]:
    """The stored bytes a record names, unverified, as a streaming file object: version ``version``, or the file
    at ``fs_path`` when it is None. NotFound (saying which) when they are not stored."""
    path = fs_path if version is None else version_path(fs_path, version)
    try:
        with system.guard(label):  # refused credentials, unreachable endpoints: our errors, with advice
            f = system.open_read(path)  # the system's read size (SFTP's is bounded by the server's limits)
    except FileNotFoundError:
        raise _missing(system, fs_path, version, label) from None
    with f:
        yield f


def digest(f: IO[bytes], sink: Optional[IO[bytes]] = None) -> tuple[int, str]:
    """``(size, sha256)`` of what ``f`` holds from its position to its end, copied to ``sink`` when given."""
    sha = hashlib.sha256()
    size = 0
    chunk_size = settings.current().chunk_size
    while True:
        chunk = f.read(chunk_size)
        if not chunk:
            return size, sha.hexdigest()
        sha.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)


def check(found: tuple[int, str], size: Optional[int], sha256: Optional[str], label: str) -> None:
    """IntegrityError unless ``found`` (size, sha256 of the stored bytes) is what the record names."""
    got_size, got_sha = found
    if (size is None or got_size == size) and (sha256 is None or got_sha == sha256):
        return
    raise IntegrityError(
        f"{label} failed verification: the block records {size} bytes with sha256 {sha256}, but the stored "
        f"bytes are {got_size} bytes with sha256 {got_sha}. They were changed or corrupted outside rh_prefect, "
        "so nothing was deserialized. Rewrite the blob with blob.write(data), or copy it back from a good "
        "copy with good_copy.to(...)."
    )


@contextmanager
def verified(system: System, fs_path: str, version: Optional[str], size: Optional[int], sha256: Optional[str],
             label: str) -> Iterator[IO[bytes]]:
    """A reader of the stored bytes a record names (see :func:`open_read`), yielded only after they matched its
    size and sha256: bytes that were tampered with (a pickle can run code) must not be deserialized before the
    check. A record without a checksum (a blob described by path only) is read as it is."""
    if sha256 is None:
        with open_read(system, fs_path, version, label) as f:
            yield f
        return
    if system.is_local:  # reading the file twice is cheaper than a copy; one open file: the bytes that were
        with open_read(system, fs_path, version, label) as f:  # checked, even if the path is replaced meanwhile
            check(digest(f), size, sha256, label)
            f.seek(0)
            yield f
        return
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, prefix="rh-blob-") as spool:
        with open_read(system, fs_path, version, label) as f:
            found = digest(f, sink=spool)
        check(found, size, sha256, label)
        spool.seek(0)
        yield spool  # type: ignore[misc]


__all__ = [
    "HashingWriter", "VersionWriter", "check", "copy", "describe", "digest", "exists", "info_path", "is_version_id",
    "list_versions", "missing_version", "new_version_id", "open_read", "publish", "read_info", "remove", "rollback",
    "sweep", "verified", "version_path", "versions", "versions_dir", "write",
]
