"""Blob: one serialized object on any system, stored as immutable versions and verified when read back.

A Blob is a single file: the bytes of one object (a model checkpoint, a dict of metrics, a numpy array, raw bytes)
turned into a byte stream by a serializer (:mod:`rh_prefect.serializers`). Each write stores a new immutable
version beside the file and then publishes the file itself as a copy of it (the format:
:mod:`rh_prefect.blob_store`). The block records the version, its size and its sha256, and saving the block is
the commit: a reader reads the version its block names, and :meth:`Blob.fetch` checks size and sha256 before it
deserializes anything. Readers never wait for writers, and never see a torn or mixed blob.

Three kinds of Blob, decided by what :func:`blob` is given:

* **stored** - it has a path on a system (given, or the default place for its name); data is written there;
* **in memory** - ``rh.blob(data=x)`` with no name, path or system: nothing is written, ``fetch()`` returns ``x``;
  ``save("my-blob")`` writes it to the default place for that name and registers it, ``to(system)`` writes it
  there. ``save()`` without a name is an error: an unnamed object with no system has nowhere to live;
* **described by path** - ``rh.blob(path=..., system=...)`` for bytes written by someone else: no version and no
  checksum are recorded, so ``fetch()`` reads the file at the path and cannot verify it (call
  :meth:`Blob.verify` to record a checksum, or :meth:`Blob.write`/:meth:`Blob.upload` to store a version).
"""

from __future__ import annotations

import os
import posixpath
import uuid
from contextlib import contextmanager
from typing import IO, Any, Iterator, Optional, Union

from pydantic import Field, PrivateAttr

from rh_prefect import blob_store, names, serializers, settings, transfer
from rh_prefect.runtime import events, registry, tasks
from rh_prefect.errors import IntegrityError, InvalidArgument, InvalidPath, NotFound
from rh_prefect.resources.base import StoredResource, SystemArg, place
from rh_prefect.resources.folder import Folder
from rh_prefect.serializers import SerializationError
from rh_prefect.resources.cluster import Cluster
from rh_prefect.systems import System, check_path, check_relative_key, get_system
from rh_prefect.versions import Version, check_version_id

#: the serializer used to read a blob that records none (described by path only); Runhouse's default
READ_DEFAULT = "pickle"

_NO_DATA = object()


class Blob(StoredResource):
    """One object stored as a single file on the local disk, a cluster (SSH), S3 or GCS - atomic and verified.

    The block records the serializer and the version of the stored bytes with its size and sha256 checksum;
    ``fetch()`` reads that version and checks it, raising :class:`~rh_prefect.errors.IntegrityError` if the bytes
    were changed behind its back. The file at ``path`` is a plain copy of the latest version, for other tools.

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
    version: Optional[str] = Field(
        default=None,
        title="Version",
        description="The stored version this block describes: an immutable object kept beside the path (in "
        "'.<name>.rh-versions/'), read by fetch(). Empty for a blob described by path only: the path is read.",
    )
    # Data handed over but not (yet) written: an in-memory blob, or rh.blob(data, ..., dryrun=True).
    _data: Any = PrivateAttr(default=None)
    _has_data: bool = PrivateAttr(default=False)
    #: loaded at a fixed version (rh.blob(..., version=V)): reads only that version, writes nothing

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
        self._refuse_if_pinned("be written")
        self.sys.check_writable(self.path or "")
        self.sys.ensure_container(self.fs_path, create=mkdir)
        if self.sys.fs.isdir(self.fs_path):
            raise InvalidPath(
                f"{self.url} is a directory, and a blob is one file: give a file path such as "
                f"{posixpath.join(self.path or '', 'blob.pkl')!r}, or use rh.folder() for a directory."
            )

    def _record(self, size: int, sha256: str, serializer: str, version: Optional[str],
                payload: Optional[dict[str, Any]] = None) -> None:
        """Remember what was written; a blob already saved by name is re-saved: that save is the commit that
        makes loads by name read the new version. With ``payload``, a new version was stored: announced first
        (``rh.resource.written``, and as a Prefect asset materialization)."""
        self.size, self.sha256, self.serializer, self.version = size, sha256, serializer, version
        if payload is not None:
            self._announce(events.WRITTEN, asset=True, payload={"size": size, **payload})
        if self._block_document_id is not None and not self._pinned:  # a pinned blob only reads: no commit
            self.save()

    # -- writing ------------------------------------------------------------------------------------------
    def write(self, data: Any = _NO_DATA, serializer: Optional[str] = None, mkdir: bool = False) -> "Blob":
        """Serialize ``data`` and store it as a new version; records version, size and sha256. Returns the blob.

        The serializer is ``serializer``, else the blob's own, else the default for the data (``bytes`` for
        bytes-like data, ``text`` for str, ``pickle`` otherwise). If serializing fails midway nothing is
        committed: the previous contents stay as they were. ``mkdir=True`` creates a missing bucket.
        A blob already saved by name is re-saved, so later loads by name read the new version. A Blob object
        loaded before this write keeps reading its own (older) version while that is kept (see
        ``settings.blob_versions_kept``).

        Example:
            >>> b = rh.blob(name="my-blob", path="/tmp/my-blob.pkl").write({"a": 1})
        """
        self._refuse_if_pinned("be written")
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
        version, size, digest = tasks.run(_write_task, self.sys, self.fs_path, _Payload(data), name, self._label(),
                                          self.version)
        self._drop()
        self._record(size, digest, name, version, payload={"serializer": name})
        return self

    def upload(self, local_path: Union[str, os.PathLike], serializer: Optional[str] = None) -> "Blob":
        """Store a local file's bytes as a new version of this blob, streaming (never the whole file in memory).

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
        version, size, digest = tasks.run(_upload_task, src, self.sys, self.fs_path, self.version, name)
        self._drop()
        self._record(size, digest, name, version, payload={"serializer": name})
        return self

    # -- reading ------------------------------------------------------------------------------------------
    def fetch(self) -> Any:
        """The stored object, deserialized - after its size and sha256 were checked against the block.

        Reads the version the block records: exactly the bytes it describes, however many writers are at work.
        Raises :class:`~rh_prefect.errors.IntegrityError` (and deserializes nothing) if the stored bytes differ
        from what was written, and :class:`~rh_prefect.errors.NotFound` if the version was dropped after newer
        writes (load the blob again by name). A blob described by path only has no checksum: it is read without
        verification.

        Example:
            >>> rh.blob(name="my-blob").fetch()
            {'a': 1}
        """
        if self._has_data:
            return self._data
        self._require_stored("be fetched")
        self._note_read()
        payload = tasks.run(_fetch_task, self.sys, self.fs_path, self.version, self.serializer or READ_DEFAULT,
                            self.size, self.sha256, self._label())
        return payload.obj

    def verify(self) -> "Blob":
        """Read the stored bytes once and check size and sha256; raises IntegrityError on a mismatch.

        A blob without a recorded checksum (described by path only) gets one recorded instead.
        """
        self._require_stored("be verified")
        size, digest = tasks.run(_verify_task, self.sys, self.fs_path, self.version, self.size, self.sha256,
                                 self._label())
        if self.sha256 is None:
            self._record(size, digest, self.serializer or READ_DEFAULT, self.version)
        return self

    def data_version(self) -> str:
        """The version this blob reads, for caches keyed on the data (``rh.DATA_VERSIONS``): the version it
        records - nothing is read. A blob described by path only reads its file's listing entry (size, time and
        the store's content tag); an in-memory blob hashes its object."""
        if self._has_data:
            from prefect.utilities.hashing import hash_objects

            return "unwritten-" + (hash_objects(self._data, raise_on_failure=True) or "")
        if self.version:
            return self.version
        self._require_stored("have a data version")
        try:
            with self.sys.guard(self._label()):
                info = self.sys.fs.info(self.fs_path)
        except FileNotFoundError:
            return "absent"
        return "file-" + repr(self.sys.fingerprint(info))

    def versions(self) -> list[Version]:
        """The kept versions of this blob, oldest first, read from storage: each with its id, creation time, size
        and sha256 (``rows`` is None); ``current`` marks the one this blob reads (``blob.version``: for a blob
        loaded by name, the one its registry entry names). The newest ``settings.blob_versions_kept`` (default 5,
        ``RH_PREFECT_BLOB_VERSIONS_KEPT``) are kept after each write. Empty for a blob described by path whose
        file was written by another program.

        Example:
            >>> [v.id for v in rh.blob(name="bert-ft-ckpt").versions()]
            ['v-20261204T112144123456Z-1a2b3c4d', 'v-20261204T113001000001Z-5e6f7a8b']
        """
        self._require_stored("list its versions")
        with self.sys.guard(self._label()):
            return blob_store.list_versions(self.sys, self.fs_path, self.version)

    def rollback(self, version: str) -> "Blob":
        """Make the kept version ``version`` this blob's current version and return the blob: the file at its
        path is published again from that version, then the block records it (version, size, sha256,
        serializer) - for a saved blob, re-saving the registry entry is the one atomic commit, after which loads
        by name read that version. Raises :class:`~rh_prefect.errors.NotFound` (listing the kept versions) when
        the version is not kept, and changes nothing then.

        Example:
            >>> b = rh.blob(name="bert-ft-ckpt")
            >>> b.rollback(b.versions()[-2].id).fetch()
        """
        self._refuse_if_pinned("be rolled back")
        self._require_stored("be rolled back")
        check_version_id(version, self._label())
        self.sys.check_writable(self.path or "")
        size, digest, serializer = tasks.run(_rollback_task, self.sys, self.fs_path, version, self._label())
        self._drop()
        self._record(size, digest, serializer or self.serializer or READ_DEFAULT, version, payload={"rollback": True})
        return self

    def _pin(self, version: str) -> "Blob":
        """Fix this blob at the kept version ``version`` (read-only); NotFound naming the kept ones otherwise."""
        check_version_id(version, self._label())
        self._require_stored("be read at a version")
        with self.sys.guard(self._label()):
            size, digest, serializer = blob_store.describe(self.sys, self.fs_path, version, self._label())
        if version != self.version or self.sha256 is None:  # the record of another version: from its description
            self.size, self.sha256 = size, digest
            self.serializer = serializer or self.serializer
            self.version = version
        self._pinned = True
        return self

    @contextmanager
    def open(self, mode: str = "rb") -> Iterator[IO[bytes]]:
        """The stored bytes as a streaming file object (``"rb"``), or a writer of a new version (``"wb"``).

        Reading streams the raw bytes of the recorded version without verification (use :meth:`verify` or
        :meth:`download` for that). Writing commits a new version when the block exits without error and
        records version, size and sha256; the blob keeps its serializer (``bytes`` if it had none).

        Example:
            >>> with rh.blob(name="my-blob").open() as f:
            ...     header = f.read(16)
        """
        self._require_stored(f"be opened with mode {mode!r}")
        if mode != "rb":
            self._refuse_if_pinned(f"be opened with mode {mode!r}")
        if mode == "rb":
            self._note_read()
            with blob_store.open_read(self.sys, self.fs_path, self.version, self._label()) as f:
                yield f
            return
        if mode != "wb":
            raise InvalidPath(f"Blob.open() supports mode 'rb' or 'wb', not {mode!r}.")
        self._prepare_write()
        with blob_store.write(self.sys, self.fs_path, keep=(self.version,),
                              serializer=self.serializer or "bytes") as writer:
            yield writer  # type: ignore[misc]
        self._drop()
        self._record(writer.size, writer.sha256, self.serializer or "bytes", writer.version, payload={})

    def download(self, local_path: Union[str, os.PathLike]) -> str:
        """Copy the stored bytes to a local file, streaming and verifying; returns the local path.

        The file appears only when complete and verified; on a checksum mismatch nothing is left behind.
        """
        dst = os.path.abspath(os.path.expanduser(os.fspath(local_path)))
        if os.path.isdir(dst):
            dst = os.path.join(dst, self._leaf())
        local = get_system("file")
        if self._has_data and self._in_memory():
            tasks.run(_dump_task, local, dst, _Payload(self._data), self.serializer or "pickle", f"local file {dst}")
            return dst
        self._require_stored("be downloaded")
        self._note_read()
        tasks.run(_download_task, self.sys, self.fs_path, self.version, local, dst, self.size, self.sha256,
                  self._label())
        return dst

    def exists_in_system(self) -> bool:
        """True if the bytes this blob records are stored on its system (always False for an in-memory blob)."""
        if self._in_memory():
            return False
        return blob_store.exists(self.sys, self.fs_path, self.version)

    def rm(self) -> None:
        """Delete the stored bytes: the file and every version (an in-memory blob drops its data). The registry
        entry, if any, stays: remove it with ``rh.delete(name)``."""
        if self._in_memory():
            self._drop()
            return
        self._refuse_if_pinned("delete the blob")
        self.sys.check_writable(self.path or "")
        blob_store.remove(self.sys, self.fs_path)
        self._announce(events.DELETED)

    # -- moving -------------------------------------------------------------------------------------------
    def to(self, system: Union[SystemArg, Folder], path: Optional[str] = None, via: str = "auto") -> "Blob":
        """Copy the blob to another system or place and return the Blob there (same version, size, sha256 and
        serializer: a copy carries the version it copied, and its file at ``path`` is published as well).

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
                   version=self.version, **dst_sys.block_fields())
        new._sys = dst_sys
        new._rh_name = self._rh_name
        if self._has_data:  # in memory (or not yet written): serialize straight to the destination, a new version
            new.version = None
            return new.write(self._data)
        src_fs, dst_fs = self.fs_path, dst_sys.fs_path(dst_path)
        if dst_sys == self.sys and dst_fs == src_fs:
            return new
        dst_sys.check_writable(dst_path)
        dst_sys.ensure_container(dst_fs)
        dst_sys.makedirs(posixpath.dirname(dst_fs))
        if self.version is not None:
            tasks.run(_copy_task, self.sys, src_fs, dst_sys, dst_fs, self.version, self.size, self._label(),
                      self.sha256, self.serializer)
            new.announce_copy(self)
            return new
        # No version recorded (described by path, or saved before versions): the file itself is what is copied.
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
        new.announce_copy(self)
        return new

    def _relocated_extra(self, new: "Blob") -> None:
        new._pinned = False  # a copy is a blob of its own, whose current version is the one copied

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
    def save(self, name: Optional[str] = None, overwrite: Optional[bool] = None) -> "Blob":  # type: ignore[override]
        """Register the blob by name and return it. An in-memory blob is first written to the default place
        for that name (the current directory, or its namespace folder); without a name it cannot be saved.

        Example:
            >>> rh.blob(data=[1, 2, 3]).save("my-list")   # written to ./my-list, then registered
        """
        self._refuse_if_pinned("be saved (that would re-point the name without a rollback)")
        if not self._in_memory():  # the bytes are stored already: registering is the commit
            return super().save(name, overwrite)
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
        self._set_name(target)  # named before writing: errors of the write name the blob
        self.write()
        return super().save(name, overwrite)


class _Payload:
    """An opaque holder for data passed to and from tasks: Prefect walks collections in task arguments
    looking for futures, which would cost seconds for a large dict or list."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj


def _dump(payload: _Payload, serializer: str, writer: blob_store.HashingWriter, label: str) -> None:
    """Serialize into ``writer``; a failure of the serializer (not of storage) is a SerializationError."""
    try:
        serializers.get(serializer).dump(payload.obj, writer)
    except Exception as exc:
        if writer.io_error is not None:
            raise  # storage failed (maybe transiently): let the retry policy judge it
        hint = " For lambdas, local functions or classes try serializer='cloudpickle'." if serializer == "pickle" else ""
        raise SerializationError(
            f"Could not serialize a {type(payload.obj).__name__} with {serializer!r} "
            f"({type(exc).__name__}: {str(exc)[:300]}). Nothing was written: {label} is unchanged.{hint}"
        ) from exc


# -- tasks: every stream runs as a retryable Prefect task (tasks.RETRY_POLICY) ------------------------------
# A retried write makes a new version: the one an earlier attempt may have committed is left to retention.


@tasks.rh_task("rh-blob-write")
def _write_task(system: System, fs_path: str, payload: _Payload, serializer: str, label: str,
                previous: Optional[str] = None) -> tuple[str, int, str]:
    """Store ``payload`` as a new version; ``previous``: the version the blob's record names now (kept)."""
    tasks.reset_on_retry(system)
    with blob_store.write(system, fs_path, keep=(previous,), serializer=serializer) as writer:
        _dump(payload, serializer, writer, label)
    return writer.version, writer.size, writer.sha256


@tasks.rh_task("rh-blob-dump")
def _dump_task(system: System, fs_path: str, payload: _Payload, serializer: str, label: str) -> None:
    """Serialize ``payload`` into a plain file (no versions: a download of an in-memory blob)."""
    tasks.reset_on_retry(system)
    with transfer.open_write(system, fs_path) as raw:
        _dump(payload, serializer, blob_store.HashingWriter(raw), label)


@tasks.rh_task("rh-blob-upload")
def _upload_task(local_path: str, system: System, fs_path: str, previous: Optional[str] = None,
                 serializer: Optional[str] = None) -> tuple[str, int, str]:
    tasks.reset_on_retry(system)
    with open(local_path, "rb") as src, \
            blob_store.write(system, fs_path, size=os.fstat(src.fileno()).st_size, keep=(previous,),
                             serializer=serializer) as writer:
        while chunk := src.read(settings.current().chunk_size):
            writer.write(chunk)
    return writer.version, writer.size, writer.sha256


@tasks.rh_task("rh-blob-fetch")
def _fetch_task(system: System, fs_path: str, version: Optional[str], serializer: str, size: Optional[int],
                sha256: Optional[str], label: str) -> _Payload:
    tasks.reset_on_retry(system)
    with blob_store.verified(system, fs_path, version, size, sha256, label) as f:
        try:
            return _Payload(serializers.get(serializer).load(f))
        except OSError:
            raise  # reading failed, not decoding: the retry policy decides
        except Exception as exc:
            raise SerializationError(
                f"{label} could not be read with serializer {serializer!r} ({type(exc).__name__}: "
                f"{str(exc)[:300]}). If it holds raw bytes use rh.blob(..., serializer='bytes') or blob.open(); "
                "if it was written by another program, pass the serializer it used."
            ) from exc


@tasks.rh_task("rh-blob-verify")
def _verify_task(system: System, fs_path: str, version: Optional[str], size: Optional[int],
                 sha256: Optional[str], label: str) -> tuple[int, str]:
    tasks.reset_on_retry(system)
    with blob_store.open_read(system, fs_path, version, label) as f:
        found = blob_store.digest(f)
    blob_store.check(found, size, sha256, label)
    return found


@tasks.rh_task("rh-blob-download")
def _download_task(system: System, fs_path: str, version: Optional[str], local: System, local_path: str,
                   size: Optional[int], sha256: Optional[str], label: str) -> tuple[int, str]:
    tasks.reset_on_retry(system)
    with blob_store.open_read(system, fs_path, version, label) as src, transfer.open_write(local, local_path) as out:
        found = blob_store.digest(src, sink=out)
        blob_store.check(found, size, sha256, label)  # raising here discards the temporary file: nothing lands
    return found


@tasks.rh_task("rh-blob-copy")
def _copy_task(src: System, src_fs_path: str, dst: System, dst_fs_path: str, version: str, size: Optional[int],
               label: str, sha256: Optional[str] = None, serializer: Optional[str] = None) -> None:
    tasks.reset_on_retry(src, dst)
    blob_store.copy(src, src_fs_path, dst, dst_fs_path, version, label, size, sha256, serializer)


@tasks.rh_task("rh-blob-rollback")
def _rollback_task(system: System, fs_path: str, version: str, label: str) -> tuple[int, str, Optional[str]]:
    """Publish the blob's file from a kept version; returns its (size, sha256, serializer) to record."""
    tasks.reset_on_retry(system)
    with system.guard(label):
        return blob_store.rollback(system, fs_path, version, label)


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
    version: Optional[str] = None,
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
    ``version="v-..."`` (with a name or a path): exactly that kept version (see :meth:`Blob.versions`), verified
    against the sha256 stored with it, also after newer writes; such a blob is read-only. NotFound, listing the
    kept versions, when it is not kept.

    Example:
        >>> import rh_prefect as rh
        >>> b = rh.blob(data={"a": 1}, name="my-blob", path="/tmp/my-blob.pkl").save()
        >>> rh.blob(name="my-blob").fetch()
        {'a': 1}
    """
    if serializer is not None:
        serializers.get(serializer)  # fail on a typo before anything is written
    if version is not None:
        if data is not None:
            raise InvalidArgument("rh.blob(data=..., version=...) cannot be combined: a write makes a new version. "
                                  "Pass version= only to read a kept version; nothing was written.")
        check_version_id(version, f"blob {name or path}")
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
        if version is not None:
            loaded._pin(version)
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
    if version is not None:
        b._pin(version)
        if serializer is not None:
            b.serializer = serializer
        return b
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
