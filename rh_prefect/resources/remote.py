"""Copies that run on the cluster holding the data: which copies go to a cluster's worker, and what runs there.

``resource.to(system, path, via=...)`` asks :func:`route` first:

* ``via="local"``: copy through this process (returns None: the resource copies with ``copy_to``).
* ``via="worker"``: run the copy as a flow run of the package's transfer deployment on the work queue of the
  cluster holding the data, wait for it and return the new resource; if no worker is online for that queue,
  raise :class:`~rh_prefect.errors.SystemUnavailable` saying how to start one.
* ``via="auto"`` (default): like ``"worker"`` when the data is on a cluster with a ``work_queue`` and a worker
  is online for it; otherwise copy through this process, with a warning when a queue is set but unserved.

The worker side is :func:`copy_here`, which the transfer flows (:mod:`rh_prefect.flows.transfer`) call: on the cluster's own
worker it reads the data from the host's disk instead of over SSH to itself. Running the flow and waiting for it
is :mod:`rh_prefect.runtime.dispatch`, which knows nothing of resources; this module uses only the resources'
public methods (``destination``, ``relocated``, ``copy_to``, ``has_unwritten_data``, ``last_copy``, ``announce_copy``).

Example:
    ```python
    import rh_prefect as rh
    c = rh.cluster("rh-gpu")                    # work_queue="rh-gpu"; c.start_worker() was called once
    ckpt = rh.folder(name="bert-ckpt")          # lives on the cluster
    s3 = ckpt.to("s3", "/models/bert")          # a flow run on the rh-gpu worker; no bytes through here
    print(s3.flow_run.work_queue_name)          # 'rh-gpu'
    ```
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Optional, TypeVar

from rh_prefect.errors import SystemUnavailable, UnknownSystem
from rh_prefect.runtime import dispatch, events, stops, worker
from rh_prefect.systems import get_system
from rh_prefect.systems.base import stoppable

logger = logging.getLogger("rh_prefect.resources.remote")
R = TypeVar("R")

VIA = ("auto", "worker", "local")
#: the tag of the flow runs :func:`run_on_worker` dispatches
TAG = "rh-transfer"
#: A worker seen online this recently is taken to still be (see ``worker.is_online(reuse=...)``).
ONLINE_REUSE_SECONDS = 10.0
#: Name of every transfer deployment; the flow names are rh-copy-folder, rh-copy-blob, rh-copy-table.
DEPLOYMENT = "rh-transfer"
#: Where each transfer flow is defined: module paths inside this package, so a worker runs them from the wheel.
ENTRYPOINTS = {
    "rh-copy-folder": "rh_prefect.flows.transfer:copy_folder",
    "rh-copy-blob": "rh_prefect.flows.transfer:copy_blob",
    "rh-copy-table": "rh_prefect.flows.transfer_table:copy_table",
}


def flow_name(resource: Any) -> str:
    """The transfer flow for a resource type: ``rh-copy-folder`` for an rh Folder (block type ``rh-folder``)."""
    slug = type(resource).get_block_type_slug()
    return f"rh-copy-{slug.removeprefix('rh-')}"


def colocated_queue(resource: Any) -> Optional[str]:
    """The work queue of the worker that sits next to the resource's data (its cluster's), or None."""
    cluster = getattr(resource, "cluster", None)
    return getattr(cluster, "work_queue", None) if resource.system == "ssh" else None


def route(resource: R, system: Any, path: Optional[str] = None, *, via: str = "auto", **options: Any) -> Optional[R]:
    """Route ``resource.to(system, path)``: run it on the data's cluster worker and return the new resource,
    or return None when the caller should copy through its own process. See the module docstring."""
    if via not in VIA:
        raise UnknownSystem(f"via={via!r} is not one of {', '.join(VIA)}: 'worker' runs the copy on the worker "
                            "of the cluster holding the data, 'local' in this process, 'auto' picks.")
    if via == "local":
        return None
    queue = colocated_queue(resource)
    label = _label(resource)
    if queue is None:
        if via == "worker":
            raise SystemUnavailable(
                f"{label} is not on a cluster with a work_queue, so no worker can run this copy; use via='local' "
                "(or 'auto'), or keep the data on a Cluster whose work_queue a worker serves."
            )
        return None
    if resource.has_unwritten_data():
        return None  # data held in memory here (not yet written) is written from here, wherever it goes
    # One API client for the dozen API calls of a dispatch (checks, snapshots, the run, the wait, the clean-up).
    return dispatch.with_api_client(_to_worker, resource, system, path, via, queue, label, **options)


def _to_worker(resource: R, system: Any, path: Optional[str], via: str, queue: str, label: str,
               **options: Any) -> Optional[R]:
    cluster = resource.cluster
    pool = cluster.work_pool
    if dispatch.running_on(queue):
        return None  # this process already is a flow run on that worker: copy here
    if not worker.is_online(queue, pool, reuse=ONLINE_REUSE_SECONDS):
        hint = worker.start_hint(queue, pool, cluster.name)
        if via == "worker":
            raise SystemUnavailable(
                f"No Prefect worker is online for work queue {queue!r} (pool {pool!r}) of the cluster holding "
                f"{label}: {hint}. Or copy through this process with via='local'."
            )
        logger.warning("No Prefect worker is online for work queue %r of the cluster holding %s, so the copy "
                       "runs through this process; to copy on the cluster, %s.", queue, label, hint)
        return None
    try:
        return run_on_worker(resource, system, path, **options)
    except dispatch.NotPickedUp as exc:
        if via == "worker":
            raise
        logger.warning("%s Copying through this process instead.", exc)
        return None


def run_on_worker(resource: R, system: Any, path: Optional[str] = None, *,
                  pickup_timeout: Optional[float] = None, **options: Any) -> R:
    """Run the copy as a flow run of the transfer deployment on the cluster's work queue; wait; return the new
    resource (with the finished flow run as ``new.flow_run``)."""
    cluster = resource.cluster
    queue, pool = cluster.work_queue, cluster.work_pool
    dst_sys, dst_path = resource.destination(system, path)
    name = flow_name(resource)
    dispatch.ensure_deployment(name, DEPLOYMENT, ENTRYPOINTS[name], pool)
    job_variables = {"working_dir": cluster.project_dir} if cluster.project_dir else {}
    if cluster.python:
        # One interpreter start per run instead of two (Prefect's workspace supervisor, then the engine).
        job_variables["command"] = f"{cluster.python} -m prefect.engine"
    fields = dst_sys.block_fields()
    with dispatch.block_refs(background=True) as ref:  # the caller need not wait for the snapshots' deletion
        parameters = {"source": ref(resource), "system": fields["system"], "path": dst_path,
                      "cluster": ref(fields.get("cluster")), "credentials": ref(fields.get("credentials")), **options}
        finished = dispatch.run(
            f"{name}/{DEPLOYMENT}", parameters, queue=queue, pool=pool, label=_label(resource),
            job_variables=job_variables, tags=["rh-prefect", TAG], pickup_timeout=pickup_timeout,
            flow_run_name=f"{name}: {resource.url} -> {dst_sys.url(dst_path)}",
        )
    new = resource.relocated(dst_sys, dst_path)
    new._flow_run = finished
    # Announced here, not on the worker: there the source is an anonymous snapshot of the block, without its name.
    new.announce_copy(resource, flow_run=finished)
    logger.info("%s -> %s ran as flow run %s on work queue %r (worker %s)", resource.url, new.url, finished.name,
                queue, (finished.labels or {}).get("prefect.worker.name"))
    return new


def copy_here(source: Any, system: str, path: Optional[str] = None, cluster: Any = None, credentials: Any = None,
              **options: Any) -> Any:
    """The worker side of :func:`run_on_worker` (what the transfer flows call): copy ``source`` to ``path`` on
    ``system`` (``cluster`` for ssh, ``credentials`` for s3/gs) in this process; returns a summary.

    In a worker that runs copies in its own process (:mod:`rh_prefect.runtime.inprocess`), a cancelled run stops
    before its next file, and this returns a Cancelled state: the flow run ends Cancelled."""
    dst = get_system(cluster if cluster is not None else system, credentials=credentials)
    stop = stops.current()
    if stop is not None:
        dst = stoppable(dst, stop, "The flow run was cancelled.")
    reader = _colocated_view(source)
    # A run dispatched by run_on_worker is announced by the process that dispatched it, which knows the source's
    # name (here it is an anonymous snapshot); a run started by hand, or a direct call, announces itself.
    try:
        with events.suppressed() if _dispatched_run() else contextlib.nullcontext():
            new = reader.copy_to(dst, path, **options)
    except Exception as exc:
        if stop is None or not stop.is_set():
            raise
        from prefect.states import Cancelled as CancelledState

        dispatch.run_logger().info("stopped: the flow run was cancelled (%s: %s)", type(exc).__name__, exc)
        return CancelledState(message=f"Cancelled while copying {source.url}: stopped before its next file; files "
                                      "it committed stay, none is half-written.")
    out: dict[str, Any] = {"system": new.system, "path": new.path, "url": new.url,
                           "read_from": "local disk" if reader is not source else source.sys.describe()}
    report = new.last_copy
    if report is not None:
        out.update(files_copied=report.files_copied, files_skipped=report.files_skipped,
                   bytes_copied=report.bytes_copied)
    dispatch.run_logger().info("copied %s to %s (read from %s)", source.url, new.url, out["read_from"])
    return out


def _dispatched_run() -> bool:
    """True inside a flow run that :func:`run_on_worker` dispatched (it carries :data:`TAG`)."""
    from prefect.context import FlowRunContext

    run = getattr(FlowRunContext.get(), "flow_run", None)
    return run is not None and TAG in (run.tags or [])


def _colocated_view(source: Any) -> Any:
    """On the worker of the cluster holding ``source``, the same data read from this host's own disk (the
    worker runs as the cluster's login user, so ``~`` means the same home) instead of over SSH to itself."""
    if colocated_queue(source) is None or not worker.runs_on(source.sys):
        return source
    return source.from_cluster(source.cluster)  # on the cluster itself, from_cluster reads the local disk


# -- the transfer deployments ---------------------------------------------------------------------------------


def register_deployments(pool: str = worker.DEFAULT_POOL, only: Optional[list[str]] = None) -> list[str]:
    """Register the transfer flows (:data:`ENTRYPOINTS`) as deployments ``<flow>/rh-transfer`` on the process
    work pool ``pool``, as ``deployments/prefect.yaml`` declares them; ``.to()`` registers the one it needs by
    itself. Returns the deployment names."""
    wanted = {name: entry for name, entry in ENTRYPOINTS.items() if only is None or name in only}
    return dispatch.register_deployments(wanted, DEPLOYMENT, pool)


def _label(resource: Any) -> str:
    kind = type(resource).__name__
    return f"{kind} {resource.name!r}" if getattr(resource, "name", None) else f"{kind} at {resource.url}"


__all__ = ["DEPLOYMENT", "ENTRYPOINTS", "VIA", "colocated_queue", "copy_here", "flow_name", "register_deployments",
           "route", "run_on_worker"]
