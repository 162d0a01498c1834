"""The local filesystem ("file")."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from rh_prefect.systems.base import System

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
        return LocalFileSystem()

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
