"""Storage systems: where bytes live. See :mod:`rh_prefect.systems.base` for the contract."""

from __future__ import annotations

from typing import Any, Optional, Union

from rh_prefect.systems.base import System, check_relative_key, system_class
from rh_prefect.systems.credentials import GCSCredentials, GitHubCredentials, S3Credentials
from rh_prefect.systems.github import GitHubSystem
from rh_prefect.systems.local import LocalSystem
from rh_prefect.systems.object_store import GCSSystem, S3System
from rh_prefect.systems.ssh import Cluster, SSHSystem

SystemLike = Union[str, Cluster, System, None]
Credentials = Union[S3Credentials, GCSCredentials, GitHubCredentials]


def get_system(system: SystemLike = None, *, cluster: Optional[Cluster] = None, credentials: Any = None) -> System:
    """Resolve what a user passed as ``system=`` into a :class:`System`.

    ``None`` means the local filesystem, a :class:`Cluster` means its SSH system, a string is looked up by
    name or alias ("file", "s3", "gs", "github", "ssh"/"sftp").
    """
    if isinstance(system, System):
        return system
    if isinstance(system, Cluster):
        return SSHSystem(cluster=system)
    klass = system_class(system or "file")
    return klass(cluster=cluster, credentials=credentials)


__all__ = [
    "Cluster",
    "Credentials",
    "GCSCredentials",
    "GCSSystem",
    "GitHubCredentials",
    "GitHubSystem",
    "LocalSystem",
    "S3Credentials",
    "S3System",
    "SSHSystem",
    "System",
    "SystemLike",
    "check_relative_key",
    "get_system",
]
