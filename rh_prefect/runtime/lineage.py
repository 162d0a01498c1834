"""Lineage: where a resource's current version came from, hop by hop, and what was made from it - read back from
the Prefect server's events (the vocabulary of :mod:`rh_prefect.runtime.events`).

Example:
    ```python
    import rh_prefect as rh
    print(rh.lineage("/ds/bert_preproc"))
    # table /ds/bert_preproc @ v-20261204T112144123456Z-1a2b3c4d (s3://preproc/bert_preproc)
    #   copied 2026-12-04 11:21:45Z by flow run 'amber-fox' (flow 'preprocess')
    #     from table /tmp/bert_preproc @ v-20261204T112144123456Z-1a2b3c4d
    #       written 2026-12-04 11:21:44Z, outside a flow run
    ```

A version's history is found by its id: a write announces the version it made, a copy the version it copied (the
copy keeps the id), so each hop is one query for the events carrying that version and that resource's id (its name
or its URL). The server keeps events for its retention period (Prefect's default: 7 days,
``PREFECT_SERVER_EVENTS_RETENTION_PERIOD``); older hops show as "no event recorded".
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from rh_prefect.errors import InvalidArgument
from rh_prefect.runtime import events, registry

#: hops followed upstream (and levels of copies downstream) by default
DEFAULT_DEPTH = 10
#: events read per query
_PAGE = 50
#: copies listed per resource, at most
_MAX_DERIVED = 20


@dataclass(frozen=True)
class Ref:
    """A resource at a version, as events name it."""

    kind: str
    name: Optional[str]
    url: str
    version: Optional[str]
    id: str

    @classmethod
    def of(cls, labels: Any) -> "Ref":
        get = labels.get
        return cls(kind=get(events.LABEL_TYPE) or "", name=get(events.LABEL_NAME) or None,
                   url=get(events.LABEL_URL) or "", version=get(events.LABEL_VERSION) or None,
                   id=get("prefect.resource.id") or "")

    def ids(self) -> list[str]:
        """The resource ids its events may carry: by name (when saved) and by URL."""
        return list(dict.fromkeys(filter(None, [self.id, events.resource_id(self.kind, None, self.url)
                                                if self.url else None])))

    def __str__(self) -> str:
        text = f"{self.kind} {self.name or self.url}"
        if self.version:
            text += f" @ {self.version}"
        return text + (f" ({self.url})" if self.name and self.url else "")


@dataclass(frozen=True)
class RunRef:
    """A Prefect flow run or task run: its id and name."""

    id: str
    name: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.name!r}" if self.name else self.id


@dataclass
class Hop:
    """How a resource version came to be: the event that made it (``written`` or ``copied``; None when no event
    is recorded), where it ran, and upstream: the ``source`` a copy read and the ``inputs`` a write's flow run had
    read before, each with its own history."""

    resource: Ref
    event: Optional[str] = None
    occurred: Optional[datetime.datetime] = None
    flow_run: Optional[RunRef] = None
    task_run: Optional[RunRef] = None
    flow: Optional[str] = None
    cluster: Optional[str] = None
    payload: dict[str, Any] = field(default_factory=dict)
    source: Optional["Hop"] = None
    inputs: list["Hop"] = field(default_factory=list)

    def describe(self) -> str:
        """One line: what happened, when, and in which run."""
        if self.event is None:
            return "no event recorded (made before lineage events, or older than the server keeps events)"
        when = self.occurred.strftime("%Y-%m-%d %H:%M:%SZ") if self.occurred else "?"
        text = f"{self.event} {when}"
        if self.payload.get("saved"):
            text += " (saved under this name)"
        if self.payload.get("rollback"):
            text += " (rollback)"
        if self.flow_run is not None:
            text += f" by flow run {self.flow_run}"
            if self.flow:
                text += f" (flow {self.flow!r})"
        else:
            text += ", outside a flow run"
        if self.task_run is not None:
            text += f", task run {self.task_run}"
        if self.cluster:
            text += f", on cluster {self.cluster}"
        return text

    def _lines(self, indent: int) -> list[str]:
        pad = "  " * indent
        lines = [f"{pad}{self.describe()}"]
        if self.source is not None:
            lines.append(f"{pad}  from {self.source.resource}")
            lines += self.source._lines(indent + 2)
        for hop in self.inputs:
            lines.append(f"{pad}  read before: {hop.resource}")
            lines += hop._lines(indent + 2)
        return lines


@dataclass
class Copy:
    """A copy made from a resource: the copy (resource and version), when and where, and copies made from it."""

    resource: Ref
    source_version: Optional[str]
    occurred: Optional[datetime.datetime] = None
    flow_run: Optional[RunRef] = None
    derived: list["Copy"] = field(default_factory=list)

    def _lines(self, indent: int) -> list[str]:
        pad = "  " * indent
        when = self.occurred.strftime("%Y-%m-%d %H:%M:%SZ") if self.occurred else "?"
        run = f" by flow run {self.flow_run}" if self.flow_run is not None else ""
        lines = [f"{pad}copied to {self.resource} {when}{run}"]
        for copy in self.derived:
            lines += copy._lines(indent + 1)
        return lines


@dataclass
class Lineage:
    """A resource's lineage (:func:`lineage`): ``origin`` is how its version came to be (follow ``source`` and
    ``inputs`` upstream; :attr:`hops` is the chain of copies), ``derived`` the copies made from it."""

    resource: Ref
    origin: Hop
    derived: list[Copy] = field(default_factory=list)

    @property
    def hops(self) -> list[Hop]:
        """The chain from this resource back through the copies it came from: ``[origin, origin.source, ...]``."""
        out, hop = [], self.origin
        while hop is not None:
            out.append(hop)
            hop = hop.source
        return out

    def __str__(self) -> str:
        lines = [str(self.resource), "where it came from:"]
        lines += self.origin._lines(1)
        lines.append("what was made from it:" if self.derived else "what was made from it: no copies recorded")
        for copy in self.derived:
            lines += copy._lines(1)
        return "\n".join(lines)


def lineage(name: str, version: Optional[str] = None, depth: int = DEFAULT_DEPTH) -> Lineage:
    """Where the saved resource ``name``'s current version (or ``version``) came from, hop by hop up to ``depth``
    hops, and the copies made from it, from the events on the Prefect server. ``print()`` it for a readable tree.

    Raises :class:`~rh_prefect.errors.NotFound` for a name that is not saved.

    Example:
        >>> lin = rh.lineage("/ds/bert_preproc")
        >>> [hop.event for hop in lin.hops]
        ['copied', 'written']
        >>> print(lin)
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
        raise InvalidArgument(f"lineage(depth=...) takes a non-negative int, not {depth!r}.")
    found = registry.load(name)
    describe = getattr(found, "event_resource", None)
    if describe is None:
        raise InvalidArgument(f"{name!r} is a {type(found).__name__}, which holds no data, so it has no lineage; "
                              "pass the name of a folder, table or blob.")
    labels = describe()
    if version is not None:
        labels = {**labels, events.LABEL_VERSION: version}
    root = Ref.of(labels)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        _wait_for_own_events(client)
        reader = _Reader(client)
        origin = reader.origin(root, depth)
        derived = reader.derived(root, depth)
    return Lineage(root, origin, derived)


#: seconds :func:`lineage` waits at most for the server to store the events this process sent just before
WAIT_FOR_OWN_EVENTS = 15.0


def _wait_for_own_events(client: Any) -> None:
    """Wait until the server has stored the events this process sent in the last minute (at most
    :data:`WAIT_FOR_OWN_EVENTS` seconds), so a program reads the lineage of what it has just written. Events reach
    the server through a queue, and its event persister stores them in batches (every 5 s by default)."""
    pending = events.recent_ids()
    if not pending:
        return
    from prefect.events.filters import EventFilter, EventIDFilter

    from rh_prefect.runtime import _prefect_exit

    _prefect_exit.settle()  # this process's queue first
    deadline = time.monotonic() + WAIT_FOR_OWN_EVENTS
    while True:
        page = client.read_events(filter=EventFilter(id=EventIDFilter(id=pending)), limit=1)
        if page.total >= len(pending) or time.monotonic() > deadline:
            return
        time.sleep(0.25)


class _Reader:
    def __init__(self, client: Any) -> None:
        self._client = client
        self._seen: set[tuple[str, Optional[str]]] = set()

    def _events(self, names: Iterable[str], *, ids: Optional[list[str]] = None, version: Optional[str] = None,
                source_ids: Optional[list[str]] = None) -> list[Any]:
        from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter, EventResourceFilter
        from prefect.events.schemas.events import ResourceSpecification

        resource = None
        if ids or version:
            resource = EventResourceFilter(
                id=ids or None,
                labels=ResourceSpecification({events.LABEL_VERSION: version}) if version else None,
            )
        related = EventRelatedFilter(resources_in_roles=[(i, events.ROLE_SOURCE) for i in source_ids]) \
            if source_ids else None
        page = self._client.read_events(
            filter=EventFilter(event=EventNameFilter(name=list(names)), resource=resource, related=related),
            limit=_PAGE,
        )
        return sorted(page.events, key=lambda e: e.occurred)

    def origin(self, ref: Ref, depth: int) -> Hop:
        """The hop that made ``ref`` (its version; for a Folder, its latest contents)."""
        key = (ref.id, ref.version)
        if key in self._seen or depth < 0:
            return Hop(ref)
        self._seen.add(key)
        found = self._events([events.WRITTEN, events.COPIED], ids=ref.ids(), version=ref.version)
        if not found:
            return Hop(ref)
        if ref.version:  # what made this version: the first event with a source (a copy), else the first write
            event = next((e for e in found if _related(e, events.ROLE_SOURCE)), found[0])
        else:  # a Folder has no versions: its latest write or copy
            event = found[-1]
        hop = _hop(ref, event)
        if depth == 0:
            return hop
        source = _related(event, events.ROLE_SOURCE)
        if source:
            hop.source = self.origin(Ref.of(source[0]), depth - 1)
        for read in _related(event, events.ROLE_INPUT):
            hop.inputs.append(self.origin(Ref.of(read), depth - 1))
        return hop

    def derived(self, ref: Ref, depth: int) -> list[Copy]:
        """The copies made from ``ref`` (any of its versions), and the copies made from those, ``depth`` levels."""
        if depth <= 0:
            return []
        latest: dict[tuple[str, Optional[str]], Copy] = {}  # the same copy made again: its latest event
        saved_as: dict[tuple[str, Optional[str]], Ref] = {}  # a copy saved under a name: that name
        for event in self._events([events.COPIED, events.WRITTEN], source_ids=ref.ids()):
            dst = Ref.of(event.resource)
            if event.event == events.WRITTEN:
                if dst.name:
                    saved_as[(dst.url, dst.version)] = dst
                continue
            source = _related(event, events.ROLE_SOURCE)
            latest[(dst.id, dst.version)] = Copy(
                dst, (source[0].get(events.LABEL_VERSION) or None) if source else None, event.occurred,
                _run(event, events.ROLE_FLOW_RUN))
        copies = sorted(latest.values(), key=lambda c: c.occurred or datetime.datetime.min)[-_MAX_DERIVED:]
        for copy in copies:
            named = saved_as.get((copy.resource.url, copy.resource.version))
            if named is not None and not copy.resource.name:
                copy.resource = named
        for copy in copies:
            if (copy.resource.id, copy.resource.version) != (ref.id, ref.version):
                copy.derived = self.derived(copy.resource, depth - 1)
        return copies


def _related(event: Any, role: str) -> list[Any]:
    return [r for r in event.related if r.get("prefect.resource.role") == role]


def _run(event: Any, role: str) -> Optional[RunRef]:
    found = _related(event, role)
    if not found:
        return None
    rid = found[0].get("prefect.resource.id") or ""
    return RunRef(rid.split(".")[-1], found[0].get("prefect.resource.name"))


def _hop(ref: Ref, event: Any) -> Hop:
    flow = _related(event, "flow")
    clusters = [c.get("prefect.resource.name") for c in _related(event, events.ROLE_CLUSTER)]
    return Hop(
        resource=ref,
        event=event.event.rsplit(".", 1)[-1],
        occurred=event.occurred,
        flow_run=_run(event, events.ROLE_FLOW_RUN),
        task_run=_run(event, events.ROLE_TASK_RUN),
        flow=flow[0].get("prefect.resource.name") if flow else None,
        cluster=", ".join(dict.fromkeys(filter(None, clusters))) or None,
        payload=dict(event.payload or {}),
    )


__all__ = ["Copy", "Hop", "Lineage", "Ref", "RunRef", "lineage"]
