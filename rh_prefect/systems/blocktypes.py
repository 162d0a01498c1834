"""What every rh-prefect block type shares with Prefect: its type and schema registered once per process.

Prefect registers a block's type and schema - and those of every nested block type - before every save: a few API
round trips each time (about ten for a Folder with its nested Cluster and credential blocks), more than the save
itself, and for a copy sent to a cluster's worker they come before the copy can start. A class's type and schema
cannot change while a process runs, so :class:`RegisteredOnce` registers them once per class and Prefect server,
and keeps the class's JSON schema, which Prefect regenerates dozens of times per save.
"""

from __future__ import annotations

import copy
from abc import ABC
from typing import Any

from prefect.blocks.core import Block
from prefect.settings import PREFECT_API_URL

_SCHEMA_CACHE: dict[Any, dict[str, Any]] = {}
# (class, API URL) whose block type and schema this process has registered
_REGISTERED: set[tuple[type, Any]] = set()


class RegisteredOnce(Block, ABC):
    """Base of rh-prefect's block types: registered once per process and server (see the module docstring). Not a
    block type itself (Prefect does not register a class with ``ABC`` among its direct bases)."""

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        # About a second of CPU per save with the nested Cluster/credential blocks otherwise (once per field in
        # Prefect's _field_has_secrets). A class's schema never changes.
        key = (cls, args, tuple(sorted(kwargs.items(), key=lambda kv: kv[0])))
        cached = _SCHEMA_CACHE.get(key)
        if cached is None:
            cached = _SCHEMA_CACHE[key] = super().model_json_schema(*args, **kwargs)
        return copy.deepcopy(cached)

    @classmethod
    def register_type_and_schema(cls, client: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        # Only the synchronous call that save() makes is short-cut; an awaited call (`prefect block register`) is not.
        if kwargs.get("_sync") is not True:
            return super().register_type_and_schema(client=client, **kwargs)
        key = (cls, PREFECT_API_URL.value())
        if key in _REGISTERED and cls._block_type_id is not None and cls._block_schema_id is not None:
            return None
        super().register_type_and_schema(client=client, **kwargs)
        _REGISTERED.add(key)
        return None


__all__ = ["RegisteredOnce"]
