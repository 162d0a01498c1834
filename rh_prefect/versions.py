"""The version vocabulary Table and Blob share: version ids and the :class:`Version` record.

Every write of a Table or a Blob makes a new immutable version. Its id is ``v-<UTC time to the microsecond>Z-<8
hex>`` (ids sort by the time they were made), and ``t.versions()`` / ``b.versions()`` describe each kept version
with one record type, oldest first::

    >>> [(v.id, v.rows, v.current) for v in rh.table(name="/ds/bert_preproc").versions()]
    [('v-20261204T112144123456Z-1a2b3c4d', 1000, False), ('v-20261204T113001000001Z-5e6f7a8b', 1200, True)]

This module is a foundation: the storage formats (:mod:`rh_prefect.tables.dataset`, :mod:`rh_prefect.blob_store`)
import it, and it imports nothing of rh_prefect but the errors.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Optional

from rh_prefect.errors import InvalidArgument

_TIME = "%Y%m%dT%H%M%S%f"
_ID = re.compile(r"v-(\d{8}T\d{12})Z-[0-9a-f]{8}")


@dataclass(frozen=True)
class Version:
    """One stored version of a Table or a Blob, as ``versions()`` lists it.

    ``id``: what ``rh.table(name=..., version=id)`` / ``rh.blob(name=..., version=id)`` and ``rollback(id)`` take;
    ``created``: when it was committed (UTC); ``rows``: its row count (a Table; None for a Blob); ``size``: its
    bytes (a Table: its data files); ``checksum``: a Blob's sha256, or for a Table the sha256 of its manifest (the
    JSON file that lists its data files), None when unknown; ``current``: True for the version a load by name
    reads now (a Table: the one its pointer names; a Blob: the one its block records).
    """

    id: str
    created: datetime
    rows: Optional[int]
    size: int
    checksum: Optional[str]
    current: bool


def new_version_id() -> str:
    """A fresh version id, ``v-<UTC time to the microsecond>Z-<8 hex>``; ids sort by the time they were made."""
    return f"v-{datetime.now(timezone.utc).strftime(_TIME)}Z-{uuid.uuid4().hex[:8]}"


def is_version_id(name: object) -> bool:
    """True when ``name`` is a version id as :func:`new_version_id` makes them."""
    return isinstance(name, str) and bool(_ID.fullmatch(name))


def id_time(version: str) -> Optional[datetime]:
    """The UTC time a version id was made, or None when ``version`` is not an id."""
    found = _ID.fullmatch(version) if isinstance(version, str) else None
    if found is None:
        return None
    return datetime.strptime(found.group(1), _TIME).replace(tzinfo=timezone.utc)


def check_version_id(version: object, what: str) -> str:
    """``version`` when it is a version id; InvalidArgument otherwise (it must never lead a read or a delete out
    of the versions it names: no ``..``, no ``/``)."""
    if not is_version_id(version):
        raise InvalidArgument(
            f"{version!r} is not a version id of {what} (ids look like 'v-20261204T112144123456Z-1a2b3c4d'); "
            "list them with .versions(). Nothing was changed."
        )
    return version  # type: ignore[return-value]


def listing(ids: Iterable[str], limit: int = 8) -> str:
    """The newest ``limit`` of ``ids`` as a short text for error messages (newest first)."""
    ordered = sorted(ids, reverse=True)
    if not ordered:
        return "none"
    more = f" and {len(ordered) - limit} older" if len(ordered) > limit else ""
    return ", ".join(ordered[:limit]) + more


__all__ = ["Version", "check_version_id", "id_time", "is_version_id", "listing", "new_version_id"]
