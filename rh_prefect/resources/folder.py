"""Folder: a directory on any system - listed, written, read, and copied to any other system.

A Folder is also a namespace: a resource saved as ``/ds/x`` is listed by the ``/ds`` folder's
:meth:`Folder.resources` and, without an explicit path, stores its data under that folder.
"""

from __future__ import annotations

import io
import os
import posixpath
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Optional, Union

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.utilities.asyncutils import run_sync_in_worker_thread
from prefect.filesystems import WritableDeploymentStorage, WritableFileSystem
from pydantic import ConfigDict

from rh_prefect import transfer

from rh_prefect.runtime import events, registry, tasks
from rh_prefect.errors import AlreadyExists, InvalidArgument, InvalidPath, NotFound
from rh_prefect.resources.base import StoredResource, SystemArg, place
from rh_prefect.resources.cluster import Cluster
from rh_prefect.systems import check_relative_key, get_system

Contents = Union[Mapping[str, Union[bytes, str]], str, os.PathLike, "Folder"]


class Folder(StoredResource, WritableFileSystem, WritableDeploymentStorage):
    """A folder of files on the local disk, a cluster (SSH), S3, GCS or GitHub (read-only).

    Works as a Prefect ``result_storage`` and as deployment storage too.

    Example:
        ```python
        import rh_prefect as rh
        local = rh.folder(name="my-folder", path="folder_tmp").save()
        local.put({"a.txt": b"hello"})
        s3 = local.to(system="s3", path="/my-bucket/my-folder")
        print(s3.ls(full_paths=False))   # ['a.txt']
        ```
    """

    _block_type_name = "rh Folder"
    _description = "A folder of files on local disk, a cluster (SSH), S3, GCS or GitHub, copyable to any of them."
    _documentation_url = None
    # Prefect's filesystem bases bring Block's own config back (a later base wins): keep the resources' schema.
    model_config = ConfigDict(json_schema_extra=registry.resource_schema_extra)

    # -- listing and reading ------------------------------------------------------------------------------
    def ls(self, full_paths: bool = True, sort: bool = False, recursive: bool = False) -> list[str]:
        """Entries of the folder: top-level files and sub-folders, or every file with ``recursive=True``.

        ``sort=True`` puts the newest first. ``full_paths=False`` gives names relative to the folder.
        """
        root = self.fs_path
        missing = NotFound(f"Folder {self.url} does not exist; write to it first or check the path.")
        if recursive:
            with self.sys.guard(self.url):
                infos = transfer.list_files(self.sys, root)
                if not infos and not self.sys.fs.exists(root):
                    raise missing
            entries = [(key, info) for key, info in infos.items()]
        else:
            try:
                with self.sys.guard(self.url):
                    listing = self.sys.fs.ls(root, detail=True)
            except FileNotFoundError:
                raise missing from None
            entries = []
            for info in listing:
                base = posixpath.basename(info["name"].rstrip("/"))
                if base and not self.sys.is_temp_name(base) and info["name"].rstrip("/") != root.rstrip("/"):
                    entries.append((base, info))
        if sort:
            entries.sort(key=lambda e: self.sys.mtime(e[1]) or 0.0, reverse=True)
        else:
            entries.sort(key=lambda e: e[0])
        if full_paths:
            return [posixpath.join(self.path, key) for key, _ in entries]
        return [key for key, _ in entries]

    def data_version(self) -> str:
        """A fingerprint of the folder's files, for caches keyed on the data (``rh.DATA_VERSIONS``): a Folder has
        no versions, so this is the sha256 of its recursive listing - every file's relative path, size,
        modification time and the store's content tag where it lists one (S3 ETag, GCS md5). One listing, no file
        is read. A rewrite of a file with the same size within the store's time resolution and no content tag (a
        second, over SFTP) is not seen."""
        import hashlib

        with self.sys.guard(self.url):
            infos = transfer.list_files(self.sys, self.fs_path)
        digest = hashlib.sha256()
        for key in sorted(infos):
            digest.update(repr((key, self.sys.fingerprint(infos[key]))).encode())
        return "listing-" + digest.hexdigest()

    def _key_path(self, name: str) -> str:
        return posixpath.join(self.fs_path, check_relative_key(name))

    def exists_in_system(self) -> bool:
        """True if the folder exists on its system (for buckets: something is stored under the prefix)."""
        with self.sys.guard(self.url):
            return bool(self.sys.fs.exists(self.fs_path))

    def get(self, name: str, mode: str = "rb", encoding: Optional[str] = None) -> Union[bytes, str]:
        """Contents of one file: bytes, or str when ``mode="r"`` (or an encoding is given)."""
        with self.open(name, mode=mode, encoding=encoding) as f:
            return f.read()

    @contextmanager
    def open(self, name: str, mode: str = "rb", encoding: Optional[str] = None) -> Iterator[IO[Any]]:
        """Open one file as a streaming file object. Writes (``"wb"``/``"w"``) appear atomically on close."""
        if mode not in ("rb", "r", "wb", "w"):
            raise InvalidPath(f"mode {mode!r} is not supported; use 'rb', 'r', 'wb' or 'w'.")
        path = self._key_path(name)
        if "w" in mode:
            with transfer.open_write(self.sys, path) as raw:
                if mode == "w":
                    text = io.TextIOWrapper(raw, encoding=encoding or "utf-8")  # type: ignore[arg-type]
                    yield text
                    text.flush()
                    text.detach()
                else:
                    yield raw
            self._announce(events.WRITTEN, payload={"files": [name]})
            return
        try:
            with self.sys.guard(f"{self.url}/{name}"):
                raw = self.sys.open_read(path)
        except FileNotFoundError:
            raise NotFound(f"No file {name!r} in folder {self.url}; see folder.ls().") from None
        with raw:
            if mode == "r" or encoding:
                yield io.TextIOWrapper(raw, encoding=encoding or "utf-8")  # type: ignore[arg-type]
            else:
                yield raw

    # -- writing ------------------------------------------------------------------------------------------
    def mkdir(self) -> "Folder":
        """Create the folder (and the bucket it lives in)."""
        self.sys.check_writable(self.path or "")
        self.sys.ensure_container(self.fs_path, create=True)
        self.sys.makedirs(self.fs_path)
        return self

    def put(self, contents: Contents, overwrite: bool = False, mode: str = "wb") -> "Folder":
        """Add files: a dict ``{name: bytes or str}``, a local file or directory path, or another Folder.

        With ``overwrite=False`` (the default) nothing is written if any target file already exists.
        """
        self.sys.check_writable(self.path or "")
        if isinstance(contents, Folder):
            tasks.run(tasks.copy_tree_task, contents.sys, contents.fs_path, self.sys, self.fs_path, overwrite=overwrite)
            self.announce_copy(contents)
            if self.is_saved():  # a copy into a saved name: its new contents, for whoever waits for them
                self._announce(events.WRITTEN, contents)
            return self
        if isinstance(contents, (str, os.PathLike)):
            src = Path(contents).expanduser()
            if not src.exists():
                raise NotFound(f"Local path {str(src)!r} does not exist.")
            local = get_system("file")
            if src.is_dir():
                tasks.run(tasks.copy_tree_task, local, str(src.absolute()), self.sys, self.fs_path, overwrite=overwrite)
            else:
                tasks.run(
                    tasks.copy_tree_task, local, str(src.parent.absolute()), self.sys, self.fs_path,
                    overwrite=overwrite, keys=[src.name],
                )
            self._announce(events.WRITTEN, payload={"from_local_path": str(src.absolute())})
            return self
        if not isinstance(contents, Mapping):
            raise InvalidArgument(
                f"put() takes a dict of name -> bytes/str, a local path or a Folder, not {type(contents).__name__}."
            )
        items: dict[str, bytes] = {}
        for key, value in contents.items():
            clean = check_relative_key(key)
            if isinstance(value, str):
                value = value.encode("utf-8")
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise InvalidArgument(
                    f"put(): value for {key!r} must be bytes or str, not {type(value).__name__}; encode it first, "
                    "e.g. json.dumps(value).encode(). Nothing was written."
                )
            items[clean] = bytes(value)
        self.sys.ensure_container(self.fs_path)
        if not overwrite:
            existing = [k for k in items if self.sys.fs.exists(posixpath.join(self.fs_path, k))]
            if existing:
                raise AlreadyExists(
                    f"{existing[:5]} already exist in {self.url}; pass overwrite=True to replace them. "
                    "Nothing was written."
                )
        for key, data in items.items():
            transfer.write_bytes(self.sys, posixpath.join(self.fs_path, key), data)
        self._announce(events.WRITTEN, payload={"files": sorted(items)[:100]})
        return self

    def rm(self, contents: Optional[list[str]] = None, recursive: bool = True) -> None:
        """Delete the listed files (names relative to the folder), or the whole folder when none are given."""
        self.sys.check_writable(self.path or "")
        paths = [self.fs_path] if contents is None else [self._key_path(name) for name in contents]
        with self.sys.guard(self.url):
            for path in paths:
                if self.sys.fs.exists(path):
                    if recursive:
                        self.sys.rm_tree(path)
                    else:
                        self.sys.fs.rm(path)
        if contents is None:
            self._announce(events.DELETED)
        else:
            self._announce(events.WRITTEN, payload={"removed": list(contents)[:100]})

    # -- moving -------------------------------------------------------------------------------------------
    def to(self, system: SystemArg, path: Optional[str] = None, overwrite: bool = True, via: str = "auto") -> "Folder":
        """Copy this folder to another system (or place) and return the Folder there.

        Unchanged files already at the destination are skipped, so calling it again resumes or refreshes.
        Without ``path`` the copy goes under the destination system's default root (a bucket needs a path
        or a configured default bucket). ``via``: where the bytes flow - ``"worker"`` (a flow run on the
        worker of the cluster holding the folder), ``"local"`` (this process) or ``"auto"`` (the worker when
        one is online); see :mod:`rh_prefect.resources.remote`.
        """
        return super().to(system, path, via=via, overwrite=overwrite)

    def copy_to(self, system: SystemArg, path: Optional[str] = None, overwrite: bool = True) -> "Folder":
        """Copy through this process (the engine, as a retryable task) and return the Folder there."""
        dst_sys, dst_path = self.destination(system, path)
        dst_sys.check_writable(dst_path)
        dst_sys.ensure_container(dst_sys.fs_path(dst_path))
        src_root, dst_root = self.fs_path, dst_sys.fs_path(dst_path)
        report = tasks.run(tasks.copy_tree_task, self.sys, src_root, dst_sys, dst_root, overwrite=overwrite)
        new = self.relocated(dst_sys, dst_path)
        new._last_report = report
        new.announce_copy(self)
        return new

    def mv(self, system: SystemArg, path: Optional[str] = None) -> "Folder":
        """Move the folder: copy, then delete the source. A saved folder's registry entry follows it."""
        dst_sys, dst_path = self.destination(system, path)
        if dst_sys == self.sys:
            # Deleting the source after copying onto (or into) itself would delete the data just copied.
            src_root, dst_root = self.fs_path.rstrip("/"), dst_sys.fs_path(dst_path).rstrip("/")
            if dst_root == src_root or dst_root.startswith(src_root + "/"):
                where = "onto itself" if dst_root == src_root else "inside itself"
                raise InvalidPath(f"Cannot move {self.url} {where}; pick a destination outside the folder.")
        moved = self.to(system, path)  # announces the copy
        old = self.relocated(self.sys, self.path or "")  # the old place, by its URL
        with events.suppressed():  # the name is not deleted: its data moved
            self.rm()
        old._announce(events.DELETED, payload={"moved_to": moved.url})
        self._relocate(moved.sys, moved.path)
        if self._block_document_id is not None:
            self.save()
            self._announce(events.WRITTEN, old, payload={"moved_from": old.url})
        return self

    # -- namespace ----------------------------------------------------------------------------------------
    def resources(self, recursive: bool = False) -> list[str]:
        """Names of saved resources in this folder's namespace (``/ds/x`` for the ``/ds`` folder)."""
        if not self.name:
            raise NotFound("An unsaved folder has no namespace; save it with a name first.")
        return [full for full, _ in registry.list_names(self.full_name, recursive=recursive)]

    def contains(self, name: str) -> bool:
        """True if a resource ``name`` (relative to this namespace, or absolute) is saved in it."""
        return self.locate(name) is not None

    def locate(self, name: str) -> Optional[tuple[str, Optional[str]]]:
        """``(system, path)`` of a resource saved in this namespace, or None."""
        full = name if name.startswith(("/", "@/")) else f"{self.full_name}/{name}"
        if not full.startswith(f"{self.full_name}/") or not registry.exists(full):
            return None
        res = registry.load(full)
        return (getattr(res, "system", None), getattr(res, "path", None))

    # -- Prefect WritableFileSystem / WritableDeploymentStorage ---------------------------------------------
    def _storage_path(self, path: str) -> str:
        root = self.fs_path.rstrip("/")
        if path.startswith(root + "/"):
            path = path[len(root) + 1 :]
        return posixpath.join(root, check_relative_key(path))

    # Each operation is a private sync implementation, an async twin running it in a worker thread, and the
    # public sync name dispatching between them (Prefect's convention): Prefect's BlockStorageAdapter and the
    # pull_with_block step *await* get_directory(), so a plain sync method would break flow.from_source.
    # The twins call the private implementation, never the dispatching name: in a worker thread of an async
    # flow run the dispatcher would hand back an un-awaited coroutine.
    def _read_path(self, path: str) -> bytes:
        try:
            return self.sys.fs.cat_file(self._storage_path(path))
        except FileNotFoundError:
            raise NotFound(f"No file {path!r} in folder {self.url}.") from None

    def _write_path(self, path: str, content: bytes) -> str:
        target = self._storage_path(path)
        transfer.write_bytes(self.sys, target, content)
        self._announce(events.WRITTEN, payload={"files": [posixpath.relpath(target, self.fs_path.rstrip("/"))]})
        return target

    async def aread_path(self, path: str) -> bytes:
        """Async twin of :meth:`read_path`."""
        return await run_sync_in_worker_thread(self._read_path, path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        """Async twin of :meth:`write_path`."""
        return await run_sync_in_worker_thread(self._write_path, path, content)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:  # type: ignore[override]
        """Read one file (for Prefect result storage)."""
        return self._read_path(path)

    @async_dispatch(awrite_path)
    def write_path(self, path: str, content: bytes) -> str:  # type: ignore[override]
        """Write one file atomically (for Prefect result storage)."""
        return self._write_path(path, content)

    def _get_directory(self, from_path: Optional[str] = None, local_path: Optional[str] = None) -> None:
        src = self._storage_path(from_path) if from_path else self.fs_path
        dst = str(Path(local_path or ".").absolute())
        tasks.run(tasks.copy_tree_task, self.sys, src, get_system("file"), dst)

    def _put_directory(
        self, local_path: Optional[str] = None, to_path: Optional[str] = None, ignore_file: Optional[str] = None
    ) -> int:
        src = str(Path(local_path or ".").absolute())
        dst = self._storage_path(to_path) if to_path else self.fs_path
        keys = None
        if ignore_file:
            from prefect.utilities.filesystem import filter_files

            with open(ignore_file) as f:
                patterns = f.readlines()
            keys = sorted(p for p in filter_files(src, patterns, include_dirs=False, as_posix=True))
        self.sys.ensure_container(dst)
        report = tasks.run(tasks.copy_tree_task, get_system("file"), src, self.sys, dst, keys=keys)
        self._announce(events.WRITTEN, payload={"from_local_path": src})
        return report.files_copied + report.files_skipped

    async def aget_directory(self, from_path: Optional[str] = None, local_path: Optional[str] = None) -> None:
        """Async twin of :meth:`get_directory`."""
        await run_sync_in_worker_thread(self._get_directory, from_path, local_path)

    async def aput_directory(
        self, local_path: Optional[str] = None, to_path: Optional[str] = None, ignore_file: Optional[str] = None
    ) -> int:
        """Async twin of :meth:`put_directory`."""
        return await run_sync_in_worker_thread(self._put_directory, local_path, to_path, ignore_file)

    @async_dispatch(aget_directory)
    def get_directory(self, from_path: Optional[str] = None, local_path: Optional[str] = None) -> None:  # type: ignore[override]
        """Download the folder (or a sub-path) to ``local_path`` (default: the current directory)."""
        self._get_directory(from_path, local_path)

    @async_dispatch(aput_directory)
    def put_directory(  # type: ignore[override]
        self, local_path: Optional[str] = None, to_path: Optional[str] = None, ignore_file: Optional[str] = None
    ) -> int:
        """Upload a local directory (default: the current directory) into the folder; returns files copied."""
        return self._put_directory(local_path, to_path, ignore_file)

def folder(
    name: Optional[str] = None,
    path: Optional[Union[str, os.PathLike]] = None,
    system: SystemArg = None,
    dryrun: bool = False,
    *,
    credentials: Any = None,
    cluster: Optional[Cluster] = None,
) -> Folder:
    """Get a Folder: load a saved one by ``name``, or describe a new one at ``path`` on ``system``.

    ``rh.folder(name="my-folder")`` loads the saved folder; if none is saved yet, a new (unsaved) folder at the
    default place for that name is returned, as Runhouse does. ``dryrun`` is accepted for Runhouse parity:
    creating a Folder never touches storage.
    """
    if name is not None and path is None and system is None and credentials is None and cluster is None:
        try:
            return Folder._load_named(name)
        except NotFound:
            pass
    if isinstance(system, Cluster):
        cluster, system = system, "ssh"
    sys, where = place(name, system, str(path) if path is not None else None, cluster=cluster,
                       credentials=credentials, kind="folder")
    f = Folder(path=where, **sys.block_fields())
    f._sys = sys
    f._set_name(name)
    return f


__all__ = ["Folder", "folder"]
