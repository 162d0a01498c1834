"""Plain helpers shared by the test modules: polling, the Prefect client, error and log text, trees of files.

One version of each, instead of a copy per module. No pytest and no prefect import at module level: the fast tier
(``-m "not servers"``), infra.py and the benchmark scripts import this module cheaply. Fixtures live in
conftest.py.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

T = TypeVar("T")


# --------------------------------------------------------------------------- waiting


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, what: str = "the condition",
             interval: float = 0.2) -> T:
    """Poll ``predicate()`` until it returns something truthy, and return that.

    For outcomes that arrive a moment later through another process (task run states through Prefect's event
    stream, log lines, a file a worker writes). After ``timeout`` seconds: AssertionError naming ``what`` and the
    last value seen, so the failure says what was missing.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last value: {value!r}")
        time.sleep(interval)


# --------------------------------------------------------------------------- Prefect


def prefect_client() -> Any:
    """A synchronous client of the suite's Prefect server (PREFECT_API_URL): ``with prefect_client() as c: ...``."""
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


# --------------------------------------------------------------------------- errors and logs


def chain_text(exc: BaseException | None) -> str:
    """str and repr of an exception and of everything it was raised from or during - what a traceback shows -
    including the per-file errors a TransferError keeps in ``failures``."""
    parts = []
    seen = 0
    while exc is not None and seen < 20:
        parts += [str(exc), repr(exc)]
        for value in getattr(exc, "failures", {}).values():
            parts += [str(value), repr(value)]
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return "\n".join(parts)


def log_text(caplog: Any) -> str:
    """Every message pytest's ``caplog`` captured, with the tracebacks logged alongside."""
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


# --------------------------------------------------------------------------- trees of files


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` (relative "/"-separated path -> bytes) under the local directory ``root``; return ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def read_tree(root: Path, skip: Iterable[str] = ()) -> dict[str, bytes]:
    """Relative "/"-separated path -> bytes of every file under the local directory ``root`` (its exact names on
    disk); files under a directory named in ``skip`` (e.g. ``.git``) are left out."""
    root = Path(root)
    skip = set(skip)
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not skip.intersection(path.relative_to(root).parts)
    }


def sha256s(files: dict[str, bytes]) -> dict[str, str]:
    """Relative path -> sha256 hex digest: what :func:`stored_sha256s` must find after ``files`` were copied."""
    return {key: hashlib.sha256(data).hexdigest() for key, data in files.items()}


def stored_sha256s(folder: Any) -> dict[str, str]:
    """Relative path -> sha256 of every file under a Folder, read with its raw fsspec filesystem (not through the
    copy engine under test), in chunks."""
    fs = folder.sys.fs
    fs.invalidate_cache()
    root = folder.fs_path.rstrip("/")
    out = {}
    for path in fs.find(root):
        # Some filesystems list without the leading "/" of a local or SSH root.
        norm = path if path.startswith("/") or not root.startswith("/") else "/" + path
        digest = hashlib.sha256()
        with fs.open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(2**20), b""):
                digest.update(chunk)
        out[norm[len(root) + 1:]] = digest.hexdigest()
    return out


def folder_contents(folder: Any) -> dict[str, bytes]:
    """Relative path -> bytes of every file of a Folder, read through the Folder's own API (ls and get)."""
    return {key: folder.get(key) for key in folder.ls(full_paths=False, recursive=True)}


# --------------------------------------------------------------------------- tables


def small_row_groups(rows: int, groups_per_file: int) -> Any:
    """Inside the ``with`` block, tables are written in row groups of ``rows`` rows and files of
    ``groups_per_file`` groups, so that a table of a few hundred rows spans many files and row groups (the
    defaults would put it in one)."""
    from rh_prefect import settings

    return settings.override(table_max_group_rows=rows, table_min_group_rows=rows,
                             table_groups_per_file=groups_per_file)
