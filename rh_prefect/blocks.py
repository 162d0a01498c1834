"""Every block type of rh_prefect, imported in one place.

Prefect loads this module through the ``prefect.collections`` entry point, so a Prefect server or client with
the package installed knows the block types (their forms appear in the UI's block catalog). Register them
with a server explicitly with ``rh-prefect register`` or ``prefect block register -m rh_prefect.blocks``.
"""

from __future__ import annotations

from prefect.blocks.core import Block

from rh_prefect.resources.folder import Folder
from rh_prefect.systems.credentials import GCSCredentials, GitHubCredentials, S3Credentials
from rh_prefect.systems.ssh import Cluster

BLOCK_TYPES: list[type[Block]] = [Folder, Cluster, S3Credentials, GCSCredentials, GitHubCredentials]


def register_all() -> list[str]:
    """Register every rh_prefect block type and schema with the configured Prefect server; returns the slugs."""
    for block in BLOCK_TYPES:
        block.register_type_and_schema()
    return [b.get_block_type_slug() for b in BLOCK_TYPES]


__all__ = ["BLOCK_TYPES", "Cluster", "Folder", "GCSCredentials", "GitHubCredentials", "S3Credentials", "register_all"]
