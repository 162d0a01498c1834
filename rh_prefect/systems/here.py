""""here": the machine this code runs on, as a system (Runhouse's ``.to("here")``), and a cluster's own disk.

On a laptop "here" is the local disk. In a process running on a cluster's Prefect worker (started by
``Cluster.start_worker()``, which puts :data:`WORKER_CLUSTER_ENV` in the worker's environment) it is that cluster's
own disk, seen as a :class:`ClusterDisk`: files are read and written as local files (no SSH to itself), while the
resource records the cluster (system ``"ssh"``), so a saved one means the same data to every other process.

Example:
    ```python
    import rh_prefect as rh
    local = rh.folder(name="my-folder").to("here")     # ./<leaf> on a laptop; the cluster's disk on its worker
    ```
"""

from __future__ import annotations

import os
import posixpath
from typing import Any, Optional

from rh_prefect.errors import CredentialsError
from rh_prefect.systems.base import System
from rh_prefect.systems.local import LocalSystem

#: the ``system=`` value meaning "the machine this code runs on"
HERE = "here"
#: Set in a cluster worker's environment: the identity (:func:`worker_identity`) of the cluster it runs on.
WORKER_CLUSTER_ENV = "RH_PREFECT_WORKER_CLUSTER"


def worker_identity(system: System) -> str:
    """How a worker recognises the cluster it runs on: host, port and login user of the cluster's SSH system."""
    return "|".join(str(part) for part in system.identity())


def on_cluster(cluster: Any) -> bool:
    """True when this process runs on ``cluster``'s worker, so the cluster's files are on this host's disk."""
    current = os.environ.get(WORKER_CLUSTER_ENV)
    return bool(current) and current == worker_identity(cluster.system())


class ClusterDisk(LocalSystem):
    """A cluster's disk from a process running on that cluster: local file I/O, recorded as the cluster's.

    Paths follow the cluster's SSH system (``~/x`` or absolute are kept as given, so the recorded path reads the
    same over SSH from elsewhere); a relative path is taken from the current directory, as on any local disk.
    The worker runs as the cluster's login user, so ``~`` is the same home either way.
    """

    def __init__(self, cluster: Any = None, **_: object) -> None:
        if cluster is None:
            raise CredentialsError("A ClusterDisk needs the Cluster whose disk it is.")
        self.cluster = cluster

    def normalize(self, path: str) -> str:
        path = str(path)
        if path.startswith(("ssh://", "sftp://")):
            path = self.cluster.system().normalize(path)
        if path.startswith(("/", "~")):
            return posixpath.normpath(path)
        return super().normalize(path)  # relative: from the current directory, like any local path

    def fs_path(self, path: str) -> str:
        return super().fs_path(self.normalize(path))

    def url(self, path: str) -> str:
        return self.cluster.system().url(self.normalize(path))

    def describe(self) -> str:
        return f"{self.cluster.system().describe()}, on its own disk"

    def block_fields(self) -> dict[str, Any]:
        return {"system": "ssh", "cluster": self.cluster}


def here() -> System:
    """The system for ``system="here"``: the cluster's own disk on a cluster's worker (when the Cluster block it
    runs on is saved), otherwise this machine's local disk (default paths under the current directory)."""
    current = os.environ.get(WORKER_CLUSTER_ENV)
    if current:
        cluster = _saved_cluster(current)
        if cluster is not None:
            return ClusterDisk(cluster)
    return LocalSystem()


def _saved_cluster(identity: str) -> Optional[Any]:
    """The saved Cluster block whose SSH identity is ``identity`` (the first by name), or None."""
    from rh_prefect import names
    from rh_prefect.runtime import registry  # the registry is one floor up; only needed on a worker

    for full, kind in registry.list_names():
        if kind == "Cluster":
            found = registry.load(names.display(full))  # as the user would name it: "rh-cpu", not "@/rh-cpu"
            if worker_identity(found.system()) == identity:
                return found
    return None
