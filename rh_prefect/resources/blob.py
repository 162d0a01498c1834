"""Blob: one serialized object on any system, written atomically and verified when read back.

A Blob is a single file: the bytes of one object (a model checkpoint, a dict of metrics, a numpy array, raw bytes)
turned into a byte stream by a serializer (:mod:`rh_prefect.serializers`). Writes stream through the copy engine's
atomic writer, so a reader sees the old bytes or the new ones, never a torn file; the saved block records the
size and sha256 of what was written, and :meth:`Blob.fetch` checks both before it deserializes anything.

Three kinds of Blob, decided by what :func:`blob` is given:

* **stored** - it has a path on a system (given, or the default place for its name); data is written there;
* **in memory** - ``rh.blob(data=x)`` with no name, path or system: nothing is written, ``fetch()`` returns ``x``;
  ``save("my-blob")`` writes it to the default place for that name and registers it, ``to(system)`` writes it
  there. ``save()`` without a name is an error: an unnamed object with no system has nowhere to live;
* **described by path** - ``rh.blob(path=..., system=...)`` for bytes written by someone else: no checksum is
  recorded, so ``fetch()`` works but cannot verify (call :meth:`Blob.write` or :meth:`Blob.upload` to record one).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import tempfile
import time
import uuid
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterator, Optional, TypeVar, Union

from pydantic import Field, PrivateAttr

from rh_prefect import names, serializers, transfer

from rh_prefect.runtime import registry, tasks
from rh_prefect.errors import IntegrityError, InvalidArgument, InvalidPath, NotFound
from rh_prefect.resources.base import StoredResource, SystemArg, place
from rh_prefect.resources.folder import Folder
from rh_prefect.serializers import SerializationError
from rh_prefect.resources.cluster import Cluster
from rh_prefect.systems import System, check_path, check_relative_key, get_system

CHUNK_SIZE = transfer.CHUNK_SIZE
#: remote blobs up to this size are verified in memory before they are deserialized; larger ones in a temp file
SPOOL_IN_MEMORY = 64 * 2**20
#: the serializer used to read a blob that records none (described by path only); Runhouse's default
READ_DEFAULT = "pickle"
#: a saved blob whose stored bytes do not match its registry entry is read again until neither has changed for
#: this long: a writer commits its bytes first and registers their checksum right after (see _until_consistent)
REGISTRY_LAG_SECONDS = 2.0
#: ... or for this long once either was seen changing (writers are active: a registration may be slow)
REGISTRY_LAG_ACTIVE_SECONDS = 30.0
#: ... and at least this many times as long as loading the entry took (a busy server registers slowly too)
REGISTRY_LAG_LOADS = 10
#: ... and for at most this long in all (writers overwriting the blob without a pause)
REGISTRY_LAG_MAX_SECONDS = 60.0

logger = logging.getLogger("rh_prefect.blob")
T = TypeVar("T")
_NO_DATA = object()


class Blob(StoredResource):
    """One object stored as a single file on the local disk, a cluster (SSH), S3 or GCS - atomic and verified.

    The block records the serializer, the size and the sha256 checksum of the stored bytes; ``fetch()`` checks
    them and raises :class:`~rh_prefect.errors.IntegrityError` if the bytes were changed behind its back.

    Example:
        ```python
        import rh_prefect as rh
        ckpt = rh.blob(data={"step": 10}, name="my-ckpt", path="/tmp/ckpt.pkl").save()
        ckpt_s3 = ckpt.to(system="s3", path="/my-bucket/ckpts/ckpt.pkl")   # copied by the engine
        print(rh.blob(name="my-ckpt").fetch())                            # {'step': 10}, verified
        ```
    """

    _block_type_name = "rh Blob"
    _description = "One serialized object (pickle, bytes, text, json) on local disk, a cluster, S3 or GCS."
    _documentation_url = None

    serializer: Optional[str] = Field(
        default=None,
        title="Serializer",
        description="How the object is stored: pickle, bytes, text, json or cloudpickle. Empty: read as pickle.",
    )
    size: Optional[int] = Field(default=None, title="Size", description="Bytes stored, recorded when written.")
    sha256: Optional[str] = Field(
        default=None,
        title="SHA-256",
        description="Checksum of the stored bytes, verified by fetch(). Empty for a blob described by path only.",
    )
    # Data handed over but not (yet) written: an in-memory blob, or rh.blob(data, ..., dryrun=True).
    _data: Any = PrivateAttr(default=None)
    _has_data: bool = PrivateAttr(default=False)
    # The in-flight marker of bytes this object committed and has not registered yet (see _announce).
    _pending: Optional[str] = PrivateAttr(default=None)

    # -- what and where -----------------------------------------------------------------------------------
    def has_unwritten_data(self) -> bool:
        return self._has_data

    def _label(self) -> str:
        named = f" {self.name!r}" if self.name else ""
        where = f" at {self.url}" if self.path else " (in memory)"
        return f"Blob{named}{where}"

    def _in_memory(self) -> bool:
        return self.path is None

    def _require_stored(self, action: str) -> None:
        if self._in_memory():
            raise InvalidPath(
                f"This blob is only in memory (it has no system or path), so it cannot {action}. Store it first: "
                "blob.to('file', path='my.pkl'), blob.save('my-blob'), or rh.blob(data, name=..., system=..., path=...)."
            )

    def _hold(self, data: Any) -> None:
        self._data, self._has_data = data, True

    def _drop(self) -> None:
        self._data, self._has_data = None, False

    def _prepare_write(self, mkdir: bool = False) -> None:
        """Checks that must pass before any byte is written: writable system, existing bucket, not a directory."""
        self.sys.check_writable(self.path or "")
        self.sys.ensure_container(self.fs_path, create=mkdir)
        if self.sys.fs.isdir(self.fs_path):
            raise InvalidPath(
                f"{self.url} is a directory, and a blob is one file: give a file path such as "
                f"{posixpath.join(self.path or '', 'blob.pkl')!r}, or use rh.folder() for a directory."
            )

    def _record(self, size: int, sha256: str, serializer: str, marker: Optional[str] = None) -> None:
        """Remember what was written; a blob already saved by name is re-saved so loads verify the new bytes.
        ``marker``: the in-flight marker the write left (removed once the bytes are registered)."""
        self.size, self.sha256, self.serializer = size, sha256, serializer
        if marker is not None:
            self._retract()  # an earlier unregistered write of this object: superseded
            self._pending = marker
        if self._block_document_id is not None:
            self.save()

    def _announces(self) -> bool:
        """True when a write should leave an in-flight marker: the blob has a name, so a registration follows."""
        return bool(self.name) and not self._in_memory()

    def _retract(self) -> None:
        """Remove the in-flight marker once the bytes it announced are registered (or superseded)."""
        marker, self._pending = self._pending, None
        if marker is not None:
            try:
                self.sys.fs.rm_file(marker)
            except OSError as exc:  # gone already; a leftover is hidden and cleaned by copies after an hour
                logger.debug("could not remove in-flight marker %s: %s", marker, exc)

    def _settle(self) -> None:
        """After registering: make the entry describe the bytes actually stored.

        Bytes are committed before their checksum is registered, so two writers of one saved blob can register in
        the opposite order of their commits, leaving an entry that names bytes which were replaced. The stored
        bytes are read back once: if another writer's (complete) version is there, its size and checksum are
        recorded instead. The last writer to register thus always leaves an entry that matches storage.
        """
        if self.sha256 is None or self._in_memory():
            return
        for _ in range(10):
            try:
                found = _verify_task.fn(self.sys, self.fs_path, None, None, self._label())
            except (OSError, NotFound) as exc:  # committed and registered already; a reader re-checks anyway
                logger.warning("could not read back %s after registering it: %s", self._label(), exc)
                return
            if found == (self.size, self.sha256):
                return
            logger.info("%s was overwritten by another writer meanwhile; registering the stored version",
                        self._label())
            self.size, self.sha256 = found
            super().save()

    def _refresher(self) -> Optional["_Refresher"]:
        """For a saved blob: what a reader needs to tell a concurrent writer from corruption (see
        :func:`_until_consistent`)."""
        if self._block_document_id is None or not self.name:
            return None
        name = self.name
        system, fs_path = self.sys, self.fs_path

        def refresh() -> Optional[tuple]:
            fresh = type(self)._load_named(name)
            if (fresh.system, fresh.path) != (self.system, self.path):
                return None
            self.size, self.sha256, self.serializer = fresh.size, fresh.sha256, fresh.serializer
            return fresh.size, fresh.sha256, fresh.serializer or READ_DEFAULT

        def in_flight() -> bool:
            try:
                return bool(system.names_beside(fs_path, _marker_prefix(fs_path)))
            except OSError:
                return False

        return _Refresher(refresh, in_flight)

    # -- writing ------------------------------------------------------------------------------------------
    def write(self, data: Any = _NO_DATA, serializer: Optional[str] = None, mkdir: bool = False) -> "Blob":
        """Serialize ``data`` and store it atomically; records size and sha256. Returns the blob.

        The serializer is ``serializer``, else the blob's own, else the default for the data (``bytes`` for
        bytes-like data, ``text`` for str, ``pickle`` otherwise). If serializing fails midway nothing is
        committed: the previous contents stay as they were. ``mkdir=True`` creates a missing bucket.
        A blob already saved by name is re-saved so that later loads verify the new bytes; a Blob object loaded
        before this write still records the old checksum, so its ``fetch()`` raises IntegrityError: load it again.

        Example:
            >>> b = rh.blob(name="my-blob", path="/tmp/my-blob.pkl").write({"a": 1})
        """
        if data is _NO_DATA:
            if not self._has_data:
                raise InvalidArgument("write() needs the data to store, e.g. blob.write(obj).")
            data = self._data
        name = serializer or self.serializer or serializers.default_for(data)
        serializers.get(name)  # an unknown name fails before anything is touched
        if self._in_memory():
            self._hold(data)
            self.serializer = name
            return self
        self._prepare_write(mkdir)
        size, digest, marker = tasks.run(_write_task, self.sys, self.fs_path, _Payload(data), name, self._label(),
                                         self._announces())
        self._drop()
        self._record(size, digest, name, marker)
        return self

    def upload(self, local_path: Union[str, os.PathLike], serializer: Optional[str] = None) -> "Blob":
        """Store a local file's bytes as this blob, streaming (never the whole file in memory).

        The bytes are taken as they are, already serialized: the blob keeps its serializer (or ``serializer``
        if given), or becomes ``bytes`` when it had none, so ``fetch()`` returns the file's content.
        """
        self._require_stored("upload a file")
        src = os.path.abspath(os.path.expanduser(os.fspath(local_path)))
        if not os.path.isfile(src):
            raise NotFound(f"Local file {src!r} does not exist (or is not a file); nothing was uploaded.")
        name = serializer or self.serializer or "bytes"
        serializers.get(name)
        self._prepare_write()
        size, digest, marker = tasks.run(_upload_task, src, self.sys, self.fs_path, self._announces())
        self._drop()
        self._record(size, digest, name, marker)
        return self

    # -- reading ------------------------------------------------------------------------------------------
    def fetch(self) -> Any:
        """The stored object, deserialized - after its size and sha256 were checked against the block.

        Raises :class:`~rh_prefect.errors.IntegrityError` (and deserializes nothing) if the stored bytes differ
        from what was written. A blob described by path only has no checksum: it is read without verification.

        Example:
            >>> rh.blob(name="my-blob").fetch()
            {'a': 1}
        """
        if self._has_data:
            return self._data
        self._require_stored("be fetched")
        payload = tasks.run(
            _fetch_task, self.sys, self.fs_path, self.serializer or READ_DEFAULT, self.size, self.sha256,
            self._label(), self._refresher(),
        )
        return payload.obj

    def verify(self) -> "Blob":
        """Read the stored bytes once and check size and sha256; raises IntegrityError on a mismatch.

        A blob without a recorded checksum (described by path only) gets one recorded instead.
        """
        self._require_stored("be verified")
        size, digest = tasks.run(_verify_task, self.sys, self.fs_path, self.size, self.sha256, self._label(),
                                 self._refresher())
        if self.sha256 is None:
            self._record(size, digest, self.serializer or READ_DEFAULT)
        return self

    @contextmanager
    def open(self, mode: str = "rb") -> Iterator[IO[bytes]]:
        """The stored bytes as a streaming file object (``"rb"``), or a writer replacing them (``"wb"``).

        Reading streams raw bytes without verification (use :meth:`verify` or :meth:`download` for that).
        Writing commits atomically when the block exits without error and records size and sha256; the
        blob keeps its serializer (``bytes`` if it had none).

        Example:
            >>> with rh.blob(name="my-blob").open() as f:
            ...     header = f.read(16)
        """
        self._require_stored(f"be opened with mode {mode!r}")
        if mode == "rb":
            with _open_read(self.sys, self.fs_path, self._label()) as f:
                yield f
            return
        if mode != "wb":
            raise InvalidPath(f"Blob.open() supports mode 'rb' or 'wb', not {mode!r}.")
        self._prepare_write()
        with _announcing(self.sys, self.fs_path) as made, transfer.open_write(self.sys, self.fs_path) as raw:
            writer = _HashingWriter(raw)
            yield writer  # type: ignore[misc]
            if self._announces():
                made.append(_announce(self.sys, self.fs_path))
        self._drop()
        self._record(writer.size, writer.sha256, self.serializer or "bytes", (made or [None])[0])

    def download(self, local_path: Union[str, os.PathLike]) -> str:
        """Copy the stored bytes to a local file, streaming and verifying; returns the local path.

        The file appears only when complete and verified; on a checksum mismatch nothing is left behind.
        """
        dst = os.path.abspath(os.path.expanduser(os.fspath(local_path)))
        if os.path.isdir(dst):
            dst = os.path.join(dst, self._leaf())
        local = get_system("file")
        if self._has_data and self._in_memory():
            tasks.run(_write_task, local, dst, _Payload(self._data), self.serializer or "pickle", f"local file {dst}")
            return dst
        self._require_stored("be downloaded")
        tasks.run(_download_task, self.sys, self.fs_path, local, dst, self.size, self.sha256, self._label(),
                  self._refresher())
        return dst

    def exists_in_system(self) -> bool:
        """True if the blob's bytes are stored on its system (always False for an in-memory blob)."""
        if self._in_memory():
            return False
        return bool(self.sys.fs.isfile(self.fs_path))

    def rm(self) -> None:
        """Delete the stored bytes (an in-memory blob drops its data). The registry entry, if any, stays:
        remove it with ``rh.delete(name)``."""
        if self._in_memory():
            self._drop()
            return
        self.sys.check_writable(self.path or "")
        if self.sys.fs.exists(self.fs_path):
            self.sys.fs.rm_file(self.fs_path)

    # -- moving -------------------------------------------------------------------------------------------
    def to(self, system: Union[SystemArg, Folder], path: Optional[str] = None, via: str = "auto") -> "Blob":
        """Copy the blob to another system or place and return the Blob there (same size, sha256, serializer).

        The copy runs through the engine as a retryable task, streaming (bounded memory) or server-side when
        both ends are the same store. ``system`` may be a Folder: the blob lands in it (as ``path``, a name
        inside the folder, or under its own file name). A ``path`` that ends with ``/`` or is an existing
        directory receives the blob under its own file name. The new Blob is not saved; call ``.save()``.

        Example:
            >>> ckpt_s3 = rh.blob(name="my-ckpt").to(system="s3", path="/my-bucket/ckpts/ckpt.pkl")
        """
        return super().to(system, path, via=via)

    def copy_to(self, system: Union[SystemArg, Folder], path: Optional[str] = None) -> "Blob":
        """Copy through this process (the engine, as a retryable task) and return the Blob there."""
        dst_sys, dst_path = self.destination(system, path)
        new = Blob(path=dst_path, serializer=self.serializer, size=self.size, sha256=self.sha256,
                   **dst_sys.block_fields())
        new._sys = dst_sys
        new._rh_name = self._rh_name
        if self._has_data:  # in memory (or not yet written): serialize straight to the destination
            return new.write(self._data)
        src_fs, dst_fs = self.fs_path, dst_sys.fs_path(dst_path)
        if dst_sys == self.sys and dst_fs == src_fs:
            return new
        dst_sys.check_writable(dst_path)
        dst_sys.ensure_container(dst_fs)
        dst_sys.makedirs(posixpath.dirname(dst_fs))
        try:
            tasks.run(tasks.copy_file_task, self.sys, src_fs, dst_sys, dst_fs)
        except FileNotFoundError:
            raise NotFound(f"{self._label()} has no stored bytes to copy; write it first.") from None
        if self.size is not None:
            copied = int(dst_sys.fs.size(dst_fs))
            if copied != self.size:
                raise IntegrityError(
                    f"{self._label()} was copied to {new.url}, but the copy has {copied} bytes where the blob "
                    f"recorded {self.size}: the source was changed outside rh_prefect. Check it with "
                    "blob.verify() and rewrite it with blob.write(data)."
                )
        return new

    def _leaf(self) -> str:
        if self.path:
            leaf = posixpath.basename(self.path.rstrip("/"))
            if leaf:
                return leaf
        if self.name:
            return names.parse(self.name).leaf
        return f"blob-{uuid.uuid4().hex[:8]}"

    def destination(self, system: Union[SystemArg, Folder], path: Optional[str]) -> tuple[System, str]:
        if isinstance(system, Folder):
            return system.sys, posixpath.join(system.path or "", check_relative_key(path or self._leaf()))
        if path is None:
            return super().destination(system, path)
        dst_sys = get_system(system)
        path = check_path(os.fspath(path))
        if path.endswith("/"):
            return dst_sys, dst_sys.normalize(posixpath.join(path, self._leaf()))
        where = dst_sys.normalize(path)
        try:
            is_dir = dst_sys.fs.isdir(dst_sys.fs_path(where))
        except FileNotFoundError:
            is_dir = False
        return dst_sys, dst_sys.normalize(posixpath.join(where, self._leaf())) if is_dir else where

    # -- registry -----------------------------------------------------------------------------------------
    def save(self, name: Optional[str] = None, overwrite: bool = True) -> "Blob":  # type: ignore[override]
        """Register the blob by name and return it. An in-memory blob is first written to the default place
        for that name (the current directory, or its namespace folder); without a name it cannot be saved.

        Example:
            >>> rh.blob(data=[1, 2, 3]).save("my-list")   # written to ./my-list, then registered
        """
        if not self._in_memory():
            super().save(name, overwrite)
            self._settle()
            self._retract()
            return self
        target = name or self.name
        if not target:
            raise NotFound(
                "This blob is only in memory and has no name, so there is nowhere to save it. Pass a name - "
                "blob.save('my-blob') writes it to the default place for that name (the current directory) - "
                "or create it where it should live: rh.blob(data, name='my-blob', system='s3', "
                "path='/my-bucket/my-blob')."
            )
        found = registry.find(names.parse(target).full)
        if found is not None and (found[0] != type(self).get_block_type_slug() or not overwrite):
            return super().save(name, overwrite)  # raises the registry's AlreadyExists; nothing is written
        sys, where = place(target, None, None, kind="blob")
        self._relocate(sys, where)
        self._set_name(target)  # named before writing: the write announces the registration that follows
        self.write()
        super().save(name, overwrite)
        self._settle()
        self._retract()
        return self


class _Payload:
    """An opaque holder for data passed to and from tasks: Prefect walks collections in task arguments
    looking for futures, which would cost seconds for a large dict or list."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj


class _HashingWriter(io.RawIOBase):
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
        for start in range(0, total, CHUNK_SIZE):
            piece = view[start : start + CHUNK_SIZE]
            self._sha.update(piece)
            chunk = data if isinstance(data, bytes) and total <= CHUNK_SIZE else bytes(piece)
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


@contextmanager
def _open_read(system: System, fs_path: str, label: str) -> Iterator[IO[bytes]]:
    try:
        with system.guard(label):  # refused credentials, unreachable endpoints: our errors, with advice
            f = system.fs.open(fs_path, "rb", block_size=CHUNK_SIZE)
    except FileNotFoundError:
        raise NotFound(
            f"{label} has no stored bytes (nothing at {system.url(system.user_path(fs_path))}); write it first "
            "with blob.write(data), or check the path."
        ) from None
    with f:
        yield f


def _digest(f: IO[bytes], sink: Optional[IO[bytes]] = None) -> tuple[int, str]:
    sha = hashlib.sha256()
    size = 0
    while True:
        chunk = f.read(CHUNK_SIZE)
        if not chunk:
            return size, sha.hexdigest()
        sha.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)


#: versions of a saved blob a reader accepts: (size, sha256) -> serializer, in the order they were registered
Accepted = dict[tuple[Optional[int], Optional[str]], str]


def _check(found: tuple[int, str], accepted: Accepted, label: str) -> str:
    """The serializer of the accepted version the stored bytes are; IntegrityError if they are none of them.
    The message names the version registered last."""
    got_size, got_sha = found
    for (size, sha256), serializer in reversed(accepted.items()):
        if (size is None or got_size == size) and (sha256 is None or got_sha == sha256):
            return serializer
    size, sha256 = next(reversed(accepted))
    error = IntegrityError(
        f"{label} failed verification: the block records {size} bytes with sha256 {sha256}, but the stored "
        f"bytes are {got_size} bytes with sha256 {got_sha}. They were changed or corrupted outside rh_prefect, "
        "so nothing was deserialized. Rewrite the blob with blob.write(data), or copy it back from a good "
        "copy with good_copy.to(...)."
    )
    error.found = found  # what is stored, for a reader telling a concurrent writer from corruption
    raise error


@contextmanager
def _verified(system: System, fs_path: str, accepted: Accepted, label: str) -> Iterator[tuple[IO[bytes], str]]:
    """A reader of the stored bytes and their serializer, yielded only after they matched an accepted version
    (size and sha256): deserializing bytes that were tampered with (a pickle can run code) must not happen before
    the check."""
    (size, sha256), serializer = next(reversed(accepted.items()))
    if sha256 is None:  # described by path only: nothing to verify against
        with _open_read(system, fs_path, label) as f:
            yield f, serializer
        return
    if system.is_local:  # reading the file twice is cheaper than a copy; one open file: the bytes that were
        with _open_read(system, fs_path, label) as f:  # checked, even if a writer replaces the path meanwhile
            serializer = _check(_digest(f), accepted, label)
            f.seek(0)
            yield f, serializer
        return
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, prefix="rh-blob-") as spool:
        with _open_read(system, fs_path, label) as f:
            found = _digest(f, sink=spool)
        serializer = _check(found, accepted, label)
        spool.seek(0)
        yield spool, serializer  # type: ignore[misc]


# -- tasks: every stream runs as a retryable Prefect task (tasks.RETRY_POLICY) ------------------------------


def _marker_prefix(fs_path: str) -> str:
    """The start of the names of a blob's in-flight markers: hidden, temporary-named siblings (never listed)."""
    return f".{posixpath.basename(fs_path)}.rh-tmp-pending-"


def _announce(system: System, fs_path: str) -> str:
    """Before committing the bytes of a saved blob: leave a marker, one per write, saying "this writer's
    registration follows". It stays until the writer has registered and settled (see Blob._settle), the only
    time the entry can name other bytes than the stored ones. A reader meeting bytes that its entry does not
    describe then knows for sure whether to wait (a writer in flight) or to report corruption at once (no
    marker). Returns its path."""
    marker = posixpath.join(posixpath.dirname(fs_path), _marker_prefix(fs_path) + uuid.uuid4().hex[:16])
    with system.fs.open(marker, "wb") as f:
        f.write(b"")
    return marker


@contextmanager
def _announcing(system: System, fs_path: str) -> Iterator[list[str]]:
    """Collects the marker a write leaves (see :func:`_announce`) and removes it if the write then fails: its
    bytes were never committed, so no registration follows."""
    made: list[str] = []
    try:
        yield made
    except BaseException:
        for marker in made:
            try:
                system.fs.rm_file(marker)
            except OSError:
                pass  # hidden, and cleaned by copies after an hour
        raise


@tasks.rh_task("rh-blob-write")
def _write_task(system: System, fs_path: str, payload: _Payload, serializer: str, label: str,
                announce: bool = False) -> tuple[int, str, Optional[str]]:
    tasks.reset_on_retry(system)
    ser = serializers.get(serializer)
    with _announcing(system, fs_path) as made, transfer.open_write(system, fs_path) as raw:
        writer = _HashingWriter(raw)
        try:
            ser.dump(payload.obj, writer)
        except Exception as exc:
            if writer.io_error is not None:
                raise  # storage failed (maybe transiently): let the retry policy judge it
            hint = " For lambdas, local functions or classes try serializer='cloudpickle'." if serializer == "pickle" else ""
            raise SerializationError(
                f"Could not serialize a {type(payload.obj).__name__} with {serializer!r} "
                f"({type(exc).__name__}: {str(exc)[:300]}). Nothing was written: {label} is unchanged.{hint}"
            ) from exc
        if announce:
            made.append(_announce(system, fs_path))
    return writer.size, writer.sha256, (made or [None])[0]


class _Refresher:
    """For a reader of a saved blob: ``refresh()`` loads its registry entry again (``(size, sha256, serializer)``,
    or None if the name now describes another place); ``in_flight()`` tells whether a writer of the blob has
    committed bytes and not finished registering and settling them (its marker is there, see :func:`_announce`)."""

    __slots__ = ("refresh", "in_flight")

    def __init__(self, refresh: Callable[[], Optional[tuple]], in_flight: Callable[[str], bool]) -> None:
        self.refresh, self.in_flight = refresh, in_flight


def _until_consistent(read: Callable[[Accepted], T], entry: tuple, refresher: Optional[_Refresher]) -> T:
    """``read(accepted)`` of the registry entry ``entry`` = ``(size, sha256, serializer)``; it raises
    IntegrityError when the stored bytes are none of the accepted versions.

    For a saved blob (``refresh`` given) a mismatch may be a concurrent writer rather than corruption: a writer
    commits its bytes first and registers their checksum right after. The entry is then loaded again and the bytes
    read again, now accepting every version the registry was seen to hold since the read began (each was
    complete and registered by a writer: a read that returns one is linearizable at the moment it was seen), until
    a read verifies. While any writer of the blob has its in-flight marker down, the reader waits for it: between
    its commit and the end of its settle the entry may name replaced bytes, its own registered late or another's
    (up to :data:`REGISTRY_LAG_MAX_SECONDS`, for a writer that died before registering); bytes with no writer in
    flight that stay unexplained (neither entry nor bytes changing) for :data:`REGISTRY_LAG_SECONDS` were
    changed outside rh_prefect: the IntegrityError is raised (:data:`REGISTRY_LAG_ACTIVE_SECONDS` once either was
    seen changing, i.e. writers are at work; longer on a slow server, see :data:`REGISTRY_LAG_LOADS`).
    """
    accepted: Accepted = {tuple(entry[:2]): entry[2]}  # type: ignore[dict-item]
    if refresher is None:
        return read(accepted)
    start = last_change = time.monotonic()
    delay = 0.05
    seen: Any = None
    quiet = REGISTRY_LAG_SECONDS
    while True:
        try:
            return read(accepted)
        except IntegrityError as exc:
            now = time.monotonic()
            found = getattr(exc, "found", None)
            state = (entry[:2], found)
            if state != seen:
                if seen is not None:
                    quiet = max(quiet, REGISTRY_LAG_ACTIVE_SECONDS)
                seen, last_change = state, now
            if refresher.in_flight():
                last_change = now  # a writer committed bytes and is registering them: wait for it
            if now - last_change >= quiet or now - start >= REGISTRY_LAG_MAX_SECONDS:
                raise
            time.sleep(delay)
            delay = min(2 * delay, 0.25)
            loading = time.monotonic()
            fresh = refresher.refresh()
            quiet = max(quiet, REGISTRY_LAG_LOADS * (time.monotonic() - loading))
            if fresh is None:  # the name now describes another place: this object's entry is what it is
                raise
            entry = fresh
            accepted.pop(tuple(entry[:2]), None)  # re-inserted last: the latest entry names errors
            accepted[tuple(entry[:2])] = entry[2]  # type: ignore[index]


@tasks.rh_task("rh-blob-fetch")
def _fetch_task(
    system: System, fs_path: str, serializer: str, size: Optional[int], sha256: Optional[str], label: str,
    refresh: Optional[_Refresher] = None,
) -> _Payload:
    tasks.reset_on_retry(system)

    def read(accepted: Accepted) -> _Payload:
        with _verified(system, fs_path, accepted, label) as (f, serializer):
            ser = serializers.get(serializer)
            try:
                return _Payload(ser.load(f))
            except OSError:
                raise  # reading failed, not decoding: the retry policy decides
            except Exception as exc:
                raise SerializationError(
                    f"{label} could not be read with serializer {serializer!r} ({type(exc).__name__}: "
                    f"{str(exc)[:300]}). If it holds raw bytes use rh.blob(..., serializer='bytes') or blob.open(); "
                    "if it was written by another program, pass the serializer it used."
                ) from exc

    return _until_consistent(read, (size, sha256, serializer), refresh)


@tasks.rh_task("rh-blob-verify")
def _verify_task(system: System, fs_path: str, size: Optional[int], sha256: Optional[str], label: str,
                 refresh: Optional[_Refresher] = None) -> tuple[int, str]:
    tasks.reset_on_retry(system)

    def read(accepted: Accepted) -> tuple[int, str]:
        with _open_read(system, fs_path, label) as f:
            found = _digest(f)
        _check(found, accepted, label)
        return found

    return _until_consistent(read, (size, sha256, READ_DEFAULT), refresh)


@tasks.rh_task("rh-blob-upload")
def _upload_task(local_path: str, system: System, fs_path: str, announce: bool = False
                 ) -> tuple[int, str, Optional[str]]:
    tasks.reset_on_retry(system)
    with open(local_path, "rb") as src, _announcing(system, fs_path) as made, \
            transfer.open_write(system, fs_path, size=os.fstat(src.fileno()).st_size) as raw:
        writer = _HashingWriter(raw)
        while True:
            chunk = src.read(CHUNK_SIZE)
            if not chunk:
                break
            writer.write(chunk)
        if announce:
            made.append(_announce(system, fs_path))
    return writer.size, writer.sha256, (made or [None])[0]


@tasks.rh_task("rh-blob-download")
def _download_task(
    system: System, fs_path: str, local: System, local_path: str, size: Optional[int], sha256: Optional[str],
    label: str, refresh: Optional[_Refresher] = None,
) -> tuple[int, str]:
    tasks.reset_on_retry(system)

    def read(accepted: Accepted) -> tuple[int, str]:
        with _open_read(system, fs_path, label) as src, transfer.open_write(local, local_path) as out:
            found = _digest(src, sink=out)
            _check(found, accepted, label)  # raising here discards the temporary file: nothing lands
        return found

    return _until_consistent(read, (size, sha256, READ_DEFAULT), refresh)


# -- the factory --------------------------------------------------------------------------------------------


def blob(
    data: Any = None,
    name: Optional[str] = None,
    path: Optional[Union[str, os.PathLike]] = None,
    system: SystemArg = None,
    serializer: Optional[str] = None,
    dryrun: bool = False,
    *,
    mkdir: bool = False,
    credentials: Any = None,
    cluster: Optional[Cluster] = None,
) -> Blob:
    """Get a Blob: load a saved one by ``name``, describe one at ``path`` on ``system``, or store ``data``.

    * ``rh.blob(name="my-blob")`` loads the saved blob (raises NotFound if there is none);
    * ``rh.blob(data, name=..., system=..., path=...)`` writes ``data`` (atomically) and returns the blob; without
      ``path`` it goes to the system's default root under its name (buckets: the configured default bucket);
    * ``rh.blob(path=..., system=...)`` describes bytes already stored there (read without verification);
    * ``rh.blob(data)`` alone keeps ``data`` in memory: nothing is written until ``.to(...)`` or ``.save(name)``.

    ``serializer`` is one of :func:`rh_prefect.serializers.names` (default: ``bytes`` for bytes-like data,
    ``text`` for str, ``pickle`` otherwise). ``dryrun=True`` writes nothing yet (``.write()`` does it later).
    ``mkdir=True`` creates a missing bucket. To store ``None`` itself, use ``rh.blob(...).write(None)``.

    Example:
        >>> import rh_prefect as rh
        >>> b = rh.blob(data={"a": 1}, name="my-blob", path="/tmp/my-blob.pkl").save()
        >>> rh.blob(name="my-blob").fetch()
        {'a': 1}
    """
    if serializer is not None:
        serializers.get(serializer)  # fail on a typo before anything is written
    if isinstance(system, Cluster):
        cluster, system = system, "ssh"
    located = path is not None or system is not None or credentials is not None or cluster is not None
    if data is None and not located:
        if name is None:
            raise InvalidPath(
                "rh.blob() needs data to store, a name to load (rh.blob(name='my-blob')), or a path to describe "
                "(rh.blob(path=..., system=...))."
            )
        loaded = Blob._load_named(name)
        if serializer is not None:
            loaded.serializer = serializer
        return loaded
    if name is None and not located:  # data alone: an in-memory blob, nothing written
        b = Blob(serializer=serializer or serializers.default_for(data))
        b._hold(data)
        return b
    sys, where = place(name, system, os.fspath(path) if path is not None else None, cluster=cluster,
                       credentials=credentials, kind="blob")
    b = Blob(path=where, serializer=serializer, **sys.block_fields())
    b._sys = sys
    b._set_name(name)
    if data is not None:
        if dryrun:
            b._hold(data)
        else:
            b._check_name_free()  # a name owned by another resource type fails before anything is written
            b.write(data, mkdir=mkdir)
    return b


#: Runhouse's name for a file-backed blob
file = blob

__all__ = ["Blob", "blob", "file"]
