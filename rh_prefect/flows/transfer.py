"""Deployable transfer flows: copy a Folder or Blob to another system (a Table: transfer_table.py).

Their parameters are blocks, so the Prefect UI's Run form offers block pickers (pick a saved rh Folder, an
rh Cluster, S3 credentials) instead of JSON. They are what :mod:`rh_prefect.resources.remote` runs on a cluster's own
worker when ``.to()`` is called on data that lives on that cluster; blocks reach them by reference
(``{"$ref": {"block_document_id": ...}}``), so secrets arrive intact.

Register them with ``deployments/prefect.yaml`` (see the comment at its top), or let the dispatcher register
them on first use. Run one by hand::

    prefect deployment run rh-copy-folder/rh-transfer \\
        -p source='{"$ref": {"block_document_id": "<id>"}}' -p system=s3 -p path=/my-bucket/data

or call it as a plain function from Python (it is a normal Prefect flow)::

    from rh_prefect.flows.transfer import copy_folder
    copy_folder(rh.folder(name="my-folder"), system="s3", path="/my-bucket/my-folder")
"""

from __future__ import annotations

from typing import Any, Optional, Union

from prefect import flow, unmapped

from rh_prefect import transfer

from rh_prefect.resources.remote import copy_here
from rh_prefect.runtime import tasks
from rh_prefect.errors import NotFound
from rh_prefect.resources.blob import Blob
from rh_prefect.resources.folder import Folder
from rh_prefect.resources.cluster import Cluster
from rh_prefect.systems import GCSCredentials, S3Credentials, get_system

Credentials = Union[S3Credentials, GCSCredentials]
# The Table flow lives in flows/transfer_table.py: importing Table (pandas, pyarrow.dataset) costs each flow run
# of this file a second or more, and a worker starts a fresh interpreter per run.


@flow(name="rh-copy-folder", description="Copy an rh Folder to a system and path (runs where it is deployed).")
def copy_folder(
    source: Folder,
    system: str = "s3",
    path: Optional[str] = None,
    cluster: Optional[Cluster] = None,
    credentials: Optional[Credentials] = None,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Copy ``source`` to ``path`` on ``system`` (``cluster`` for ssh, ``credentials`` for s3/gs).

    Unchanged files at the destination are skipped, so a re-run resumes.
    """
    return copy_here(source, system, path, cluster, credentials, overwrite=overwrite)


@flow(name="rh-copy-blob", description="Copy an rh Blob to a system and path (runs where it is deployed).")
def copy_blob(
    source: Blob,
    system: str = "s3",
    path: Optional[str] = None,
    cluster: Optional[Cluster] = None,
    credentials: Optional[Credentials] = None,
) -> dict[str, Any]:
    """Copy the blob ``source`` to ``path`` on ``system``; its size and sha256 travel with it."""
    return copy_here(source, system, path, cluster, credentials)


def split_by_size(sizes: dict[str, int], parts: int) -> list[list[str]]:
    """Split file keys into at most ``parts`` groups of about equal total size (largest first, each to the
    lightest group); every group non-empty, keys sorted within a group."""
    groups: list[tuple[int, list[str]]] = [(0, []) for _ in range(max(1, min(parts, len(sizes))))]
    for key in sorted(sizes, key=lambda k: (-sizes[k], k)):
        total, members = min(groups, key=lambda g: g[0])
        groups.remove((total, members))
        groups.append((total + sizes[key], members + [key]))
    return [sorted(members) for _, members in groups if members]


@flow(name="rh-copy-folder-fanout",
      description="Copy a large Folder as parallel partition tasks (threads, or a Dask cluster's workers).")
def copy_folder_fanout(
    source: Folder,
    system: str = "s3",
    path: Optional[str] = None,
    cluster: Optional[Cluster] = None,
    credentials: Optional[Credentials] = None,
    partitions: int = 8,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Copy ``source`` with its files split into ``partitions`` groups of equal size, one retryable task each.

    The tasks run on the flow's task runner: threads of this process by default, or the processes of a Dask
    cluster with prefect-dask (``copy_folder_fanout.with_options(task_runner=DaskTaskRunner(address=...))``),
    for copies too large for one process. Files already at the destination are skipped, as in any copy.
    """
    dst = get_system(cluster if cluster is not None else system, credentials=credentials)
    dst_sys, dst_path = source.destination(dst, path)
    dst_sys.check_writable(dst_path)
    dst_root = dst_sys.fs_path(dst_path)
    dst_sys.ensure_container(dst_root)
    src_sys, src_root = source.sys, source.fs_path
    files = transfer.list_files(src_sys, src_root)
    if not files:
        raise NotFound(f"Nothing to copy: {source.url} has no files.")
    groups = split_by_size({key: int(info.get("size") or 0) for key, info in files.items()}, partitions)
    futures = tasks.copy_part_task.map(unmapped(src_sys), unmapped(src_root), unmapped(dst_sys), unmapped(dst_root),
                                       keys=groups, overwrite=unmapped(overwrite))
    reports = futures.result()
    return {
        "url": dst_sys.url(dst_path),
        "partitions": len(groups),
        "files_copied": sum(r.files_copied for r in reports),
        "files_skipped": sum(r.files_skipped for r in reports),
        "bytes_copied": sum(r.bytes_copied for r in reports),
    }


__all__ = ["copy_blob", "copy_folder", "copy_folder_fanout", "split_by_size"]
