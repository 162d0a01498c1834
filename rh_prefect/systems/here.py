""""here": the machine this code runs on, as a system (Runhouse's ``.to("here")``), and a cluster's own disk.

On a laptop "here" is the local disk. In a process running on a cluster's Prefect worker it is that cluster's own
disk, seen as a :class:`ClusterDisk`: files are read and written as local files (no SSH to itself), while a
resource placed there records the cluster (system ``"ssh"``), so a saved one means the same data to every other
process.

Which cluster a worker runs on is known one floor up (the worker's environment, the saved Cluster blocks): the
resources floor registers that lookup with :func:`set_current_cluster`, as resource types register themselves with
the registry, so this floor imports nothing above it.

Example:
    ```python
    import rh_prefect as rh
    local = rh.folder(name="my-folder").to("here")     # ./<leaf> on a laptop; the cluster's disk on its worker
    ```
"""

from __future__ import annotations

import posixpath
from typing import Any, Callable, Optional

from rh_prefect.errors import CredentialsError
from rh_prefect.systems.base import System
from rh_prefect.systems.local import LocalSystem
from rh_prefect.systems.ssh import SSHSettings, SSHSystem

#: the ``system=`` value meaning "the machine this code runs on"
HERE = "here"

# The saved cluster this process runs on (it is that cluster's worker), or None; see set_current_cluster.
_current_cluster: Callable[[], Optional[SSHSettings]] = lambda: None


def set_current_cluster(lookup: Callable[[], Optional[SSHSettings]]) -> None:
    """Register how to tell the cluster this process runs on (None: not on a cluster's worker)."""
    global _current_cluster
    _current_cluster = lookup


class ClusterDisk(LocalSystem):
    """A cluster's disk from a process running on that cluster: local file I/O, recorded as the cluster's.

    Paths follow the cluster's SSH system (``~/x`` or absolute are kept as given, so the recorded path reads the
    same over SSH from elsewhere); a relative path is taken from the current directory, as on any local disk.
    The worker runs as the cluster's login user, so ``~`` is the same home either way.
    """

    def __init__(self, cluster: Optional[SSHSettings] = None, **_: object) -> None:
        if cluster is None:
            raise CredentialsError("A ClusterDisk needs the Cluster whose disk it is.")
        self.cluster = cluster
        self._ssh = SSHSystem(cluster=cluster)  # for paths, URLs and descriptions only: it never connects here

    # identity() stays the local disk's: bytes here and on a LocalSystem are the same bytes, so a copy between the
    # two is a local copy, and onto-itself checks see them as one store.

    def normalize(self, path: str) -> str:
        path = str(path)
        if path.startswith(("ssh://", "sftp://")):
            path = self._ssh.normalize(path)
        if path.startswith(("/", "~")):
            return posixpath.normpath(path)
        return super().normalize(path)  # relative: from the current directory, like any local path

    def fs_path(self, path: str) -> str:
        return super().fs_path(self.normalize(path))

    def url(self, path: str) -> str:
        return self._ssh.url(self.normalize(path))

    def describe(self) -> str:
        return f"{self._ssh.describe()}, on its own disk"

    def block_fields(self) -> dict[str, Any]:
        return {"system": "ssh", "cluster": self.cluster}


def here() -> System:
    """The system for ``system="here"``: the cluster's own disk on a cluster's worker (when the Cluster block it
    runs on is saved), otherwise this machine's local disk (default paths under the current directory)."""
    cluster = _current_cluster()
    return ClusterDisk(cluster) if cluster is not None else LocalSystem()
