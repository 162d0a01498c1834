"""The Cluster block: a named SSH host that stores data and can run a Prefect worker for copies of its data.

Its connection fields come from :class:`rh_prefect.systems.ssh.SSHSettings` (the systems floor: how to reach and
trust the host); this block adds the name (saved in the Prefect registry) and the worker settings, and hands the
worker's start, stop and status to :mod:`rh_prefect.runtime.worker`.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from pydantic import Field, ValidationError

from rh_prefect import names
from rh_prefect.errors import CredentialsError, InvalidArgument, InvalidName, NotFound, SystemUnavailable
from rh_prefect.runtime import registry, worker
from rh_prefect.systems.here import set_current_cluster
from rh_prefect.runtime.registry import Resource
from rh_prefect.systems.ssh import DEFAULT_ROOT, SSHSettings, SSHSystem


class Cluster(Resource, SSHSettings):
    """A compute host reached over SSH: where a Folder, Table or Blob can live, and where a worker can run.

    Host keys are always verified: from ``known_hosts`` (a file, default ``~/.ssh/known_hosts``) or a pinned
    ``host_key``. ``verify_host_key=False`` is an explicit, unsafe opt-out for throwaway hosts only.

    Example:
        ```python
        import rh_prefect as rh
        c = rh.cluster(name="rh-cpu", host="10.0.0.5", user="ubuntu", ssh_key="~/.ssh/id_ed25519").save()
        c = rh.cluster("rh-cpu").up_if_not()
        rh.folder(name="my-folder").to(system=c)
        ```
    """

    _block_type_name = "rh Cluster"
    _description = "An SSH host (a compute cluster) that stores data and can run a Prefect worker."

    # The SSH fields (host ... default_root) come first, from SSHSettings; then the worker that runs copies of this
    # cluster's data on the cluster (see rh_prefect.runtime.worker).
    work_queue: Optional[str] = Field(
        default=None,
        title="Work queue",
        description="Prefect work queue served by a worker on this host; copies from here run there.",
    )
    work_pool: str = Field(
        default=worker.DEFAULT_POOL, title="Work pool", description="Prefect process work pool holding the work queue."
    )
    prefect_bin: str = Field(
        default="prefect",
        title="prefect executable",
        description="The prefect command on the cluster, e.g. /opt/venv/bin/prefect (its Python runs the copies).",
    )
    python: Optional[str] = Field(
        default=None,
        title="Python",
        description="The Python of that installation; set it to start each flow run as one process instead of two.",
    )
    project_dir: Optional[str] = Field(
        default=None,
        title="Working directory",
        description="Optional: where the worker and its flow runs start on the cluster (default: the login home). "
        "The transfer flows come from the installed rh-prefect package; no checkout is needed.",
    )
    api_url: Optional[str] = Field(
        default=None,
        title="Prefect API URL",
        description="The Prefect API as the cluster reaches it; empty: the API URL of whoever starts the worker.",
    )

    def up_if_not(self) -> "Cluster":
        """Check the cluster answers over SSH (port and login) and return it; raise a clear error otherwise."""
        if not self.is_up():
            raise SystemUnavailable(
                f"Cluster {self.name or self.host} at {self.host}:{self.port} does not answer on its SSH port; "
                "start the host (or its sshd) and check host/port."
            )
        SSHSystem(cluster=self).fs  # logs in: surfaces auth and host-key problems now, not mid-copy
        return self

    def system(self) -> "SSHSystem":
        return SSHSystem(cluster=self)

    # -- the worker on the cluster: rh_prefect.runtime.worker does the work -----------------------------
    def start_worker(self, *, api_url: Optional[str] = None, env: Optional[dict[str, str]] = None,
                     wait: bool = True, timeout: float = 60.0) -> Any:
        """Start (or find) the Prefect worker for this cluster's work_queue on the host, over SSH; returns a
        :class:`rh_prefect.runtime.worker.WorkerInfo`. See :func:`rh_prefect.runtime.worker.start`."""
        return worker.start(self, api_url=api_url, env=env, wait=wait, timeout=timeout)

    def stop_worker(self, timeout: float = 5.0) -> bool:
        """Stop the worker started by :meth:`start_worker`; True if one was running."""
        return worker.stop(self, timeout=timeout)

    def worker_online(self) -> bool:
        """True when a Prefect worker is serving this cluster's work_queue (per the Prefect API)."""
        return worker.online(self)

def cluster(
    name: Optional[str] = None,
    host: Optional[str] = None,
    *,
    port: int = 22,
    user: Optional[str] = None,
    ssh_key: Optional[str] = None,
    known_hosts: Optional[str] = None,
    host_key: Optional[str] = None,
    verify_host_key: bool = True,
    work_queue: Optional[str] = None,
    default_root: str = DEFAULT_ROOT,
    **worker_fields: Any,
) -> Cluster:
    """Load a saved Cluster by name (``rh.cluster("rh-cpu")``), or describe one by host.

    ``ssh_key`` is a path to a private key or the key itself; it is stored as a secret when saved.
    ``worker_fields``: ``work_pool``, ``prefect_bin``, ``project_dir``, ``api_url`` (see :meth:`Cluster.start_worker`).
    Runhouse's built-in names (``rh.cluster("^rh-cpu")``) are the clusters saved under the name after the ``^``.
    """
    name = _without_builtin_mark(name)
    if host is None:
        if name is None:
            raise CredentialsError("rh.cluster() needs a name of a saved cluster or a host.")
        return _load_saved(name)
    try:
        c = Cluster(
            host=host, port=port, user=user, ssh_key=ssh_key, known_hosts=known_hosts, host_key=host_key,
            verify_host_key=verify_host_key, work_queue=work_queue, default_root=default_root, **worker_fields,
        )
    except ValidationError as exc:
        # Only field names and messages: pydantic's own text repeats the input, which may hold the ssh_key.
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'cluster'}: {e['msg'].removeprefix('Value error, ').rstrip('.')}"
            for e in exc.errors()
        )
        raise InvalidArgument(f"rh.cluster() got an unusable argument ({problems}). Example: "
                              "rh.cluster(name='rh-cpu', host='10.0.0.5', port=22, user='ubuntu').") from None
    c._set_name(name)
    return c


def _without_builtin_mark(name: Optional[str]) -> Optional[str]:
    """Runhouse marks its built-in clusters with ``^`` (``"^rh-cpu"``). Here every cluster is one the user saved,
    so the mark is accepted and dropped: code written for Runhouse finds the cluster saved under that name."""
    if not isinstance(name, str) or not name.startswith("^"):
        return name
    if not name[1:]:
        raise InvalidName("rh.cluster('^') names no cluster: after the '^' comes the name of a saved cluster, "
                          "e.g. rh.cluster('^rh-cpu').")
    return name[1:]


def _load_saved(name: str) -> Cluster:
    """The Cluster saved as ``name``; NotFound saying how to save one when there is none."""
    if not registry.exists(name):
        raise NotFound(
            f"No cluster named {name!r} is saved on the Prefect server. Save one once with "
            f"rh.cluster(name={name!r}, host='10.0.0.5', user='ubuntu', ssh_key='~/.ssh/id_ed25519').save() "
            "(your host, user and key), then rh.cluster(name) loads it anywhere."
        )
    return Cluster._load_named(name)


def current() -> Optional[Cluster]:
    """The saved Cluster this process runs on - it is that cluster's Prefect worker (or a flow run it started) -
    or None: the Cluster named in the worker's environment (``start_worker()`` puts it there), else the first saved
    Cluster by name whose host, port and user are the worker's.

    Example:
        >>> from rh_prefect.resources.cluster import current
        >>> current()            # None on a laptop; in a flow run on rh-cpu's worker, the Cluster 'rh-cpu'
    """
    if not os.environ.get(worker.COLOCATED_ENV):
        return None  # not a worker: no registry requests
    named = os.environ.get(worker.COLOCATED_NAME_ENV)
    if named and registry.exists(named):
        found = registry.load(named)
        if isinstance(found, Cluster) and worker.runs_on(found.system()):
            return found
    for full, kind in registry.list_names():
        if kind == Cluster.__name__:
            found = registry.load(names.display(full))  # as the user names it: "rh-cpu", not "@/rh-cpu"
            if worker.runs_on(found.system()):
                return found  # type: ignore[return-value]
    return None


# system="here" on a cluster's worker is that cluster's disk: the systems floor asks this floor which cluster.
set_current_cluster(current)

__all__ = ["Cluster", "cluster", "current"]
