"""Every use of a private attribute of Prefect in the runtime, in one place, checked at first use (see
``systems._private``) with a public fallback.

Not here, and still private (the README lists them): a Block's ``_block_document_id``/``_block_document_name``
(Prefect offers no public accessor of the document a block was loaded from or saved as) in the resources, and
``prefect._internal...async_dispatch`` in resources/folder.py (Prefect's own blocks use it for their sync/async
twins).
"""

from __future__ import annotations

import contextvars
import threading
import uuid
from typing import Any, Callable, Optional, TypeVar

from rh_prefect.systems._private import Private

SAVE_SYNC = Private(
    "prefect", "Block._save_sync", params=("name", "is_anonymous", "overwrite"),
    fallback="public Block.asave run by prefect.utilities.asyncutils.run_coro_as_sync (a named snapshot)",
    why="saves from synchronous code even inside a running event loop, where the public save() would hand back a "
        "coroutine; and saves anonymously (run snapshots stay out of the UI's block list)",
)
CLIENT_CONTEXT_VAR = Private(
    "prefect", "SyncClientContext.__var__",
    fallback="a new API client for each call that asks for one (~0.08 s of CPU each, building its TLS context, and "
             "one version check request)",
    why="one API client per process for a dispatched copy and for each flow run of the in-process worker: Prefect's "
        "get_client(sync_client=True) returns the client of the active SyncClientContext, set through its variable",
)
QUEUE_INSTANCES = Private(
    "prefect", "QueueService._instances",
    fallback="none: the exit is not waited for (Prefect may log 'Still processing items' at exit)",
    why="the events queues to let settle before a short program exits",
)

RUN_CONTEXT_VAR = Private(
    "prefect", "ContextModel.__var__",
    fallback="none: an event sent outside any run may be related to the run of an event sent before it",
    why="gives the flow run and task run context variables a value while an rh event is queued, so Prefect's "
        "events queue does not relate it to a run it handled earlier",
)


def run_context_vars() -> list[Any]:
    """The context variables of Prefect's flow run and task run contexts (none where that cannot be known)."""
    import contextvars

    from prefect.context import FlowRunContext, TaskRunContext

    found = []
    for model in (FlowRunContext, TaskRunContext):
        var = getattr(model, "__var__", None) if RUN_CONTEXT_VAR.usable(model) else None
        if isinstance(var, contextvars.ContextVar):
            found.append(var)
    return found


def detached_copy(block: Any) -> Any:
    """A deep copy of ``block`` that is saved as a new block document, not over the one ``block`` came from."""
    copy = block.model_copy(deep=True)
    copy._block_document_id = None
    copy._block_document_name = None
    return copy


def document_ids(values: Any) -> set[str]:
    """The block document ids of the saved blocks among ``values`` (a block's nested blocks, say)."""
    return {str(v._block_document_id) for v in values if getattr(v, "_block_document_id", None) is not None}


def save_block(block: Any, name: Optional[str] = None, overwrite: bool = False, anonymous: bool = False) -> Any:
    """Save ``block`` as a block document (anonymous: without a name, for run snapshots); returns its id."""
    if SAVE_SYNC.usable(type(block)):
        try:
            if anonymous:
                return block._save_sync(is_anonymous=True)
            return block._save_sync(name=name, overwrite=overwrite)
        except (TypeError, AttributeError) as exc:
            if "_save_sync" not in str(exc) and "argument" not in str(exc):
                raise
            SAVE_SYNC.broke(type(block), exc)
    from prefect.utilities.asyncutils import run_coro_as_sync

    if anonymous:  # the public API has no anonymous save: a name nobody else uses (the caller deletes it by id)
        name, overwrite = f"rh-snapshot-{uuid.uuid4().hex}", False
    return run_coro_as_sync(block.asave(name=name, overwrite=overwrite))


def events_workers() -> list[Any]:
    """Prefect's running events queues (EventsWorker instances), or none where that cannot be known."""
    from prefect.events.worker import EventsWorker

    if not QUEUE_INSTANCES.usable(EventsWorker):
        return []
    instances = getattr(EventsWorker, "_instances", None)
    if not isinstance(instances, dict):
        QUEUE_INSTANCES.broke(EventsWorker, TypeError(f"_instances is a {type(instances).__name__}"))
        return []
    return [w for w in list(instances.values()) if isinstance(w, EventsWorker)]


T = TypeVar("T")
_SHARED_CLIENTS: dict[tuple, Any] = {}
_SHARED_LOCK = threading.Lock()


def with_shared_client(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` with this process's long-lived sync API client as the active one, so that every
    ``get_client(sync_client=True)`` inside (ours, and Prefect's own: block saves, run_deployment, the flow engine)
    returns it instead of building a client each time. A client context already active (inside a flow run) is kept.
    """
    from prefect.context import SyncClientContext

    if SyncClientContext.get() is not None or not CLIENT_CONTEXT_VAR.usable(SyncClientContext):
        return fn(*args, **kwargs)
    var = vars(SyncClientContext).get("__var__")
    if not isinstance(var, contextvars.ContextVar):
        CLIENT_CONTEXT_VAR.broke(SyncClientContext, TypeError(f"__var__ is a {type(var).__name__}"))
        return fn(*args, **kwargs)
    shared = _shared_client_context()

    def call() -> T:
        var.set(shared)  # in a copy of the caller's context: gone when fn returns, nothing else changes
        return fn(*args, **kwargs)

    return contextvars.copy_context().run(call)


def _shared_client_context() -> Any:
    """The SyncClientContext of this process for the API settings in force, its client opened once and kept."""
    from prefect.context import SyncClientContext
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL

    key = (PREFECT_API_URL.value(), PREFECT_API_KEY.value(), PREFECT_API_AUTH_STRING.value())
    with _SHARED_LOCK:
        ctx = _SHARED_CLIENTS.get(key)
        if ctx is None or getattr(ctx.client, "_closed", False):  # closed by someone's `with client:`: open another
            from prefect.settings import PREFECT_API_ENABLE_HTTP2

            from rh_prefect.runtime import busy_retry

            ctx = _client_context(busy_retry.httpx_settings(key[0], PREFECT_API_ENABLE_HTTP2.value()))
            # Entered with room to spare: each `with get_client(sync_client=True)` inside fn enters and exits it
            # once more and must never close it (Prefect counts entries without a lock, so threads may miscount).
            for _ in range(64):
                ctx.client.__enter__()
            _SHARED_CLIENTS[key] = ctx
        return ctx


def _client_context(httpx_settings: Optional[dict[str, Any]]) -> Any:
    """A SyncClientContext whose client is built with ``httpx_settings`` (a transport of ours) but which
    ``get_client(sync_client=True)`` still hands out: Prefect gives the active context's client only to callers
    asking for the same httpx settings it was made with, and Prefect's own callers ask for none. So the client is
    built first and the context made around it with pydantic's ``model_construct`` (public), which leaves the
    context's record of its settings at None."""
    from prefect.client.orchestration import get_client
    from prefect.context import SyncClientContext

    if not httpx_settings:
        return SyncClientContext()
    ctx = SyncClientContext.model_construct(client=get_client(sync_client=True, httpx_settings=httpx_settings))
    if getattr(ctx, "_httpx_settings", None) is not None:  # laid out differently: Prefect's own context instead
        return SyncClientContext()
    return ctx


def async_client_context(httpx_settings: Optional[dict[str, Any]]) -> Any:
    """An AsyncClientContext (to enter with ``async with``) whose client is built with ``httpx_settings`` and
    which Prefect's ``get_client()`` hands out inside it (as :func:`_client_context`); None without settings."""
    from prefect.client.orchestration import get_client
    from prefect.context import AsyncClientContext

    if not httpx_settings:
        return None
    ctx = AsyncClientContext.model_construct(client=get_client(httpx_settings=httpx_settings))
    return None if getattr(ctx, "_httpx_settings", None) is not None else ctx
