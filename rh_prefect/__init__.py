"""rh-prefect: Folder, Table and Blob for Prefect.

Store, recall and move data between a laptop, SSH clusters, S3, GCS and GitHub through one API; names are
kept on the Prefect server, and copies run as retryable Prefect tasks.

    >>> import rh_prefect as rh
    >>> f = rh.folder(name="my-folder", path="folder_tmp").save()
    >>> f.put({"a.txt": b"hello"})
"""

from __future__ import annotations

__version__ = "0.1.0"

from rh_prefect.errors import (
    AlreadyExists,
    CredentialsError,
    HostKeyMismatch,
    IntegrityError,
    InvalidName,
    InvalidPath,
    NotFound,
    ReadOnlySystem,
    RhError,
    SystemUnavailable,
    TransferError,
    UnknownSystem,
)
from rh_prefect.registry import delete, exists, list_names, load
from rh_prefect.resources.folder import Folder, folder
from rh_prefect.systems import Cluster, GCSCredentials, GitHubCredentials, S3Credentials
from rh_prefect.systems.ssh import cluster

__all__ = [
    "AlreadyExists",
    "Cluster",
    "CredentialsError",
    "Folder",
    "GCSCredentials",
    "GitHubCredentials",
    "HostKeyMismatch",
    "IntegrityError",
    "InvalidName",
    "InvalidPath",
    "NotFound",
    "ReadOnlySystem",
    "RhError",
    "S3Credentials",
    "SystemUnavailable",
    "TransferError",
    "UnknownSystem",
    "cluster",
    "delete",
    "exists",
    "folder",
    "list_names",
    "load",
]
