"""rh-prefect: Folder, Table and Blob for Prefect.

Store, recall and move data between a laptop, SSH clusters, S3, GCS and GitHub through one API; names are
kept on the Prefect server, and copies run as retryable Prefect tasks.

    >>> import rh_prefect as rh
    >>> f = rh.folder(name="my-folder", path="folder_tmp").save()
    >>> f.put({"a.txt": b"hello"})

Public names are imported lazily, so ``import rh_prefect`` is cheap and does not configure Prefect: a process
can still choose its Prefect server (``rh_prefect.runtime.local_server.ensure()``) before Prefect is first imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    **{
        name: "rh_prefect.errors"
        for name in (
            "AlreadyExists", "CredentialsError", "HostKeyMismatch", "IntegrityError", "InvalidName", "InvalidPath",
            "NotFound", "ReadOnlySystem", "RhError", "SystemUnavailable", "TransferError", "UnknownSystem",
            "SchemaMismatch", "InvalidArgument", "MissingDependency", "ReadOnlyVersion", "Cancelled",
        )
    },
    "Version": "rh_prefect.versions",
    **{name: "rh_prefect.runtime.registry" for name in ("delete", "exists", "list_names", "load")},
    **{name: "rh_prefect.runtime.lineage" for name in ("Lineage", "lineage")},
    "on_update": "rh_prefect.runtime.automations",
    "DATA_VERSIONS": "rh_prefect.runtime.caching",
    **{name: "rh_prefect.resources.folder" for name in ("Folder", "folder")},
    **{
        name: "rh_prefect.resources.table"
        for name in ("Table", "PandasTable", "DaskTable", "RayTable", "HuggingFaceTable", "PolarsTable", "table")
    },
    **{name: "rh_prefect.resources.blob" for name in ("Blob", "blob", "file")},
    **{name: "rh_prefect.systems" for name in ("GCSCredentials", "GitHubCredentials", "S3Credentials")},
    **{name: "rh_prefect.resources.cluster" for name in ("Cluster", "cluster")},
}

__all__ = sorted(_EXPORTS)


_server_checked = False


def __getattr__(name: str) -> Any:
    global _server_checked
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rh_prefect' has no attribute {name!r}")
    if not _server_checked:  # first use: a running `rh-prefect server up` beats a temporary Prefect server
        from rh_prefect.runtime import local_server

        local_server.adopt_running()
        _server_checked = True
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from rh_prefect.errors import *  # noqa: F403
    from rh_prefect.versions import Version  # noqa: F401
    from rh_prefect.runtime.registry import delete, exists, list_names, load  # noqa: F401
    from rh_prefect.runtime.lineage import Lineage, lineage  # noqa: F401
    from rh_prefect.runtime.automations import on_update  # noqa: F401
    from rh_prefect.runtime.caching import DATA_VERSIONS  # noqa: F401
    from rh_prefect.resources.blob import Blob, blob, file  # noqa: F401
    from rh_prefect.resources.folder import Folder, folder  # noqa: F401
    from rh_prefect.resources.table import (  # noqa: F401
        DaskTable, HuggingFaceTable, PandasTable, PolarsTable, RayTable, Table, table,
    )
    from rh_prefect.resources.cluster import Cluster, cluster  # noqa: F401
    from rh_prefect.systems import GCSCredentials, GitHubCredentials, S3Credentials  # noqa: F401
