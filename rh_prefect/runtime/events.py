"""The event vocabulary rh-prefect speaks to Prefect: one place for event names and resource labels.

Every write, copy and delete of a Folder, Table or Blob is announced as a Prefect event whose *resource* is the rh
resource. Automations (``rh.on_update``), the lineage view (``rh-prefect lineage``) and the data-version cache
policy all match on these names, so they are defined here once.

Resource of an event (``prefect.resource.*`` labels plus ``rh.*`` labels):

- ``prefect.resource.id``: ``rh.<type>.<name>`` for a saved resource (``rh.table./ds/bert_preproc``), or
  ``rh.<type>.<url>`` for an unsaved one (``rh.blob.s3://bucket/models/ckpt.pkl``);
- ``prefect.resource.name``: the rh name (or the URL when unsaved);
- ``rh.type``: ``folder``, ``table`` or ``blob``; ``rh.name``: the rh name (empty when unsaved);
  ``rh.url``: where the data lives; ``rh.version``: the version written or copied (empty for a Folder).

Related resources carry a ``prefect.resource.role``: ``source`` (the resource a copy read), ``cluster``, and the
flow run and task run the operation ran in (Prefect's own ids, ``prefect.flow-run.<id>``).
"""

from __future__ import annotations

from typing import Optional

#: A Folder, Table or Blob got new data (a write, an append, a rollback, or the destination side of a copy).
WRITTEN = "rh.resource.written"
#: A resource was copied; the resource is the destination, the related ``source`` is what was read.
COPIED = "rh.resource.copied"
#: A resource's data (and, for a saved name, its registry entry) was deleted.
DELETED = "rh.resource.deleted"

ALL = (WRITTEN, COPIED, DELETED)

ID_PREFIX = "rh."
ROLE_SOURCE = "source"
ROLE_CLUSTER = "cluster"

LABEL_TYPE = "rh.type"
LABEL_NAME = "rh.name"
LABEL_URL = "rh.url"
LABEL_VERSION = "rh.version"


def resource_id(kind: str, name: Optional[str], url: str) -> str:
    """The ``prefect.resource.id`` of an rh resource: by name when saved, by URL otherwise."""
    return f"{ID_PREFIX}{kind}.{name or url}"
