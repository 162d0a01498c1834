"""The local filesystem ("file")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from rh_prefect.systems.base import System


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

    # A plain rename: fs.mv (shutil.move) first checks whether the target is a directory, and would move the
    # file into one instead of failing; it also costs several times the rename itself for many small files.
    def commit_temp(self, tmp: str, fs_path: str) -> None:
        os.replace(tmp, fs_path)
