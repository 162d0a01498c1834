"""Tuning values of rh-prefect, in one settings object.

Every deadline, part size, concurrency limit and poll interval the package uses is a field here, read once from
``RH_PREFECT_*`` environment variables (any case, validated by pydantic) and otherwise at its default. Code reads them through
:func:`current`; tests and applications change them with :func:`override` instead of patching module globals::

    from rh_prefect import settings
    settings.current().connect_timeout            # 10.0, or RH_PREFECT_CONNECT_TIMEOUT
    with settings.override(connect_timeout=3):    # for this block only (every thread of the process)
        ...

This module is a foundation: it imports nothing of rh_prefect.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterator, Optional

from pydantic import BaseModel, ConfigDict, Field

MiB = 2**20
ENV_PREFIX = "RH_PREFECT_"


class Settings(BaseModel):
    """rh-prefect's tuning values. Each field is also the environment variable ``RH_PREFECT_<FIELD NAME>``.

    ``Settings()`` reads the environment; keyword arguments win over it. (A plain pydantic model rather than
    pydantic-settings' BaseSettings: importing that costs a command-line call ~30-100 ms, for nothing it needs.)
    """

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    def __init__(self, **values: Any) -> None:
        found = {k[len(ENV_PREFIX):].lower(): v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}
        super().__init__(**{**{k: v for k, v in found.items() if k in type(self).model_fields}, **values})

    # -- reaching systems -------------------------------------------------------------------------------
    connect_timeout: float = Field(
        default=10.0, gt=0,
        description="Seconds before an endpoint that cannot be reached (S3, GCS, SSH) fails with SystemUnavailable.",
    )
    request_deadline: float = Field(
        default=120.0, gt=0,
        description="Seconds every data request must be answered in, plus its bytes at request_min_rate.",
    )
    request_min_rate: int = Field(
        default=64 * 1024, gt=0, description="Bytes per second of the slowest link a request is expected to work over.",
    )
    ssh_keepalive_interval: float = Field(
        default=15.0, gt=0, description="Seconds between SSH keepalives on an idle or stalled connection.",
    )
    ssh_keepalive_count_max: int = Field(
        default=4, gt=0, description="Unanswered SSH keepalives after which a connection is declared dead.",
    )

    # -- copy engine --------------------------------------------------------------------------------------
    chunk_size: int = Field(default=8 * MiB, gt=0, description="Bytes read or written per streamed chunk.")
    upload_part: int = Field(default=8 * MiB, ge=5 * MiB, description="Part size of streamed S3 multipart uploads.")
    upload_parts_in_flight: int = Field(default=4, gt=0, description="S3 upload parts in flight per file.")
    list_page_size: int = Field(
        default=1000, gt=0, le=1000,
        description="Objects per S3/GCS listing page (1000, the most both return); a copy starts on each page as it arrives.",
    )
    stale_temp_seconds: float = Field(
        default=3600.0, gt=0, description="Age after which a copy removes temporary files left by a dead writer.",
    )

    # -- logging ------------------------------------------------------------------------------------------
    task_logs: bool = Field(
        default=False,
        description="Print Prefect's task-run log lines for calls made outside a flow (inside a flow they always show).",
    )

    # -- lineage events ----------------------------------------------------------------------------------
    events: bool = Field(
        default=True,
        description="Send lineage events (rh.resource.written/copied/deleted, Prefect asset events) to the Prefect server.",
    )
    events_probe_timeout: float = Field(
        default=1.0, gt=0,
        description="Seconds to wait, once per process, for the Prefect server to answer before events are sent to it.",
    )

    # -- retries ------------------------------------------------------------------------------------------
    retries: int = Field(default=4, ge=0, description="Retries of a copy or stream task after a transient error.")
    task_timeout: float = Field(default=6 * 3600.0, gt=0, description="Seconds a copy task may run in all.")

    # -- stored formats -----------------------------------------------------------------------------------
    table_max_group_rows: int = Field(default=131_072, gt=0, description="Rows per parquet row group, at most.")
    table_min_group_rows: int = Field(
        default=1_024, gt=0, description="Rows per parquet row group, at least (wide rows get smaller groups).",
    )
    table_group_bytes: int = Field(
        default=64 * MiB, gt=0, description="About this many bytes of memory per row group (bounds stream memory).",
    )
    table_groups_per_file: int = Field(
        default=8, gt=0, description="Row groups per parquet file (lazy kinds read one partition per file).",
    )
    stream_readers: int = Field(default=3, gt=0, description="Row groups a stream reads at once from local disk.")
    stream_remote_readers: int = Field(
        default=8, gt=0, description="Row groups a stream reads at once over the network (each waits a round trip).",
    )
    stream_read_budget: int = Field(
        default=96 * MiB, gt=0, description="Memory for the row groups a stream has in flight (wide tables: fewer).",
    )
    stream_record_after: float = Field(
        default=1.0, ge=0, description="A stream's Prefect task run starts once the stream ran this long.",
    )
    versions_min_age: float = Field(
        default=600.0, ge=0,
        description="Versions younger than this (seconds) are never dropped, whatever their number: a concurrent "
        "writer's late registration or a reader that just loaded an entry may still name them.",
    )
    table_versions_kept: int = Field(
        default=5, ge=1,
        description="Versions of a Table kept (the current one included); older ones and files only they use are dropped.",
    )
    blob_versions_kept: int = Field(
        default=5, ge=1, description="Versions of a Blob kept (the current one included); older ones are dropped.",
    )

    # -- colocated copies (workers on clusters) -------------------------------------------------------
    pickup_timeout: float = Field(
        default=60.0, gt=0,
        description="Seconds a dispatched copy may wait for a worker before the worker is checked to be alive.",
    )
    state_check_seconds: float = Field(
        default=2.0, gt=0, description="A dispatched run's state is read at least this often while awaited.",
    )
    worker_query_seconds: float = Field(
        default=2.0, gt=0, description="How often a worker started by rh-prefect polls its queue for work.",
    )
    worker_poll_freshness: float = Field(
        default=60.0, gt=0, description="A queue polled within this many seconds counts as served by a worker.",
    )
    worker_in_process: bool = Field(
        default=True,
        description="A cluster's worker runs rh-prefect's copies on threads of its own long-lived process (false: "
                    "a new flow-run process per copy, as Prefect's process worker does).",
    )


_lock = threading.Lock()
_current: Optional[Settings] = None


def current() -> Settings:
    """The settings in force: environment variables read on first use, or what :func:`override` set."""
    global _current
    found = _current
    if found is None:
        with _lock:
            if _current is None:
                _current = Settings()
            found = _current
    return found


@contextlib.contextmanager
def override(**values: Any) -> Iterator[Settings]:
    """Use ``values`` instead of the current settings inside the ``with`` block (process-wide), then restore.

    Unknown names and invalid values raise pydantic's ValidationError before anything changes.
    """
    global _current
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        raise AttributeError(f"rh_prefect.settings has no setting {', '.join(unknown)}; see rh_prefect.settings.Settings.")
    before = current()
    changed = before.model_copy(update=Settings(**{**before.model_dump(), **values}).model_dump())
    with _lock:
        _current = changed
    try:
        yield changed
    finally:
        with _lock:
            _current = before


def markdown_table() -> str:
    """Every setting as a Markdown table (variable, default, meaning): README's "Settings" section is this output
    (``python -m rh_prefect.settings``), and a test keeps the two in step."""
    rows = ["| variable | default | what it sets |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `RH_PREFECT_{name.upper()}` | {field.default!r} | {field.description} |")
    return "\n".join(rows)


__all__ = ["Settings", "current", "markdown_table", "override"]


if __name__ == "__main__":  # pragma: no cover
    print(markdown_table())
