"""Caches keyed on the data: a Prefect cache policy that keys a task on the versions of the rh resources it reads.

``@task(cache_policy=rh.DATA_VERSIONS)`` on a task that takes a Table serves the cached result while the table is
unchanged and runs the task again after a write. Prefect's ``INPUTS`` cannot do that alone: it hashes a block's
fields (name, path, ...), which stay the same when the data behind them changes.

The key hashes, for every Folder, Table or Blob among the task's parameters (also inside lists, tuples and dicts),
its :meth:`~rh_prefect.runtime.registry.Resource.data_version`:

* a Table or Blob: the version it reads - the one its block records (loaded by name: the registry's current one;
  pinned with ``version=``: that one; after a write: the new one). Nothing is read: the key of a Table object is
  the version that object's reads return, never a newer one it would not read;
* a Folder: it has no versions, so a fingerprint of its recursive listing (paths, sizes, modification times and
  the store's content tags): one listing, no file read;

and the task's module and name, so two tasks taking the same table never share a result. Other parameters are
not part of the key: compose with Prefect's policies for them - ``rh.DATA_VERSIONS + INPUTS`` (INPUTS also hashes
the resources' block fields, which is harmless), or ``rh.DATA_VERSIONS + INPUTS - "table"`` to leave a resource
parameter to this policy alone. A task with no rh resource among its parameters gets no key from this policy
(alone: not cached).

Computing the key counts as a read of each Table and Blob version in it, for lineage (a later write in the same
flow run names them as ``input``): a result served from the cache was made from exactly those versions, so a
checkpoint trained on cached batches still names the table version they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

from prefect.cache_policies import CachePolicy
from prefect.utilities.hashing import hash_objects

from rh_prefect.runtime import events
from rh_prefect.runtime.registry import Resource

_MAX_DEPTH = 8


@dataclass
class DataVersions(CachePolicy):
    """Prefect cache policy: the key hashes the data version of every rh resource among a task's parameters."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> Optional[str]:
        found = data_versions(inputs or {})
        if not found:
            return None
        _note_reads(inputs or {})
        fn = getattr(getattr(task_ctx, "task", None), "fn", None)
        task = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}" if fn is not None else ""
        return hash_objects("rh-data-versions", task, found, raise_on_failure=True)


def data_versions(inputs: dict[str, Any]) -> dict[str, str]:
    """``{where: data version}`` of the rh resources among ``inputs`` (``"table"``, ``"tables[1]"``,
    ``"config.source"``): what :data:`DATA_VERSIONS` hashes."""
    return {where: version for where, resource in _resources(inputs, "", 0, set())
            if (version := resource.data_version()) is not None}


def _note_reads(inputs: dict[str, Any]) -> None:
    """The task uses these versions, computed or from the cache: note them as the flow run's reads (lineage)."""
    for _, resource in _resources(inputs, "", 0, set()):
        describe = getattr(resource, "event_resource", None)
        if describe is None:
            continue
        try:
            res = describe()
        except Exception as exc:  # bookkeeping for lineage must never fail a task
            events.logger.debug("could not note a read of %r for lineage: %s", resource, exc)
            continue
        if res.get(events.LABEL_VERSION):  # a Table or Blob at a version (a Folder has none)
            events.note_read(res)


def _resources(value: Any, where: str, depth: int, seen: set[int]) -> Iterator[tuple[str, Resource]]:
    if isinstance(value, Resource):
        yield where, value
        return
    if depth > _MAX_DEPTH or id(value) in seen:
        return
    unwrap = getattr(value, "unwrap", None)  # prefect's quote()/unmapped() annotations
    if callable(unwrap) and type(value).__module__.startswith("prefect."):
        yield from _resources(unwrap(), where, depth + 1, seen)
        return
    if isinstance(value, dict):
        seen.add(id(value))
        for key, item in value.items():
            yield from _resources(item, f"{where}.{key}" if where else str(key), depth + 1, seen)
    elif isinstance(value, (list, tuple)):
        seen.add(id(value))
        for i, item in enumerate(value):
            yield from _resources(item, f"{where}[{i}]", depth + 1, seen)


#: The cache policy keyed on the data: ``@task(cache_policy=rh.DATA_VERSIONS)``; see the module's docstring.
DATA_VERSIONS = DataVersions()

__all__ = ["DATA_VERSIONS", "DataVersions", "data_versions"]
