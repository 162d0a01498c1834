"""Deployable transfer flow for Tables: copy an rh Table (all files of its current version) to another system.

Kept apart from rh_prefect/flows/transfer.py so that Folder and Blob copies do not pay for importing pandas and pyarrow.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from prefect import flow

from rh_prefect.resources.remote import copy_here
from rh_prefect.resources.table import Table
from rh_prefect.resources.cluster import Cluster
from rh_prefect.systems import GCSCredentials, S3Credentials


@flow(name="rh-copy-table", description="Copy an rh Table to a system and path (runs where it is deployed).")
def copy_table(
    source: Table,
    system: str = "s3",
    path: Optional[str] = None,
    cluster: Optional[Cluster] = None,
    credentials: Optional[Union[S3Credentials, GCSCredentials]] = None,
) -> dict[str, Any]:
    """Copy the table ``source`` to ``path`` on ``system``; readers there see the whole new version or none."""
    return copy_here(source, system, path, cluster, credentials)


__all__ = ["copy_table"]
