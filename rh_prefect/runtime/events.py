"""The event vocabulary rh-prefect speaks to Prefect: one place for event names and resource labels, and the one
function that sends them (:func:`emit`).

Every write, copy and delete of a Folder, Table or Blob is announced as a Prefect event whose *resource* is the rh
resource. Automations (``rh.on_update``), the lineage view (``rh-prefect lineage``) and the data-version cache
policy all match on these names, so they are defined here once.

Resource of an event (``prefect.resource.*`` labels plus ``rh.*`` labels; built by :func:`resource`):

- ``prefect.resource.id``: ``rh.<type>.<name>`` for a saved resource (``rh.table./ds/bert_preproc``), or
  ``rh.<type>.<url>`` for an unsaved one (``rh.blob.s3://bucket/models/ckpt.pkl``). The name is the canonical one
  (``names.parse(name).full``: ``@/my-folder`` for ``my-folder``). "Saved" means the object was loaded from or
  saved to the registry; a copy made by ``.to()`` is unsaved until it is saved itself;
- ``prefect.resource.name``: the rh name (or the URL when unsaved);
- ``rh.type``: ``folder``, ``table`` or ``blob``; ``rh.name``: the rh name (empty when unsaved);
  ``rh.url``: where the data lives; ``rh.version``: the version written or copied (empty for a Folder).

Related resources carry a ``prefect.resource.role``: ``source`` (the resource a copy read, same labels as a
resource), ``input`` (a Table or Blob read earlier in the same flow run, before a write: what the write was
probably made from), ``cluster`` (``rh.cluster.<name>``, or ``rh.cluster.ssh://user@host:port`` for an unsaved
Cluster: where the data is), and the flow run and task run the operation ran in (Prefect's own ids and roles,
``prefect.flow-run.<id>`` with role ``flow-run``, ``prefect.task-run.<id>`` with role ``task-run``; Prefect adds
the flow, deployment and tags). For a copy that ran on a cluster's worker, the first ``flow-run`` is that
worker's transfer flow run.

Which operation emits what (one event per operation, plus ``written`` when a saved name gets a new version):

- ``written``: a Table or Blob write, append, upload or rollback; a Folder ``put``, file written with ``open``, or
  partial ``rm`` (its payload lists what was removed); and a **save** that points a saved name at a version not
  yet announced under that name (``t.to(...).save("name")``, or ``rh.table(data=..., name=...).save()`` whose
  write was announced under its URL). So ``written`` with a name's id fires once for every new version of that
  name: the trigger of ``rh.on_update``. A save that came from a copy carries the copy's ``source``.
- ``copied``: every copy (``.to()`` in this process or on a cluster's worker, ``Folder.put(folder)``, the CLI's
  ``cp`` when either side is a saved name); the resource is the destination (by URL, unless it is a saved name),
  ``rh.version`` the version copied, ``source`` what was read. A copy into a saved name (``put`` into a saved
  Folder, ``cp`` to a saved name, a saved Folder's ``mv``) also emits ``written`` for that name.
- ``deleted``: ``rm()`` of a whole Folder, Table or Blob (and the CLI's ``rm NAME``). ``rh.delete(name)`` only
  forgets a name (the data stays) and emits nothing.

Where Prefect's asset vocabulary applies (a Table or Blob written or copied to a storage URL), the same operation
is also said as Prefect's ``@materialize`` says it (:func:`emit_asset`): ``prefect.asset.materialization.succeeded``
for the storage URL, with the upstream assets (a copy's source URL, or what the flow run read before a write) as
related ``asset`` resources, and ``prefect.asset.referenced`` for each of them.

Emitting never blocks or fails a data operation (:func:`emit`): without a configured server (``PREFECT_API_URL``)
nothing is sent; a server that does not answer costs one warning per process, and events are dropped until it
answers again; ``RH_PREFECT_EVENTS=false`` turns them off. Events sent outside a flow reach the server when the
program exits (Prefect's events queue is flushed then). Events hold names, URLs, versions and run ids - never a
credential.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections import OrderedDict, deque
from typing import Any, Iterable, Iterator, Mapping, Optional

from rh_prefect import settings
from rh_prefect.runtime import _prefect_exit, _prefect_private

logger = logging.getLogger("rh_prefect.runtime.events")

#: A Folder, Table or Blob got new data (a write, an append, a rollback), or a saved name got a new version (also
#: from a copy saved under it or made into it: see the module docstring).
WRITTEN = "rh.resource.written"
#: A resource was copied; the resource is the destination, the related ``source`` is what was read.
COPIED = "rh.resource.copied"
#: A resource's data (and, for a saved name, its registry entry) was deleted.
DELETED = "rh.resource.deleted"

ALL = (WRITTEN, COPIED, DELETED)

ID_PREFIX = "rh."
ROLE_SOURCE = "source"
ROLE_CLUSTER = "cluster"
#: a Table or Blob read earlier in the same flow run, before a write
ROLE_INPUT = "input"
#: Prefect's own roles of the run an event happened in
ROLE_FLOW_RUN = "flow-run"
ROLE_TASK_RUN = "task-run"

LABEL_TYPE = "rh.type"
LABEL_NAME = "rh.name"
LABEL_URL = "rh.url"
LABEL_VERSION = "rh.version"


def resource_id(kind: str, name: Optional[str], url: str) -> str:
    """The ``prefect.resource.id`` of an rh resource: by name when saved (the canonical name, see
    :func:`name_id`), by URL otherwise."""
    return f"{ID_PREFIX}{kind}.{name or url}"


def name_id(kind: str, name: str) -> str:
    """The ``prefect.resource.id`` of the saved name ``name``, however it is spelled (``my-folder`` and
    ``@/my-folder`` both give ``rh.folder.@/my-folder``): what an automation on a name matches."""
    from rh_prefect import names

    return resource_id(kind, names.parse(name).full, "")


def resource(kind: str, name: Optional[str], url: str, version: Optional[str] = None) -> dict[str, str]:
    """The event resource of an rh resource of type ``kind`` (``folder``, ``table``, ``blob``): ``name`` is its
    canonical name when saved, else None; ``version`` None for a Folder (or a blob described by path only)."""
    return {
        "prefect.resource.id": resource_id(kind, name, url),
        "prefect.resource.name": name or url,
        LABEL_TYPE: kind,
        LABEL_NAME: name or "",
        LABEL_URL: url,
        LABEL_VERSION: version or "",
    }


def as_related(res: Mapping[str, str], role: str) -> dict[str, str]:
    """``res`` (an event resource) as a related resource in ``role``."""
    return {**res, "prefect.resource.role": role}


def cluster(name: str) -> dict[str, str]:
    """The related resource of the cluster holding the data: its saved name, or ``ssh://user@host:port``."""
    return {"prefect.resource.id": f"{ID_PREFIX}cluster.{name}", "prefect.resource.name": name,
            "prefect.resource.role": ROLE_CLUSTER}


def flow_run(run_id: Any, name: Optional[str] = None) -> dict[str, str]:
    """The related resource of a flow run (Prefect's id and role), e.g. a worker's transfer flow run."""
    out = {"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": ROLE_FLOW_RUN}
    if name:
        out["prefect.resource.name"] = name
    return out


def run_related() -> list[dict[str, str]]:
    """The flow run and task run this code runs in, as related resources; none outside a Prefect run.

    Prefect's events queue attaches the same ones (and the flow, deployment and tags) by itself; saying them here
    keeps them in the event even where that lookup fails, and Prefect skips the ids already present."""
    from prefect.context import FlowRunContext, TaskRunContext

    out = []
    run = getattr(FlowRunContext.get(), "flow_run", None)
    task_run = getattr(TaskRunContext.get(), "task_run", None)
    run_id = getattr(run, "id", None) or getattr(task_run, "flow_run_id", None)
    if run_id is not None:
        out.append(flow_run(run_id, getattr(run, "name", None)))
    if task_run is not None:
        out.append({"prefect.resource.id": f"prefect.task-run.{task_run.id}", "prefect.resource.role": ROLE_TASK_RUN,
                    "prefect.resource.name": task_run.name})
    return out


# -- what a flow run read ----------------------------------------------------------------------------------------
#: flow run id -> {resource id and version: the resource read}, for the most recent flow runs of this process
_READS: "OrderedDict[str, OrderedDict[tuple[str, str], dict[str, str]]]" = OrderedDict()
_READS_LOCK = threading.Lock()
_MAX_RUNS = 64
#: inputs named per write, at most (an event has at most 100 related resources)
MAX_INPUTS = 20


def _current_flow_run_id() -> Optional[str]:
    from prefect.context import FlowRunContext, TaskRunContext

    run = getattr(FlowRunContext.get(), "flow_run", None)
    if run is not None:
        return str(run.id)
    task_run = getattr(TaskRunContext.get(), "task_run", None)
    run_id = getattr(task_run, "flow_run_id", None)
    return str(run_id) if run_id is not None else None


def note_read(res: Mapping[str, str]) -> None:
    """Remember that the current flow run read ``res`` (a Table or Blob at a version): a later write in the same
    flow run names it as an ``input``. Nothing outside a flow run; never raises."""
    try:
        run = _current_flow_run_id()
        if run is None:
            return
        key = (res["prefect.resource.id"], res.get(LABEL_VERSION, ""))
        with _READS_LOCK:
            reads = _READS.setdefault(run, OrderedDict())
            _READS.move_to_end(run)
            reads.pop(key, None)
            reads[key] = dict(res)
            while len(reads) > MAX_INPUTS:
                reads.popitem(last=False)
            while len(_READS) > _MAX_RUNS:
                _READS.popitem(last=False)
    except Exception as exc:  # bookkeeping for lineage must never break a read
        logger.debug("could not note a read for lineage: %s", exc)


def reads() -> list[dict[str, str]]:
    """What the current flow run read so far (:func:`note_read`), oldest first; empty outside a flow run."""
    run = _current_flow_run_id()
    if run is None:
        return []
    with _READS_LOCK:
        return [dict(r) for r in _READS.get(run, {}).values()]


# -- sending ---------------------------------------------------------------------------------------------------------

#: set inside :func:`suppressed`: events of that code are not sent (the caller announces the operation itself)
_SUPPRESSED: contextvars.ContextVar[bool] = contextvars.ContextVar("rh_events_suppressed", default=False)


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """Inside the block, :func:`emit` sends nothing: for work whose announcement someone else makes (a copy run on a
    cluster's worker is announced by the process that dispatched it, which knows the source's name)."""
    token = _SUPPRESSED.set(True)
    try:
        yield
    finally:
        _SUPPRESSED.reset(token)


class _Reachability:
    """Whether the Prefect server answers, asked once per API URL (again after ``RECHECK`` seconds when it did not).

    Prefect's events queue keeps trying a server that does not answer - about 7 s of reconnecting per process,
    a warning and an error line at exit - so an event for such a server is dropped here instead, with one warning.
    The question is one HTTP request with a short timeout (``settings.events_probe_timeout``); any answer, even an
    error status, counts: only reaching the server matters here.
    """

    RECHECK = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, tuple[bool, float]] = {}
        self._warned: set[str] = set()

    def answers(self, api_url: str) -> bool:
        now = time.monotonic()
        with self._lock:
            known = self._known.get(api_url)
        if known is not None and (known[0] or now - known[1] < self.RECHECK):
            return known[0]
        ok, reason = _probe(api_url, settings.current().events_probe_timeout)
        with self._lock:
            self._known[api_url] = (ok, now)
            warn = not ok and api_url not in self._warned
            if warn:
                self._warned.add(api_url)
        if warn:
            logger.warning(
                "The Prefect server at %s did not answer (%s), so rh-prefect's lineage events of this process are "
                "not sent (the data operations are not affected). Start the server or correct PREFECT_API_URL; "
                "RH_PREFECT_EVENTS=false turns the events off.", api_url, reason)
        return ok


def _probe(api_url: str, timeout: float) -> tuple[bool, str]:
    import httpx

    try:
        # No credentials are sent and the certificate is not checked: the question is only whether anything answers
        # (proxy settings of the environment apply, as they do to Prefect's own client).
        with httpx.Client(timeout=timeout, verify=False) as client:
            client.get(api_url.rstrip("/") + "/health")
        return True, ""
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_REACHABLE = _Reachability()
#: (when, event id) of the events this process sent lately: what a lineage query waits for (see recent_ids)
_RECENT: "deque[tuple[float, Any]]" = deque(maxlen=200)


def recent_ids(within: float = 60.0) -> list[Any]:
    """Ids of the events this process sent in the last ``within`` seconds (at most the last 200): a reader of the
    server's events (:func:`rh_prefect.runtime.lineage.lineage`) waits until the server has stored them."""
    since = time.monotonic() - within
    return [event_id for when, event_id in list(_RECENT) if when >= since]
_warned_failure = False


@contextlib.contextmanager
def _run_context_pinned() -> Iterator[None]:
    """Give the flow run and task run context variables a value (the current one, maybe None) while an event is
    queued. Prefect's events queue copies the sender's context and later attaches the runs it finds there; a
    variable never set in the sender's context is missing from the copy, and the queue's thread then still sees
    the run of an event it handled before - so an event sent outside any run was related to an earlier task run."""
    tokens = [(var, var.set(var.get(None))) for var in _prefect_private.run_context_vars()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _dedupe(related: Iterable[Mapping[str, str]]) -> list[dict[str, str]]:
    out, seen = [], set()
    for r in related:
        key = (r.get("prefect.resource.id"), r.get("prefect.resource.role"))
        if key not in seen:
            seen.add(key)
            out.append(dict(r))
    return out


def emit(event: str, res: Mapping[str, str], related: Iterable[Mapping[str, str]] = (),
         payload: Optional[dict[str, Any]] = None) -> Any:
    """Send one event through Prefect's public ``emit_event``; returns the event sent, or None.

    Never raises and never waits on the network beyond one short reachability check per process (see
    :class:`_Reachability`): no configured server (``PREFECT_API_URL``: Prefect would start a temporary server just
    for this), events turned off (``settings.events``) or a server that does not answer mean nothing is sent.
    """
    global _warned_failure
    if _SUPPRESSED.get():
        return None
    try:
        if not settings.current().events:
            return None
        from prefect.settings import PREFECT_API_URL

        api_url = PREFECT_API_URL.value()
        if not api_url or not _REACHABLE.answers(str(api_url)):
            return None
        from prefect.events import emit_event

        with _run_context_pinned():
            sent = emit_event(event=event, resource=dict(res), related=_dedupe(related), payload=payload or None)
        _prefect_exit.settle_at_exit()  # a short script's last events reach the server without exit noise
        if sent is not None:
            _RECENT.append((time.monotonic(), sent.id))
        return sent
    except Exception as exc:  # an event is bookkeeping: it must never fail the data operation it describes
        if not _warned_failure:
            _warned_failure = True
            logger.warning("Could not send the Prefect event %s (%s: %s); the data operation is not affected.",
                           event, type(exc).__name__, exc)
        return None


# -- Prefect's asset vocabulary ------------------------------------------------------------------------------------
ASSET_MATERIALIZED = "prefect.asset.materialization.succeeded"
ASSET_REFERENCED = "prefect.asset.referenced"


def asset_key(url: str) -> Optional[str]:
    """The Prefect asset key of a storage URL (``s3://bucket/key``; a local path as ``file:///path``), or None when
    Prefect would not take it as a key (it refuses spaces, ``%``, ``#``, ``?`` and a few more characters)."""
    from prefect.assets import Asset

    key = url if "://" in url else (f"file://{url}" if url.startswith("/") else None)
    if key is None:
        return None
    try:
        return Asset(key=key).key
    except ValueError:
        return None


def emit_asset(url: str, name: Optional[str] = None, upstream: Iterable[str] = (),
               payload: Optional[dict[str, Any]] = None) -> None:
    """Say that the data at ``url`` was materialized from the data at the ``upstream`` URLs, in the events
    Prefect's ``@materialize`` tasks emit, so Prefect's asset lineage graph draws it.

    Prefect 3.8 and 3.9 emit these only from a ``@materialize`` task's own run (``AssetContext.emit_events``) and
    offer no public call to materialize an asset from inside other code, such as the retryable tasks and plain
    function calls rh-prefect writes in. So the same events are sent with ``emit_event``, shaped by Prefect's
    public ``AssetContext.asset_as_resource``/``asset_as_related``: ``prefect.asset.referenced`` for each upstream
    asset, then ``prefect.asset.materialization.succeeded`` for the asset with the upstream ones as related
    ``asset`` resources (and the flow run and task run, as Prefect adds to every event sent inside a run).
    """
    try:
        from prefect.assets import Asset, AssetProperties
        from prefect.context import AssetContext

        key = asset_key(url)
        if key is None:
            return
        asset = Asset(key=key, properties=AssetProperties(name=name) if name else None)
        ups = [Asset(key=k) for k in dict.fromkeys(filter(None, map(asset_key, upstream))) if k != key]
        for up in ups:
            emit(ASSET_REFERENCED, AssetContext.asset_as_resource(up))
        related = [AssetContext.asset_as_related(up) for up in ups] + run_related()
        emit(ASSET_MATERIALIZED, AssetContext.asset_as_resource(asset), related, payload)
    except Exception as exc:
        logger.debug("could not say %s in Prefect's asset terms: %s", url, exc)
