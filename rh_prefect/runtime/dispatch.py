"""Colocated execution: run a copy of cluster-resident data on that cluster's own Prefect worker.

``resource.to(system, path, via=...)`` asks :func:`remote_to` first:

* ``via="local"``: copy through this process (returns None: the caller copies).
* ``via="worker"``: run the copy as a flow run of the package's transfer deployment on the work queue of the
  cluster holding the data, wait for it and return the new resource; if no worker is online for that queue,
  raise :class:`~rh_prefect.errors.SystemUnavailable` saying how to start one.
* ``via="auto"`` (default): like ``"worker"`` when the data is on a cluster with a ``work_queue`` and a worker
  is online for it; otherwise copy through this process, with a warning when a queue is set but unserved.

Blocks reach the flow run by reference (``{"$ref": {"block_document_id": ...}}`` to an anonymous snapshot
saved for the run and deleted afterwards), never by value: Prefect masks secret fields of blocks passed by
value, so an SSH key or S3 secret would arrive as ``'**********'``.

Any resource works that has ``.sys`` (a System), ``.cluster``, ``_destination(system, path)`` and
``.to(system, path, via="local")``, and is a Prefect block: Folder, Blob, Table.

Example:
    ```python
    import rh_prefect as rh
    c = rh.cluster("rh-gpu")                    # work_queue="rh-gpu"; c.start_worker() was called once
    ckpt = rh.folder(name="bert-ckpt")          # lives on the cluster
    s3 = ckpt.to("s3", "/models/bert")          # a flow run on the rh-gpu worker; no bytes through here
    print(s3.flow_run.work_queue_name)         # 'rh-gpu'
    ```
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, TypeVar
from uuid import UUID

from rh_prefect import errors

from rh_prefect.runtime import worker
from rh_prefect.errors import NotFound, SystemUnavailable, TransferError, UnknownSystem
from rh_prefect.systems.here import WORKER_CLUSTER_ENV, worker_identity

logger = logging.getLogger("rh_prefect.runtime.dispatch")
R = TypeVar("R")

VIA = ("auto", "worker", "local")
#: Name of every transfer deployment; the flow names are rh-copy-folder, rh-copy-blob, rh-copy-table.
DEPLOYMENT = "rh-transfer"
#: Where each transfer flow is defined, relative to the project directory (the working directory of flow runs).
ENTRYPOINTS = {
    "rh-copy-folder": "flows/transfer.py:copy_folder",
    "rh-copy-blob": "flows/transfer.py:copy_blob",
    "rh-copy-table": "flows/transfer_table.py:copy_table",
}
#: How long a flow run may wait for a worker to pick it up before we check the worker is still there.
PICKUP_TIMEOUT = 60.0


def flow_name(resource: Any) -> str:
    """The transfer flow for a resource type: ``rh-copy-folder`` for an rh Folder (block type ``rh-folder``)."""
    slug = type(resource).get_block_type_slug()
    return f"rh-copy-{slug.removeprefix('rh-')}"


def colocated_queue(resource: Any) -> Optional[str]:
    """The work queue of the worker that sits next to the resource's data (its cluster's), or None."""
    return resource.sys.work_queue()


def remote_to(resource: R, system: Any, path: Optional[str] = None, *, via: str = "auto",
              **options: Any) -> Optional[R]:
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
    if getattr(resource, "_has_data", False) or getattr(resource, "_data", None) is not None:
        return None  # data held in memory here (not yet written) is written from here, wherever it goes
    cluster = resource.sys.cluster
    pool = cluster.work_pool
    if _running_on(queue):
        return None  # this process already is a flow run on that worker: copy here
    if not worker.is_online(queue, pool):
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
    except NotPickedUp as exc:
        if via == "worker":
            raise
        logger.warning("%s Copying through this process instead.", exc)
        return None


class NotPickedUp(SystemUnavailable):
    """The flow run waited on its queue and the worker went offline; it was cancelled before copying anything."""


def run_on_worker(resource: R, system: Any, path: Optional[str] = None, *,
                  pickup_timeout: Optional[float] = None, **options: Any) -> R:
    """Run the copy as a flow run of the transfer deployment on the cluster's work queue; wait; return the new
    resource (with the finished flow run as ``new.flow_run``)."""
    from prefect.deployments import run_deployment

    cluster = resource.sys.cluster
    queue, pool = cluster.work_queue, cluster.work_pool
    dst_sys, dst_path = resource._destination(system, path)
    name = flow_name(resource)
    ensure_deployment(name, pool)
    created: list[tuple[UUID, set[str]]] = []
    try:
        fields = dst_sys.block_fields()
        parameters = {
            "source": _ref(resource, created),
            "system": fields["system"],
            "path": dst_path,
            "cluster": _ref(fields.get("cluster"), created),
            "credentials": _ref(fields.get("credentials"), created),
            **options,
        }
        job_variables = {"working_dir": cluster.project_dir} if cluster.project_dir else {}
        if cluster.python:
            # One interpreter start per run instead of two (Prefect's workspace supervisor, then the engine).
            job_variables["command"] = f"{cluster.python} -m prefect.engine"
        run = run_deployment(
            f"{name}/{DEPLOYMENT}", parameters=parameters, work_queue_name=queue, job_variables=job_variables or None,
            timeout=0, tags=["rh-prefect", "rh-transfer"],
            flow_run_name=f"{name}: {resource.url} -> {dst_sys.url(dst_path)}"[:200],
        )
        try:
            finished = _wait(run.id, queue, pool, _label(resource), pickup_timeout or PICKUP_TIMEOUT)
        except BaseException:
            _cancel(run.id)  # interrupted (Ctrl-C) or gave up: do not leave the copy running unobserved
            raise
    finally:
        _delete_snapshots(created)
    new = resource.model_copy(deep=False)
    new._relocate(dst_sys, dst_path)
    new._block_document_id = None
    new._block_document_name = None
    new._rh_name = resource._rh_name
    new._flow_run = finished
    logger.info("%s -> %s ran as flow run %s on work queue %r (worker %s)", resource.url, new.url, finished.name,
                queue, (finished.labels or {}).get("prefect.worker.name"))
    return new


def copy_here(source: Any, system: str, path: Optional[str] = None, cluster: Any = None, credentials: Any = None,
              **options: Any) -> dict[str, Any]:
    """The worker side of :func:`run_on_worker` (what the transfer flows call): copy ``source`` to ``path`` on
    ``system`` (``cluster`` for ssh, ``credentials`` for s3/gs) in this process; returns a summary."""
    from rh_prefect.systems import get_system

    dst = get_system(cluster if cluster is not None else system, credentials=credentials)
    reader = _colocated_view(source)
    new = reader.to(dst, path, via="local", **options)
    out: dict[str, Any] = {"system": new.system, "path": new.path, "url": new.url,
                           "read_from": "local disk" if reader is not source else source.sys.describe()}
    report = getattr(new, "_last_report", None)
    if report is not None:
        out.update(files_copied=report.files_copied, files_skipped=report.files_skipped,
                   bytes_copied=report.bytes_copied)
    _run_logger().info("copied %s to %s (read from %s)", source.url, new.url, out["read_from"])
    return out


#: Set by :func:`rh_prefect.runtime.worker.start` in the worker's environment: the identity of the cluster it runs on.
#: Defined with the systems (``system="here"`` and ``from_cluster`` read it too).
COLOCATED_ENV = WORKER_CLUSTER_ENV
colocated_identity = worker_identity


def _colocated_view(source: Any) -> Any:
    """On the worker of the cluster holding ``source``, the same data read from this host's own disk (the
    worker runs as the cluster's login user, so ``~`` means the same home) instead of over SSH to itself."""
    import os

    from rh_prefect.systems import LocalSystem

    here = os.environ.get(COLOCATED_ENV)
    if not here or source.sys.work_queue() is None or colocated_identity(source.sys) != here:
        return source
    local = LocalSystem()
    view = source.model_copy(deep=False)
    view._relocate(local, local.normalize(os.path.expanduser(source.path)))
    return view


def _run_logger() -> Any:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:  # called outside a flow run (a plain function call): the module logger
        return logger


# -- blocks by reference -------------------------------------------------------------------------------------


def _ref(block: Any, created: list[tuple[UUID, set[str]]]) -> Optional[dict[str, Any]]:
    """Save an anonymous snapshot of ``block`` (secrets included, on the server only) and return its $ref.

    ``created`` collects ``(snapshot id, ids of nested documents that existed before)`` for
    :func:`_delete_snapshots`: nested blocks that are already saved (a loaded Folder's Cluster) are referenced,
    not copied, and must outlive the run.
    """
    if block is None:
        return None
    snapshot = block.model_copy(deep=True)
    snapshot._block_document_id = None
    snapshot._block_document_name = None
    existing = {str(v._block_document_id) for v in vars(snapshot).values()
                if getattr(v, "_block_document_id", None) is not None}
    doc_id = snapshot._save_sync(is_anonymous=True)
    created.append((doc_id, existing))
    return {"$ref": {"block_document_id": str(doc_id)}}


def _delete_snapshots(created: list[tuple[UUID, set[str]]]) -> None:
    """Delete the run's snapshots and the anonymous nested documents that were saved along with them.

    Best effort: a failure here is logged, never raised over the copy's own outcome.
    """
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for doc_id, keep in created:
            try:
                doc = client.read_block_document(doc_id, include_secrets=False)
                nested = [ref["block_document"] for ref in (doc.block_document_references or {}).values()]
                client.delete_block_document(doc_id)
                for child in nested:
                    if child.get("is_anonymous") and str(child["id"]) not in keep:
                        client.delete_block_document(child["id"])
            except ObjectNotFound:  # already deleted: the outcome we want
                continue
            except httpx.HTTPError as exc:
                logger.warning("could not delete the run's block snapshot %s: %s", doc_id, exc)


# -- deployments ----------------------------------------------------------------------------------------------


def project_dir() -> Optional[str]:
    """The project checkout this package runs from (holding flows/transfer.py), or None (installed wheel)."""
    root = Path(__file__).resolve().parents[1]
    return str(root) if (root / ENTRYPOINTS["rh-copy-folder"].split(":")[0]).is_file() else None


def ensure_deployment(name: str, pool: str = worker.DEFAULT_POOL) -> None:
    """Register the transfer deployment ``name/rh-transfer`` if the server does not have it yet."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(f"{name}/{DEPLOYMENT}")
            return
        except ObjectNotFound:
            pass
    root = project_dir()
    if root is None:
        raise NotFound(
            f"The transfer deployment {name}/{DEPLOYMENT} is not registered on the Prefect server. From a checkout "
            "of the rh-prefect project run `prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml`"
            " (or rh_prefect.runtime.dispatch.register_deployments())."
        )
    register_deployments(root, pool, only=[name])


def register_deployments(project: Optional[str] = None, pool: str = worker.DEFAULT_POOL,
                         only: Optional[list[str]] = None) -> list[str]:
    """Register the transfer flows of ``project/flows/`` (:data:`ENTRYPOINTS`) as deployments
    ``<flow>/rh-transfer`` on the process pool ``pool``, as ``deployments/prefect.yaml`` declares them. Flow
    runs start in ``project``; a cluster whose checkout lives elsewhere sets ``Cluster.project_dir``.
    Returns the deployment names."""
    from prefect.client.orchestration import get_client
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    root = project or project_dir()
    if root is None:
        raise NotFound("No project directory with flows/transfer.py; pass project='/path/to/rh-prefect'.")
    worker.ensure_queue("default", pool)
    names = []
    with get_client(sync_client=True) as client:
        for name, entrypoint in ENTRYPOINTS.items():
            if only is not None and name not in only:
                continue
            flow = load_flow_from_entrypoint(f"{root}/{entrypoint}", use_placeholder_flow=False)
            flow_id = client.create_flow_from_name(flow.name)
            client.create_deployment(
                flow_id=flow_id,
                name=DEPLOYMENT,
                work_pool_name=pool,
                entrypoint=entrypoint,
                pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": "."}}],
                job_variables={"working_dir": str(root)},
                parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
                # A {"$ref": ...} parameter also matches the block's own (open) schema, so the server's strict
                # oneOf check would reject it; the flow validates its parameters itself.
                enforce_parameter_schema=False,
                description=flow.description,
                tags=["rh-prefect"],
            )
            names.append(f"{flow.name}/{DEPLOYMENT}")
    return names


# -- waiting for the flow run ---------------------------------------------------------------------------------


def _running_on(queue: str) -> bool:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx is not None and ctx.flow_run is not None and ctx.flow_run.work_queue_name == queue


#: While a flow run is awaited its state is read at least this often; its state-change events (Prefect's event
#: stream) wake the wait as soon as they happen. Without the stream the wait polls, every 0.25 s rising to 1 s.
STATE_CHECK_SECONDS = 2.0


def _wait(flow_run_id: UUID, queue: str, pool: str, label: str, pickup_timeout: float) -> Any:
    """Wait for the flow run to reach a final state; return it, or raise what it failed with."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    run = run_coro_as_sync(_await_final(flow_run_id, queue, pool, label, pickup_timeout))
    if not run.state.is_completed():
        raise _remote_error(run, queue, label)
    return run


async def _await_final(flow_run_id: UUID, queue: str, pool: str, label: str, pickup_timeout: float) -> Any:
    import anyio
    from prefect.client.orchestration import get_client

    began = time.monotonic()
    async with get_client() as client, _state_changes(flow_run_id) as changed:
        while True:
            run = await client.read_flow_run(flow_run_id)
            state = run.state
            if state is not None and state.is_final():
                return run
            waiting = state is None or state.is_scheduled()
            if waiting and time.monotonic() - began > pickup_timeout:
                if not await anyio.to_thread.run_sync(worker.is_online, queue, pool):
                    await anyio.to_thread.run_sync(_cancel, flow_run_id)
                    raise NotPickedUp(
                        f"The copy of {label} waited {pickup_timeout:.0f} s on work queue {queue!r} and its worker "
                        f"went offline; nothing was copied. To retry: {worker.start_hint(queue, pool)}."
                    )
                began = time.monotonic()  # the worker is alive but busy: keep waiting
            await changed(max(0.05, min(STATE_CHECK_SECONDS, pickup_timeout - (time.monotonic() - began))))


@contextlib.asynccontextmanager
async def _state_changes(flow_run_id: UUID) -> AsyncIterator[Callable[[float], Awaitable[None]]]:
    """Yields ``changed(timeout)``: returns when the flow run emits an event (a state change) or after
    ``timeout`` seconds. Events come from Prefect's event stream (a websocket to the API); when it cannot be
    opened, or drops for good, ``changed`` sleeps a short, growing interval instead, as plain polling would."""
    import asyncio

    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    wake = asyncio.Event()
    poll = [0.25]
    ended = asyncio.Event()

    async def polling(timeout: float) -> None:
        await asyncio.sleep(min(timeout, poll[0]))
        poll[0] = min(poll[0] * 1.5, 1.0)

    async def pump(subscriber: Any) -> None:
        try:
            async for _ in subscriber:
                wake.set()
        except Exception as exc:  # the stream gave up reconnecting: the wait goes on by polling
            logger.debug("flow run events stopped (%s); polling its state instead", exc)
        finally:
            ended.set()

    # An event can arrive before the state it announces is visible to reads: after one, look again soon
    # (0.1, 0.2, ... 1.6 s) rather than only at the next event or check.
    soon = [0.0]

    async def changed(timeout: float) -> None:
        if ended.is_set():
            return await polling(timeout)
        if soon[0]:
            timeout = min(timeout, soon[0])
            soon[0] = soon[0] * 2 if soon[0] < 1.6 else 0.0
        try:
            await asyncio.wait_for(wake.wait(), timeout)
            soon[0] = 0.1
        except asyncio.TimeoutError:
            pass
        wake.clear()

    event_filter = EventFilter(event=EventNameFilter(prefix=["prefect.flow-run."]),
                               resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]))
    try:
        subscriber = get_events_subscriber(filter=event_filter, reconnection_attempts=2)
        await subscriber.__aenter__()
    except Exception as exc:  # no event stream here (a proxy without websockets, say): poll
        logger.debug("no flow run events (%s); polling its state instead", exc)
        yield polling
        return
    task = asyncio.ensure_future(pump(subscriber))
    try:
        yield changed
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        with contextlib.suppress(Exception):
            await subscriber.__aexit__(None, None, None)


def _cancel(flow_run_id: UUID) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
        if state is not None and not state.is_final():
            client.set_flow_run_state(flow_run_id, Cancelled(message="the caller stopped waiting"), force=True)


_EXC = re.compile(r"(?:exception|error):\s*([A-Za-z_][A-Za-z0-9_]*):\s*(.*)", re.S)


def _remote_error(run: Any, queue: str, label: str) -> Exception:
    """The error a failed flow run stands for: the same rh_prefect error type when the message names one."""
    message = (run.state.message or run.state.name or "").strip()
    where = f" (flow run {run.name!r} on work queue {queue!r}; its logs are in the Prefect UI)"
    found = _EXC.search(message)
    if found:
        klass = getattr(errors, found.group(1), None)
        if isinstance(klass, type) and issubclass(klass, errors.RhError) and klass is not TransferError:
            return klass(found.group(2).strip() + where)
    return TransferError(f"Copying {label} on the cluster's worker ended {run.state.name}: {message}{where}")


def _label(resource: Any) -> str:
    kind = type(resource).__name__
    return f"{kind} {resource.name!r}" if getattr(resource, "name", None) else f"{kind} at {resource.url}"


__all__ = ["DEPLOYMENT", "VIA", "NotPickedUp", "colocated_queue", "copy_here", "ensure_deployment", "flow_name",
           "project_dir", "register_deployments", "remote_to", "run_on_worker"]
