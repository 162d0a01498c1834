"""Run a deployment's flow on a work queue and wait for it: the generic half of colocated execution.

This module knows nothing of Folder, Table or Blob. :mod:`rh_prefect.resources.remote` decides *whether* a copy
runs on a cluster's worker and builds its parameters; this module *runs* it:

* :func:`block_refs` - blocks reach the flow run by reference (``{"$ref": {"block_document_id": ...}}`` to an
  anonymous snapshot saved for the run and deleted afterwards), never by value: Prefect masks secret fields of
  blocks passed by value, so an SSH key or S3 secret would arrive as ``'**********'``;
* :func:`register_deployments` / :func:`ensure_deployment` - a flow's deployment on a process work pool;
* :func:`run` - create the flow run on a work queue, wait for its final state (woken by Prefect's event stream),
  cancel it if the caller stops waiting, and raise what it failed with as the same rh_prefect error type;
* :func:`running_on` - is this process already a flow run on that queue?

Example:
    ```python
    from rh_prefect.runtime import dispatch
    with dispatch.block_refs() as ref:
        run = dispatch.run("rh-copy-folder/rh-transfer", {"source": ref(folder), "system": "s3", "path": "/b/x"},
                           queue="rh-gpu", pool="rh-pool", label="folder 'ckpt'")
    print(run.state.name)   # 'Completed'
    ```
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Optional
from uuid import UUID

from rh_prefect import errors, settings
from rh_prefect.errors import SystemUnavailable, TransferError
from rh_prefect.runtime import _prefect_private, worker

logger = logging.getLogger("rh_prefect.runtime.dispatch")


class NotPickedUp(SystemUnavailable):
    """The flow run waited on its queue and the worker went offline; it was cancelled before it started."""


class WorkerLost(SystemUnavailable):
    """The worker running the flow run went offline; the run is left to the next worker of the queue."""


def run(deployment: str, parameters: dict[str, Any], *, queue: str, pool: str, label: str,
        job_variables: Optional[dict[str, Any]] = None, flow_run_name: Optional[str] = None,
        tags: Optional[list[str]] = None, pickup_timeout: Optional[float] = None) -> Any:
    """Run ``deployment`` ("flow/deployment") with ``parameters`` on work queue ``queue`` and wait for its end.

    Returns the finished flow run. A run that fails raises the rh_prefect error its message names (else
    :class:`TransferError`, naming the run and where its logs are); a run no worker picks up within
    ``pickup_timeout`` (``settings.pickup_timeout``) while the worker is offline is cancelled and raises
    :class:`NotPickedUp`; a running run whose worker has been offline that long raises :class:`WorkerLost` and is
    left for the queue's next worker. A run cancelled in Prefect raises :class:`~rh_prefect.errors.Cancelled`.
    Interrupted (Ctrl-C), the run is cancelled rather than left running unobserved. ``label`` names what runs, for
    messages ("folder 'ckpt'").
    """
    return with_api_client(_run, deployment, parameters, queue, pool, label, job_variables, flow_run_name, tags,
                           pickup_timeout)


def _run(deployment: str, parameters: dict[str, Any], queue: str, pool: str, label: str,
         job_variables: Optional[dict[str, Any]], flow_run_name: Optional[str], tags: Optional[list[str]],
         pickup_timeout: Optional[float]) -> Any:
    created = _create_run(deployment, parameters, queue, job_variables or None, tags,
                          flow_run_name[:200] if flow_run_name else None)
    try:
        return wait(created.id, queue, pool, label, pickup_timeout or settings.current().pickup_timeout)
    except WorkerLost:
        raise  # the run stays: the queue's next worker runs it again (rh_prefect.runtime.inprocess)
    except BaseException:
        _cancel(created.id)
        raise


def _create_run(deployment: str, parameters: dict[str, Any], queue: str, job_variables: Optional[dict[str, Any]],
                tags: Optional[list[str]], name: Optional[str]) -> Any:
    """The flow run, Scheduled now on ``queue``. Inside a flow or task run it is Prefect's ``run_deployment`` (which
    also links it as a subflow of the caller); elsewhere the run is created straight from the deployment's id
    known to this process, one request instead of two (``run_deployment`` reads the deployment first)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Scheduled

    key = (PREFECT_API_URL.value(), deployment)
    known = _DEPLOYMENT_IDS.get(key)
    if known is not None and FlowRunContext.get() is None and TaskRunContext.get() is None:
        try:
            return get_client(sync_client=True).create_flow_run_from_deployment(
                known, parameters=parameters, state=Scheduled(), name=name, tags=tags, work_queue_name=queue,
                job_variables=job_variables)
        except ObjectNotFound:  # deleted and registered again since: ask by name
            _DEPLOYMENT_IDS.pop(key, None)
    created = run_deployment(deployment, parameters=parameters, work_queue_name=queue, job_variables=job_variables,
                             timeout=0, tags=tags, flow_run_name=name)
    if created.deployment_id is not None:
        _DEPLOYMENT_IDS[key] = created.deployment_id
    return created


#: (API URL, "flow/deployment") -> the deployment's id, as this process last saw it
_DEPLOYMENT_IDS: dict[tuple[Any, str], Any] = {}


def with_api_client(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with one long-lived Prefect API client for every API call inside it (this process's own, kept
    between calls), rather than a new client per call: each new client costs ~0.08 s of CPU (its TLS context) and
    a version check request, and a dispatched copy makes a dozen calls."""
    return _prefect_private.with_shared_client(fn, *args, **kwargs)


def run_logger() -> Any:
    """The flow run's logger inside a flow run (its lines reach the UI), else this module's logger."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:  # called outside a flow run (a plain function call)
        return logger


# -- blocks by reference -------------------------------------------------------------------------------------


@contextlib.contextmanager
def block_refs(background: bool = False) -> Iterator[Callable[[Any], Optional[dict[str, Any]]]]:
    """Yields ``ref(block)``: the ``{"$ref": ...}`` parameter for ``block`` (None for None), valid until the
    ``with`` block ends, when the snapshots it saved are deleted (best effort). ``background``: deleted by a
    thread of their own, so the caller does not wait for it (the interpreter waits for it at exit).

    Snapshots are saved one after the other, and after the deletions of the previous ones ended (up to 0.5 s): a
    SQLite-backed Prefect server refuses concurrent writes ("database is locked", a 503 that Prefect's client tries
    again after a pause), and two saves at once took 2 s, not 0.1 s.
    """
    settle_cleanups(0.5)  # the last copy's deletions first (a few ms): they would compete with these saves
    created: list[tuple[UUID, set[str]]] = []
    try:
        yield lambda block: _ref(block, created)
    finally:
        if background and created:
            _delete_in_background(created)
        else:
            _delete_snapshots(created)


_CLEANUPS: list[threading.Thread] = []


def _delete_in_background(created: list[tuple[UUID, set[str]]]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.context import SyncClientContext

    client = get_client(sync_client=True) if SyncClientContext.get() is not None else None  # open and shared
    thread = threading.Thread(target=_delete_snapshots, args=(created, client), name="rh-delete-snapshots")
    thread.start()  # not a daemon: a program that ends now still deletes them first
    _CLEANUPS[:] = [t for t in _CLEANUPS if t.is_alive()] + [thread]


def settle_cleanups(timeout: float = 30.0) -> None:
    """Wait (at most ``timeout`` seconds in all) for the snapshot deletions still running in the background."""
    deadline = time.monotonic() + timeout
    for thread in list(_CLEANUPS):
        thread.join(max(0.0, deadline - time.monotonic()))


def _ref(block: Any, created: list[tuple[UUID, set[str]]]) -> Optional[dict[str, Any]]:
    """Save an anonymous snapshot of ``block`` (secrets included, on the server only) and return its $ref.

    ``created`` collects ``(snapshot id, ids of nested documents that existed before)`` for
    :func:`_delete_snapshots`: nested blocks that are already saved (a loaded Folder's Cluster) are referenced,
    not copied, and must outlive the run.
    """
    if block is None:
        return None
    snapshot = _prefect_private.detached_copy(block)
    existing = _prefect_private.document_ids(vars(snapshot).values())
    doc_id = _prefect_private.save_block(snapshot, anonymous=True)
    created.append((doc_id, existing))
    return {"$ref": {"block_document_id": str(doc_id)}}


def _delete_snapshots(created: list[tuple[UUID, set[str]]], client: Any = None) -> None:
    """Delete the run's snapshots and the anonymous nested documents that were saved along with them (with
    ``client``, an open sync client, or a new one). A request the server refuses for now (a 5xx: a SQLite server
    busy with other writers) is tried again, twice.

    Best effort: a failure here is logged, never raised over the copy's own outcome.
    """
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with contextlib.nullcontext(client) if client is not None else get_client(sync_client=True) as client:
        for doc_id, keep in created:
            try:
                doc = _again_if_refused(client.read_block_document, doc_id, include_secrets=False)
            except ObjectNotFound:  # already deleted: the outcome we want
                continue
            except httpx.HTTPError as exc:
                logger.warning("could not delete the run's block snapshot %s: %s", doc_id, exc)
                continue
            nested = [ref["block_document"] for ref in (doc.block_document_references or {}).values()]
            doomed = [doc_id, *(c["id"] for c in nested if c.get("is_anonymous") and str(c["id"]) not in keep)]
            for target in doomed:
                try:
                    _again_if_refused(client.delete_block_document, target)
                except ObjectNotFound:
                    continue
                except httpx.HTTPError as exc:
                    logger.warning("could not delete the run's block snapshot %s: %s", target, exc)


def _again_if_refused(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    import httpx

    for pause in (1.0, 3.0, None):
        try:
            return call(*args, **kwargs)
        except httpx.HTTPError:
            if pause is None:
                raise
            time.sleep(pause)


# -- deployments ----------------------------------------------------------------------------------------------


_KNOWN_DEPLOYMENTS: set[tuple[Optional[str], str]] = set()


def ensure_deployment(flow: str, deployment: str, entrypoint: str, pool: str = worker.DEFAULT_POOL) -> None:
    """Register ``flow/deployment`` (see :func:`register_deployments`) if the server does not have it yet. Asked
    once per process and API: a deployment deleted later makes its next run fail with a message saying so."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    key = (PREFECT_API_URL.value(), f"{flow}/{deployment}")
    if key in _KNOWN_DEPLOYMENTS:
        return
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(f"{flow}/{deployment}")
            _KNOWN_DEPLOYMENTS.add(key)
            return
        except ObjectNotFound:
            pass
    register_deployments({flow: entrypoint}, deployment, pool)
    _KNOWN_DEPLOYMENTS.add(key)


def register_deployments(entrypoints: dict[str, str], deployment: str, pool: str = worker.DEFAULT_POOL) -> list[str]:
    """Register each flow ``name -> "package.module:function"`` as the deployment ``<name>/<deployment>`` on the
    process work pool ``pool``. The entrypoints are module paths: a worker imports the flow from its installed
    package, so no source checkout or working directory is needed where it runs. Returns the deployment names."""
    from prefect.client.orchestration import get_client
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    worker.ensure_queue("default", pool)
    names = []
    with get_client(sync_client=True) as client:
        for name, entrypoint in entrypoints.items():
            flow = load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)
            flow_id = client.create_flow_from_name(flow.name)
            client.create_deployment(
                flow_id=flow_id,
                name=deployment,
                work_pool_name=pool,
                entrypoint=entrypoint,
                parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
                # A {"$ref": ...} parameter also matches the block's own (open) schema, so the server's strict
                # oneOf check would reject it; the flow validates its parameters itself.
                enforce_parameter_schema=False,
                # A pull step that does nothing: without any, Prefect 3.8 treats a "module:function" entrypoint as
                # code to download from the deployment's storage path (None) and the run crashes before it starts.
                pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": "."}}],
                description=flow.description,
                tags=["rh-prefect"],
            )
            names.append(f"{flow.name}/{deployment}")
    return names


def running_on(queue: str) -> bool:
    """True when this process is a flow run taken from work queue ``queue``."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx is not None and ctx.flow_run is not None and ctx.flow_run.work_queue_name == queue


# -- waiting for the flow run ---------------------------------------------------------------------------------


def wait(flow_run_id: UUID, queue: str, pool: str, label: str, pickup_timeout: Optional[float] = None) -> Any:
    """Wait for the flow run to reach a final state; return it, or raise what it failed with (see :func:`run`).

    Woken by the run's state events (Prefect's event stream); its state is also read every
    ``settings.state_check_seconds``. A run still scheduled after ``pickup_timeout`` (``settings.pickup_timeout``)
    whose queue has no worker online is cancelled: :class:`NotPickedUp`."""
    return with_api_client(_wait, flow_run_id, queue, pool, label, pickup_timeout)


def _wait(flow_run_id: UUID, queue: str, pool: str, label: str, pickup_timeout: Optional[float]) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    timeout = pickup_timeout or settings.current().pickup_timeout
    client = get_client(sync_client=True)  # the client with_api_client made active: open, and kept open
    run = run_coro_as_sync(_await_final(client, flow_run_id, queue, pool, label, timeout))
    if not run.state.is_completed():
        raise _remote_error(run, queue, label)
    return run


async def _await_final(client: Any, flow_run_id: UUID, queue: str, pool: str, label: str,
                       pickup_timeout: float) -> Any:
    import anyio

    began = time.monotonic()
    async with _state_changes(flow_run_id) as changed:
        while True:
            # Read with the caller's (thread-safe, already open) sync client on a thread: an async client of its
            # own would cost a new connection and TLS context per copy.
            run = await anyio.to_thread.run_sync(client.read_flow_run, flow_run_id)
            state = run.state
            if state is not None and state.is_final():
                return run
            waiting = state is None or state.is_scheduled()
            if time.monotonic() - began > pickup_timeout:
                if not await anyio.to_thread.run_sync(worker.is_online, queue, pool):
                    if waiting:
                        await anyio.to_thread.run_sync(_cancel, flow_run_id)
                        raise NotPickedUp(
                            f"The copy of {label} waited {pickup_timeout:.0f} s on work queue {queue!r} and its "
                            f"worker went offline; nothing was copied. To retry: {worker.start_hint(queue, pool)}."
                        )
                    raise WorkerLost(
                        f"The worker of work queue {queue!r} went offline while it ran the copy of {label} (flow run "
                        f"{run.name!r}, {state.name}); what it committed stays and nothing is half-written. The run "
                        f"runs again, skipping what was copied, when a worker for the queue starts: "
                        f"{worker.start_hint(queue, pool)}; or copy again."
                    )
                began = time.monotonic()  # the worker is alive (and busy): keep waiting
            # The run's state is read at least every settings.state_check_seconds; its state-change events (Prefect's
            # event stream) wake the wait as soon as they happen. Without the stream it polls every 0.25-1 s.
            check = settings.current().state_check_seconds
            await changed(max(0.05, min(check, pickup_timeout - (time.monotonic() - began))))


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
    if run.state.is_cancelled():
        return errors.Cancelled(f"Copying {label} on the cluster's worker was cancelled: {message}{where}")
    found = _EXC.search(message)
    if found:
        klass = getattr(errors, found.group(1), None)
        if isinstance(klass, type) and issubclass(klass, errors.RhError) and klass is not TransferError:
            return klass(found.group(2).strip() + where)
    return TransferError(f"Copying {label} on the cluster's worker ended {run.state.name}: {message}{where}")



__all__ = ["NotPickedUp", "WorkerLost", "block_refs", "ensure_deployment", "register_deployments", "run", "run_logger",
           "running_on", "settle_cleanups", "wait", "with_api_client"]
