"""Core save / load / copy / task-run checks, run by tests/test_scale_out.py against a Prefect server on
PostgreSQL (a child pytest with RH_TEST_PREFECT_DATABASE_URL set; conftest.py starts that server).

Not collected on its own (the file name does not start with ``test_``): the same behaviour is covered on the
default SQLite server by the registry, folder and copy test modules. Run it by hand against PostgreSQL with
``RH_TEST_PREFECT_DATABASE_URL=postgresql+asyncpg://... RH_TEST_POSTGRES_DSN=postgresql://...
pytest tests/core_checks.py``.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

import rh_prefect as rh
from rh_prefect.runtime import registry

from helpers import prefect_client, wait_for

pytestmark = pytest.mark.servers  # registry and task runs: the Prefect server (on PostgreSQL when asked)

PG_ENV = "RH_TEST_POSTGRES_DSN"  # where to look for the rows (the database behind the Prefect server)


def _pg_rows(sql: str, *args: object) -> list:
    """Rows from the PostgreSQL database behind the Prefect server of this run."""
    import asyncpg

    async def query() -> list:
        conn = await asyncpg.connect(os.environ[PG_ENV])
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(query())


def _on_postgres() -> bool:
    return bool(os.environ.get(PG_ENV))


def test_core_registry_save_load_list_delete(tmp_path, unique_name):
    name = unique_name("core")
    f = rh.folder(name=name, path=str(tmp_path / "f")).save()
    f.put({"a.txt": b"alpha"})
    assert rh.exists(name)
    loaded = rh.load(name)
    assert isinstance(loaded, rh.Folder) and loaded.path == f.path and loaded.get("a.txt") == b"alpha"
    assert (f"@/{name}", "Folder") in registry.list_names("@")
    if _on_postgres():
        _, doc_id = registry.find(loaded.full_name)
        rows = _pg_rows("SELECT count(*) AS n FROM block_document WHERE id = $1", uuid.UUID(doc_id))
        assert rows[0]["n"] == 1
    rh.delete(name)
    assert not rh.exists(name)
    with pytest.raises(rh.NotFound, match="No resource named"):
        rh.load(name)


@pytest.mark.parametrize("sysname", ["ssh", "s3"])
def test_core_copy_and_reload_by_name(sysname, places, unique_name, tmp_path):
    system, base = places[sysname]
    files = {"data/x.bin": os.urandom(200_000), "y.txt": b"why"}
    src = rh.folder(path=str(tmp_path / "src")).put(files)
    name = unique_name("copy")
    copied = src.to(system, f"{base}/copy").save(name)  # a Cluster (ssh) or credentials nest inside the block
    again = rh.folder(name=name)
    assert (again.system, again.path) == (copied.system, copied.path)
    assert {k: again.get(k) for k in files} == files
    if sysname == "ssh":
        assert again.cluster.ssh_key.get_secret_value() == places["ssh"][0].ssh_key.get_secret_value()
    rh.delete(name)


def test_core_copy_in_a_flow_records_task_runs(tmp_path):
    from prefect import flow
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    src = rh.folder(path=str(tmp_path / "src")).put({"a.bin": b"a" * 5000})

    @flow(name="rh-core-copy")
    def copy() -> None:
        src.to("file", str(tmp_path / "dst"))

    state = copy(return_state=True)
    flow_run_id = state.state_details.flow_run_id

    def names() -> list[str]:
        with prefect_client() as c:
            runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return [r.name for r in runs if r.state and r.state.is_completed()]

    # Task run states arrive through Prefect's event stream, a moment after the run.
    assert wait_for(lambda: any(n.startswith("rh-copy-tree") for n in names()), 10, "a completed rh-copy-tree task run")
    assert (tmp_path / "dst" / "a.bin").read_bytes() == b"a" * 5000
    if _on_postgres():
        rows = _pg_rows("SELECT name FROM task_run WHERE flow_run_id = $1", flow_run_id)
        assert any(r["name"].startswith("rh-copy-tree") for r in rows)
