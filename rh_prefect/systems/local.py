"""The local filesystem ("file")."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from rh_prefect.systems.base import System

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

#: errnos of file operations that a retry may cure
_TRANSIENT_FILE_ERRNOS = frozenset({errno.EINTR, errno.EAGAIN, errno.EBUSY, errno.ESTALE})


class LocalSystem(System):
    """Files on this machine. Paths are absolute; relative ones resolve against the current directory."""

    name = "file"
    aliases = ("local", "localhost")
    is_local = True
    max_concurrency = 8

    def __init__(self, **_: object) -> None:
        pass

    def identity(self) -> tuple:
        return ("file",)

    def _make_fs(self) -> AbstractFileSystem:
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem()

    # Listing, reading and checking with the standard library: a command-line ls or cat of a local path then needs
    # no fsspec (with the asyncio it imports, ~0.1 s of CPU), and a walk with os.scandir stats each file once,
    # where fsspec's find builds its full info (an lstat, then a stat for links) per entry.
    def find_files(self, fs_root: str) -> dict[str, dict[str, Any]]:
        """``{path: info}`` of every file under ``fs_root`` (``fs_root`` itself when it is a file), following
        links to directories as fsspec's walk does, each directory once; empty when nothing is there."""
        root = fs_root.rstrip("/") or "/"
        try:
            top = os.stat(root)
        except FileNotFoundError:
            return {}
        if not stat.S_ISDIR(top.st_mode):
            return {root: _info(root, top)}
        found: dict[str, dict[str, Any]] = {}
        seen = {(top.st_dev, top.st_ino)}
        todo = [root]
        while todo:
            folder = todo.pop()
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):  # removed while we walked
                continue
            for entry in entries:
                try:
                    st = entry.stat()  # follows links, as fsspec does
                except FileNotFoundError:  # a dangling link, or removed while we walked
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) not in seen:  # a link back up the tree is walked once
                        seen.add((st.st_dev, st.st_ino))
                        todo.append(entry.path)
                elif stat.S_ISREG(st.st_mode):
                    found[entry.path] = _info(entry.path, st)
        return found

    def ls(self, fs_path: str) -> list[dict[str, Any]]:
        try:
            st = os.stat(fs_path)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", fs_path) from None
        if not stat.S_ISDIR(st.st_mode):
            return [_info(fs_path, st)]
        out = []
        for entry in os.scandir(fs_path):
            try:
                out.append(_info(entry.path, entry.stat()))
            except FileNotFoundError:  # a dangling link
                continue
        return out

    def exists(self, fs_path: str) -> bool:
        return os.path.exists(fs_path)

    def isdir(self, fs_path: str) -> bool:
        return os.path.isdir(fs_path)

    def open_read(self, fs_path: str, size: Optional[int] = None) -> Any:
        return open(fs_path, "rb")

    def fs_path(self, path: str) -> str:
        path = str(path)
        if path.startswith("file://"):
            path = path[len("file://") :]
        return str(Path(os.path.expanduser(path)).absolute())

    def normalize(self, path: str) -> str:
        return self.fs_path(path)

    def url(self, path: str) -> str:
        return self.fs_path(path)

    def default_root(self) -> Optional[str]:
        return os.getcwd()

    @classmethod
    def is_transient(cls, exc: BaseException) -> Optional[bool]:
        """A file operation's error (an OSError naming its file) is judged by its errno: an interrupted call, a
        resource that is busy for now or a stale NFS handle may succeed when tried again; a full disk, a name
        that is too long or a missing directory will not. A path's digits never count (``/tmp/pytest-503/...``
        is no HTTP 503)."""
        # raised from another error: a storage client's translation (s3fs turns SlowDown into EBUSY): its cause says
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is not None and exc.__cause__ is None:
            return exc.errno in _TRANSIENT_FILE_ERRNOS
        return None

    # A plain rename: fs.mv (shutil.move) first checks whether the target is a directory, and would move the
    # file into one instead of failing; it also costs several times the rename itself for many small files.
    def commit_temp(self, tmp: str, fs_path: str) -> None:
        os.replace(tmp, fs_path)


def _info(path: str, st: os.stat_result) -> dict[str, Any]:
    """A listing entry as fsspec's local filesystem gives it (the fields the engine and the command line read)."""
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
    return {"name": path, "size": st.st_size, "type": kind, "mtime": st.st_mtime, "mode": st.st_mode}
