"""Every block type of rh_prefect, imported in one place.

Prefect loads this module through the ``prefect.collections`` entry point, so a Prefect client with the
package installed knows the block types (a saved Folder loads back as a Folder anywhere). Register their forms
with a server, so they appear in the UI's block catalog, with ``rh-prefect register`` (or
``prefect block register -m rh_prefect.blocks``)::

    $ rh-prefect register
    registered rh-folder
    ...

What the UI shows for each type comes from the class: the name (``_block_type_name``, all prefixed "rh "),
the description (``_description``), the code example (the ``Example:`` section of the class docstring, which
Prefect extracts as the example admonition), and a title and description on every field. Secret fields are
``SecretStr``: the UI masks them and the API returns them only to clients that ask for secrets.

Logos: none, on purpose. The UI renders a block type's ``logo_url`` as ``<img src=...>``, and Prefect's client
validates it as an http(s) URL (a ``data:`` URL would make every client fail to read the block type back), so
any logo would be an image fetched from some web server: a machine without internet access would show a broken
image and leak a request. Without a logo the UI draws its built-in block icon, inline, with no request at all.

The abstract bases (``Resource``, ``StoredResource``) are not block types: Prefect refuses to register a class
that lists ``ABC`` among its direct bases, and they are not in :data:`BLOCK_TYPES`.
"""

from __future__ import annotations

from prefect.blocks.core import Block

from rh_prefect.resources.blob import Blob
from rh_prefect.resources.cluster import Cluster
from rh_prefect.resources.folder import Folder
from rh_prefect.resources.table import Table
from rh_prefect.systems.credentials import GCSCredentials, GitHubCredentials, S3Credentials

# Not a block: the cluster worker type (`prefect worker start --type rh-inprocess`). Prefect finds worker types the
# way it finds block types, by importing this module through the package's `prefect.collections` entry point.
from rh_prefect.runtime import inprocess as _inprocess  # noqa: F401

#: Every rh_prefect block type, in catalog order: data resources first, then where data lives and its keys.
#: (`prefect block register -m rh_prefect.blocks` finds them as this module's attributes.)
BLOCK_TYPES: list[type[Block]] = [Folder, Table, Blob, Cluster, S3Credentials, GCSCredentials, GitHubCredentials]


def register_all() -> list[str]:
    """Register every rh_prefect block type and schema with the configured Prefect server; returns the slugs.

    Idempotent: a type that is already registered is updated (description, code example) only if it changed.

    Example:
        >>> from rh_prefect.blocks import register_all
        >>> "rh-folder" in register_all()
        True
    """
    for block in BLOCK_TYPES:
        block.register_type_and_schema(_sync=True)  # also from inside an event loop (Jupyter)
    return [b.get_block_type_slug() for b in BLOCK_TYPES]


__all__ = ["BLOCK_TYPES", "Blob", "Cluster", "Folder", "GCSCredentials", "GitHubCredentials", "S3Credentials", "Table",
           "register_all"]
