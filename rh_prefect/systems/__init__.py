"""Storage systems: where bytes live. See :mod:`rh_prefect.systems.base` for the contract."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Optional, Union

from rh_prefect.systems.base import System, check_path, check_relative_key, system_class

#: Public names -> the module that defines them, imported on first use: a command-line ``ls`` of a local path needs
#: the local system only (not asyncio, nor the SSH and object-store code, ~0.1 s of a ~0.4 s command), and the
#: credential blocks are Prefect blocks (importing Prefect costs about a second). ``system_class`` loads every
#: backend (:func:`rh_prefect.systems.base.load_backends`).
_LAZY = {
    "GitHubSystem": "rh_prefect.systems.github",
    "HERE": "rh_prefect.systems.here",
    "ClusterDisk": "rh_prefect.systems.here",
    "LocalSystem": "rh_prefect.systems.local",
    "GCSSystem": "rh_prefect.systems.object_store",
    "S3System": "rh_prefect.systems.object_store",
    "SSHSettings": "rh_prefect.systems.ssh",
    "SSHSystem": "rh_prefect.systems.ssh",
    "GCSCredentials": "rh_prefect.systems.credentials",
    "GitHubCredentials": "rh_prefect.systems.credentials",
    "S3Credentials": "rh_prefect.systems.credentials",
}


def __getattr__(name: str) -> Any:
    if name == "Credentials":
        from rh_prefect.systems.credentials import GCSCredentials, GitHubCredentials, S3Credentials

        return Union[S3Credentials, GCSCredentials, GitHubCredentials]
    if name == "SystemLike":
        from rh_prefect.systems.ssh import SSHSettings

        return Union[str, SSHSettings, System, None]
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rh_prefect.systems' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from rh_prefect.systems.credentials import GCSCredentials, GitHubCredentials, S3Credentials
    from rh_prefect.systems.github import GitHubSystem
    from rh_prefect.systems.here import HERE, ClusterDisk
    from rh_prefect.systems.local import LocalSystem
    from rh_prefect.systems.object_store import GCSSystem, S3System
    from rh_prefect.systems.ssh import SSHSettings, SSHSystem

    Credentials = Union[S3Credentials, GCSCredentials, GitHubCredentials]
    SystemLike = Union[str, SSHSettings, System, None]


def get_system(system: "SystemLike" = None, *, cluster: Optional["SSHSettings"] = None,
               credentials: Any = None) -> System:
    """Resolve what a user passed as ``system=`` into a :class:`System`.

    ``None`` means the local filesystem, a Cluster (any :class:`SSHSettings`) means its SSH system, a string is looked up by
    name or alias ("file", "s3", "gs", "github", "ssh"/"sftp"). ``"here"`` is the machine this code runs on
    (:func:`rh_prefect.systems.here.here`): every ``system=`` argument, and so every ``.to("here")``, is
    resolved here.
    """
    from rh_prefect.systems.here import HERE, here as _here
    from rh_prefect.systems.ssh import SSHSettings, SSHSystem

    if isinstance(system, System):
        return system
    if isinstance(system, SSHSettings):
        return SSHSystem(cluster=system)
    if isinstance(system, str) and system.strip().lower() == HERE:
        return _here()
    klass = system_class(system or "file")
    return klass(cluster=cluster, credentials=credentials)


def from_url(url: str, cluster: Optional["SSHSettings"] = None) -> tuple[System, str]:
    """``(System, system path)`` for a URL or a local path, as typed on a command line.

    ``s3://bucket/key``, ``gs://bucket/key``, ``github://org/repo@ref/dir``, ``ssh://[user@]host[:port]/path``,
    ``file:///tmp/x`` or ``/tmp/x``. ``cluster``: the SSH settings to use for an ``ssh://`` URL instead of its
    host part (the caller resolved ``ssh://rh-cpu/data`` to the saved Cluster ``rh-cpu``).
    """
    from urllib.parse import urlsplit

    from rh_prefect.systems.local import LocalSystem

    if "://" not in url:
        return LocalSystem(), LocalSystem().normalize(url)
    from rh_prefect.systems.github import GitHubSystem
    from rh_prefect.systems.ssh import SSHSettings, SSHSystem

    scheme, rest = url.split("://", 1)
    klass = system_class(scheme)
    if klass is SSHSystem:
        parts = urlsplit(url)
        path = parts.path or "/"
        path = path[1:] if path.startswith("/~") else path
        if cluster is None:
            cluster = SSHSettings(host=parts.hostname or "", port=parts.port or 22, user=parts.username)
        return SSHSystem(cluster=cluster), path
    system = klass()
    return system, system.normalize(rest if klass is GitHubSystem else url)


__all__ = [
    "from_url",
    "ClusterDisk",
    "Credentials",
    "GCSCredentials",
    "GCSSystem",
    "GitHubCredentials",
    "GitHubSystem",
    "LocalSystem",
    "S3Credentials",
    "S3System",
    "SSHSettings",
    "SSHSystem",
    "System",
    "SystemLike",
    "check_path",
    "check_relative_key",
    "get_system",
]
