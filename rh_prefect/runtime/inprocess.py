"""The cluster's long-lived worker: a Prefect worker type that runs rh-prefect's copies in its own process.

Prefect's process worker polls its queue and starts a new Python process per flow run: for a copy sent to a
cluster (``folder.to(s3, via="worker")``) that was ~1.5 s of interpreter, imports and API reads before the first
byte, plus up to a poll interval of waiting. :class:`InProcessWorker` (worker type ``rh-inprocess``) removes both:

* **woken by the server**: besides its poll it subscribes to the Prefect server's event stream (a websocket) for
  flow runs of its pool that become Scheduled (or AwaitingRetry) and fetches its queue's runs at once;
* **runs copies in-process**: a flow run whose deployment entrypoint is one of the package's own flows
  (``rh_prefect.flows.*``, e.g. ``rh_prefect.flows.transfer:copy_folder``) runs on a thread of the worker, through
  Prefect's flow engine (:func:`prefect.flow_engine.run_flow`): the run has its states, logs, task runs, retries
  and artifacts in the UI as before, and the worker's imports, API client and event stream are already warm. Any
  other flow run (a flow of your own deployed to the same pool) runs as a subprocess, exactly as Prefect's process
  worker runs it (this class *is* a process worker for those).

What keeps the long-lived process healthy:

* a copy that fails fails its own flow run; nothing is raised in the worker;
* **cancelling** a flow run from Prefect (UI, ``prefect flow-run cancel``) sets the run's stop signal
  (:mod:`rh_prefect.runtime.stops`): its copy refuses to start another file and ends, the run ends Cancelled;
  files in flight finish or are discarded, and every write commits atomically, so no file is half-written;
* **killing** the worker mid-copy (a crash, SIGKILL, a reboot) leaves no half-written file either (same atomic
  commits); the next worker for the queue (``start_worker()`` restarts it by itself) finds the runs the dead one
  was running - Running under its name, with a process id that is gone - and puts them back in the queue
  (AwaitingRetry), where they run again and skip what was already copied. A run that kept its worker from
  surviving :data:`MAX_RESTARTS` times is marked Crashed instead.

Start one with ``rh.cluster("rh-gpu").start_worker()`` / ``rh-prefect worker start --cluster rh-gpu``, or by hand::

    prefect worker start --pool rh-pool --work-queue rh-gpu --type rh-inprocess

The type is registered with Prefect through the package's ``prefect.collections`` entry point (``rh_prefect.blocks``
imports this module), so any ``prefect`` with rh-prefect installed knows it. ``RH_PREFECT_WORKER_IN_PROCESS=false``
in the worker's environment runs every flow run as a subprocess instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import logging
import os
import threading
import time
from typing import Any, Optional

from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from rh_prefect import settings
from rh_prefect.runtime import _prefect_private, stops
from rh_prefect.runtime.worker import WORKER_TYPE

logger = logging.getLogger("rh_prefect.runtime.inprocess")

#: The worker type: ``prefect worker start --type rh-inprocess``; also the type of the pools rh-prefect creates.
TYPE = WORKER_TYPE
#: Flow runs of deployments whose entrypoint starts with this run inside the worker process.
IN_PROCESS_PREFIX = "rh_prefect.flows."
#: A run whose worker died this many times while running it is marked Crashed rather than run again.
MAX_RESTARTS = 3
#: While runs are in flight their states are also read this often, should the event stream miss a cancellation.
CANCEL_CHECK_SECONDS = 5.0
#: A deployment's entrypoint is read again after this many seconds (re-deployed under the same id).
ENTRYPOINT_TTL = 300.0
#: Event names that wake the worker (a run of its pool to pick up) or stop one of its runs.
WAKE_EVENTS = ("prefect.flow-run.Scheduled", "prefect.flow-run.AwaitingRetry")
CANCEL_EVENT = "prefect.flow-run.Cancelling"


class InProcessWorker(ProcessWorker):
    """A Prefect worker that runs rh-prefect's transfer flows on threads of its own long-lived process, woken by
    the server's events; other flow runs run as subprocesses (see the module docstring)."""

    type = TYPE
    _description = ("Runs rh-prefect's copies (deployments of rh_prefect.flows) in its own long-lived process, "
                    "woken by the server's events; other flow runs as subprocesses, as the process worker does.")
    _display_name = "rh-prefect in-process"

    def __init__(self, work_pool_name: str, work_queues: Optional[list[str]] = None, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(work_pool_name, work_queues, *args, **kwargs)
        self._pool_name = work_pool_name
        self._queues = list(work_queues or [])
        self._in_flight: dict[str, threading.Thread] = {}
        self._taking: set[str] = set()
        self._flows: dict[str, Any] = {}
        self._entrypoints: dict[str, tuple[float, str]] = {}
        self._background: list[asyncio.Task] = []
        self._submitting: Optional[asyncio.Task] = None
        self._submit_again = False

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def setup(self) -> None:
        # The worker's API client (Prefect builds it in setup) asks a busy SQLite server again within ms, not 2 s
        # (rh_prefect.runtime.busy_retry): it claims runs, labels them, records their process.
        from prefect.settings import PREFECT_API_ENABLE_HTTP2, PREFECT_API_URL

        from rh_prefect.runtime import busy_retry

        ctx = _prefect_private.async_client_context(busy_retry.httpx_settings(
            PREFECT_API_URL.value(), PREFECT_API_ENABLE_HTTP2.value(), asynchronous=True))
        if ctx is None:
            await super().setup()
        else:
            async with ctx:
                await super().setup()
        self._background = [asyncio.ensure_future(self._serve_events()),
                            asyncio.ensure_future(self._check_cancellations())]

    async def teardown(self, *exc_info: Any) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(BaseException):
                await task
        self._background = []
        await super().teardown(*exc_info)

    # -- which runs run here ---------------------------------------------------------------------------------

    async def _entrypoint(self, deployment_id: Any) -> Optional[str]:
        """The entrypoint of a deployment whose runs run in this process (one of the package's flows), else None."""
        if not settings.current().worker_in_process or deployment_id is None:
            return None
        key = str(deployment_id)
        cached = self._entrypoints.get(key)
        if cached is None or time.monotonic() - cached[0] > ENTRYPOINT_TTL:
            deployment = await self.client.read_deployment(deployment_id)
            cached = self._entrypoints[key] = (time.monotonic(), deployment.entrypoint or "")
        entrypoint = cached[1]
        return entrypoint if entrypoint.startswith(IN_PROCESS_PREFIX) and ":" in entrypoint else None

    def _load_flow(self, entrypoint: str) -> Any:
        from prefect.flows import load_flow_from_entrypoint

        flow = self._flows.get(entrypoint)
        if flow is None:
            flow = self._flows[entrypoint] = load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)
        return flow

    async def _warm_up(self) -> None:
        """Import the flows of the pool's in-process deployments now, not during the first copy."""
        from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

        try:
            deployments = await self.client.read_deployments(
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._pool_name])))
        except Exception as exc:
            logger.debug("could not list the pool's deployments to warm up: %s", exc)
            return
        for deployment in deployments:
            self._entrypoints[str(deployment.id)] = (time.monotonic(), deployment.entrypoint or "")
            entrypoint = await self._entrypoint(deployment.id)
            if entrypoint is not None:
                try:
                    await asyncio.to_thread(self._load_flow, entrypoint)
                except Exception as exc:  # reported again, to the run, if a run of it comes
                    logger.warning("could not load flow %s: %s", entrypoint, exc)

    # -- running a flow run in this process -------------------------------------------------------------------

    async def run(self, flow_run: Any, configuration: ProcessJobConfiguration,
                  task_status: Optional[Any] = None) -> ProcessWorkerResult:
        """Prefect's submission path (a poll found the run): in this process when it is one of ours."""
        entrypoint = await self._entrypoint(flow_run.deployment_id)
        if entrypoint is None:
            return await super().run(flow_run, configuration, task_status=task_status)
        return await self._run_here(flow_run, entrypoint, task_status)

    async def _take(self, flow_run_id: str, entrypoint: str) -> None:
        """The fast path, woken by a run's Scheduled event: claim it (Pending), label it, start it on a thread (its
        process id is recorded meanwhile). Two requests before the engine starts, where Prefect's submission path
        makes six."""
        from prefect.exceptions import Abort, ObjectNotFound
        from prefect.states import Pending
        from prefect.utilities.engine import propose_state

        if flow_run_id in self._in_flight or flow_run_id in self._taking:
            return
        self._taking.add(flow_run_id)
        read = asyncio.ensure_future(self.client.read_flow_run(flow_run_id))
        claimed = started = False
        try:
            try:
                state = await propose_state(self.client, Pending(), flow_run_id=flow_run_id)
            except Abort:  # another worker (or this worker's poll) has it
                state = None
            if state is None or not state.is_pending():
                return
            claimed = True
            try:
                flow_run = await read
            except ObjectNotFound:
                # The run's Scheduled event can come before its creation is committed (a SQLite server busy with
                # another write): the read sent along with the claim missed it, the claim found it. Read it again.
                flow_run = await self.client.read_flow_run(flow_run_id)
            # The labels go on before the engine writes to the run (the server merges them read-modify-write);
            # meanwhile the blocks the run's parameters refer to are loaded, which the engine would do next.
            _, parameters = await asyncio.gather(self._label(flow_run_id), _resolved(flow_run))
            self.get_flow_run_logger(flow_run).info(f"Worker {self.name!r} submitting flow run '{flow_run.id}'")
            pid = asyncio.ensure_future(self.client.update_flow_run(flow_run.id, infrastructure_pid=str(os.getpid())))
            started = True
            await self._run_here(flow_run, entrypoint, None, parameters)
            with contextlib.suppress(Exception):
                await pid
        except Exception as exc:  # this run only: the worker goes on
            logger.exception("could not run flow run %s: %s", flow_run_id, exc)
            if claimed and not started:
                await self._give_back(flow_run_id)
        finally:
            read.cancel()
            self._taking.discard(flow_run_id)

    async def _give_back(self, flow_run_id: Any) -> None:
        """A run this worker claimed (Pending) but could not start goes back to Scheduled, so that a poll (this
        worker's or another's) runs it: left Pending, no worker would ever take it and its caller would wait on."""
        from prefect.states import Scheduled

        try:
            await self.client.set_flow_run_state(flow_run_id, Scheduled(), force=True)
            logger.info("flow run %s is Scheduled again for the next poll", flow_run_id)
        except Exception as exc:
            logger.warning("could not put flow run %s back on its queue: %s", flow_run_id, exc)

    async def _label(self, flow_run_id: Any) -> None:
        """The labels Prefect's submission path gives a run: which worker (and pool) runs it."""
        labels = {"prefect.worker.name": self.name, "prefect.worker.type": self.type,
                  "prefect.work-pool.name": self.work_pool.name, "prefect.work-pool.id": str(self.work_pool.id)}
        await self.client.update_flow_run_labels(flow_run_id, labels)

    async def _run_here(self, flow_run: Any, entrypoint: str, task_status: Optional[Any],
                        parameters: Optional[dict[str, Any]] = None) -> ProcessWorkerResult:
        run_logger = self.get_flow_run_logger(flow_run)
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()
        outcome: dict[str, Any] = {}
        key = str(flow_run.id)

        def execute() -> None:
            try:
                outcome["state"] = _prefect_private.with_shared_client(self._run_flow, entrypoint, flow_run,
                                                                       parameters)
            except BaseException as exc:  # the engine itself broke: reported as a crash, the worker goes on
                outcome["error"] = exc
            finally:
                with contextlib.suppress(RuntimeError):  # the worker's loop is closing: nobody waits any more
                    loop.call_soon_threadsafe(finished.set)

        with stops.opened(flow_run.id) as stop:
            thread = threading.Thread(target=execute, name=f"rh-flow-run-{flow_run.name}", daemon=True)
            self._in_flight[key] = thread
            try:
                thread.start()
                if task_status is not None:
                    task_status.started(os.getpid())
                run_logger.info(f"Running {entrypoint} in worker {self.name!r}'s own process (pid {os.getpid()})")
                await finished.wait()
            finally:
                self._in_flight.pop(key, None)
        error = outcome.get("error")
        if stop.is_set():
            await self._settle_cancelled(flow_run)
        elif error is not None:
            run_logger.error(f"The flow run's engine stopped with {type(error).__name__}: {error}")
        return ProcessWorkerResult(status_code=0 if error is None or stop.is_set() else 1,
                                   identifier=str(os.getpid()))

    def _run_flow(self, entrypoint: str, flow_run: Any, parameters: Optional[dict[str, Any]] = None) -> Any:
        from prefect.flow_engine import run_flow

        # The run as the engine sees it names no deployment: for a deployment's run the engine first starts a
        # watcher for suspension requests (a thread, an event loop, an API client and a request: 0.1-0.3 s before
        # every copy here), and a run inside this process cannot be suspended anyway (suspending stops a run's
        # infrastructure to resume it elsewhere later). The run itself keeps its deployment, in the API and the UI.
        engine_view = flow_run.model_copy(update={"deployment_id": None})
        return run_flow(self._load_flow(entrypoint), flow_run=engine_view, parameters=parameters or None,
                        return_type="state")

    async def kill_infrastructure(self, infrastructure_pid: str, configuration: ProcessJobConfiguration,
                                  grace_seconds: int = 30) -> None:
        """A run cancelled before it started, in this process: stop it (never kill this process)."""
        if str(infrastructure_pid) == str(os.getpid()):
            run_id = (configuration.env or {}).get("PREFECT__FLOW_RUN_ID")
            if run_id:
                stops.request(run_id)
            return
        await super().kill_infrastructure(infrastructure_pid, configuration, grace_seconds)

    # -- cancellation ---------------------------------------------------------------------------------------

    def _stop(self, flow_run_id: Any, why: str) -> None:
        if stops.request(flow_run_id):
            logger.info("stopping flow run %s: %s", flow_run_id, why)

    async def _settle_cancelled(self, flow_run: Any) -> None:
        """After a stopped run's thread ended: its final state is Cancelled, whatever the engine reached."""
        from prefect.states import Cancelled

        current = await self.client.read_flow_run(flow_run.id)
        if current.state is not None and current.state.is_cancelled():
            return
        await self.client.set_flow_run_state(
            flow_run.id, Cancelled(message="Cancelled while it ran: the copy stopped before its next file; files "
                                           "it committed stay, none is half-written."), force=True)

    async def _check_cancellations(self) -> None:
        """Read the states of the runs in flight every :data:`CANCEL_CHECK_SECONDS`: a cancellation the event
        stream missed (a dropped websocket) still stops its run."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        while True:
            await asyncio.sleep(CANCEL_CHECK_SECONDS)
            ids = list(self._in_flight)
            if not ids:
                continue
            try:
                runs = await self.client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
            except Exception as exc:  # the API is away for a moment: the next round tries again
                logger.debug("could not read the states of runs in flight: %s", exc)
                continue
            for run in runs:
                if run.state is not None and (run.state.is_cancelling() or run.state.is_cancelled()):
                    self._stop(run.id, f"it is {run.state.name}")

    # -- the server's events: wake up, stop ------------------------------------------------------------------

    async def _serve_events(self) -> None:
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter

        pool_id = await self._pool_id()
        event_filter = EventFilter(event=EventNameFilter(name=[*WAKE_EVENTS, CANCEL_EVENT]),
                                   any_resource=EventAnyResourceFilter(id=[f"prefect.work-pool.{pool_id}"]))
        first = True
        while True:
            try:
                async with get_events_subscriber(filter=event_filter) as subscriber:
                    if first:  # subscribed: the runs re-queued now wake this worker like any other
                        first = False
                        await self._requeue_orphans()
                        self._background.append(asyncio.ensure_future(self._warm_up()))
                    self._wake()  # anything that arrived while this worker was away or not listening
                    async for event in subscriber:
                        await self._on_event(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no event stream for now: the poll still finds the runs; try again soon
                logger.warning("the Prefect event stream is unavailable (%s: %s); polling only, retrying in 10 s",
                               type(exc).__name__, exc)
                await asyncio.sleep(10)

    async def _on_event(self, event: Any) -> None:
        run_id = event.resource.id.rsplit(".", 1)[-1]
        if event.event == CANCEL_EVENT:
            if run_id in self._in_flight:
                self._stop(run_id, "it was cancelled")
            return
        related = {r.role: r for r in event.related}
        queue = related.get("work-queue")
        deployment = related.get("deployment")
        if queue is None or deployment is None or (self._queues and queue.name not in self._queues):
            return  # another queue's run
        try:
            entrypoint = await self._entrypoint(deployment.id.rsplit(".", 1)[-1])
        except Exception as exc:
            logger.debug("could not read the deployment of flow run %s: %s", run_id, exc)
            entrypoint = None
        if entrypoint is None:
            self._wake()  # not one of ours to run in-process: Prefect's submission path runs it
        else:
            asyncio.ensure_future(self._take(run_id, entrypoint))

    def _wake(self) -> None:
        """Fetch and submit the queue's scheduled runs now (once more after the current fetch, if one runs)."""
        if self._submitting is not None and not self._submitting.done():
            self._submit_again = True
            return
        self._submitting = asyncio.ensure_future(self._submit_now())

    async def _submit_now(self) -> None:
        while True:
            self._submit_again = False
            try:
                await self.get_and_submit_flow_runs()
            except Exception as exc:  # the poll loop tries again on its own schedule
                logger.debug("woken, but could not fetch scheduled runs: %s", exc)
            if not self._submit_again:
                return

    async def _pool_id(self) -> Any:
        while True:  # the pool is known once the worker has synced with the server
            try:
                return self.work_pool.id
            except RuntimeError:
                await asyncio.sleep(0.1)

    # -- runs left by a worker that died ---------------------------------------------------------------------

    async def _requeue_orphans(self) -> None:
        """Put back in the queue the runs a dead predecessor of this worker (same name) was running."""
        from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
                                                    FlowRunFilterWorkQueueName)
        from prefect.client.schemas.objects import StateType
        from prefect.states import AwaitingRetry, Cancelled, Crashed

        try:
            runs = await self.client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.RUNNING, StateType.PENDING, StateType.CANCELLING])),
                work_queue_name=FlowRunFilterWorkQueueName(any_=self._queues) if self._queues else None,
            ))
        except Exception as exc:
            logger.warning("could not look for runs a previous worker left: %s", exc)
            return
        for run in runs:
            if (run.labels or {}).get("prefect.worker.name") != self.name or run.work_pool_name != self._pool_name:
                continue
            pid = str(run.infrastructure_pid or "")
            if not pid or pid == str(os.getpid()) or _alive(pid):
                continue
            gone = f"Its worker {self.name!r} (pid {pid}) stopped while it ran"
            if run.state.is_cancelling():
                state = Cancelled(message=f"{gone}; it was being cancelled.")
            elif run.run_count >= MAX_RESTARTS:
                state = Crashed(message=f"{gone}, for the {run.run_count}th time: not run again. Look for what "
                                        "stops the worker (its log), then copy again.")
            else:
                state = AwaitingRetry(scheduled_time=_dt.datetime.now(_dt.timezone.utc),
                                      message=f"{gone}; it runs again (files already copied are skipped).")
            try:
                await self.client.set_flow_run_state(run.id, state, force=True)
                logger.warning("flow run %s (%s): %s -> %s", run.name, run.id, gone, state.name)
            except Exception as exc:
                logger.warning("could not re-queue flow run %s: %s", run.id, exc)


async def _resolved(flow_run: Any) -> Optional[dict[str, Any]]:
    """The run's parameters with each block reference (``{"$ref": ...}``) loaded, as the flow engine would load them
    (all at once: reads); None (the engine loads them, and reports what fails) when one cannot be loaded here."""
    from prefect.blocks.core import Block

    def load(ref: dict[str, Any]) -> Any:
        return _prefect_private.with_shared_client(Block.load_from_ref, ref, _sync=True)

    parameters = dict(flow_run.parameters or {})
    refs = {name: value["$ref"] for name, value in parameters.items()
            if isinstance(value, dict) and set(value) == {"$ref"}}
    try:
        blocks = await asyncio.gather(*(asyncio.to_thread(load, ref) for ref in refs.values()))
    except Exception as exc:
        logger.debug("flow run %s: its parameters are left to the engine: %s", flow_run.id, exc)
        return None
    return {**parameters, **dict(zip(refs, blocks))}


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's process has that id now
        return True
    return True


__all__ = ["CANCEL_CHECK_SECONDS", "IN_PROCESS_PREFIX", "InProcessWorker", "MAX_RESTARTS", "TYPE"]
