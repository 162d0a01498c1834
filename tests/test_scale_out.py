"""Scale-out paths: a Prefect server backed by PostgreSQL, and a folder copy fanned out over a Dask cluster.

``test_core_tests_pass_on_postgresql`` starts a private PostgreSQL and runs the core save / load / copy /
task-run checks (tests/core_checks.py) in a child pytest whose Prefect server uses it
(``RH_TEST_PREFECT_DATABASE_URL``, honoured by conftest.py); the checks also find their rows in PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import rh_prefect as rh
from rh_prefect import transfer

from helpers import prefect_client
from postgres import PostgresServer

pytestmark = pytest.mark.servers  # PostgreSQL and a Prefect server on it; copies that record task runs

REPO = Path(__file__).resolve().parents[1]
PG_ENV = "RH_TEST_POSTGRES_DSN"  # tells the child's checks where to find their rows


# =========================================================================== the core checks on PostgreSQL


def test_core_tests_pass_on_postgresql(tmp_path):
    """Start PostgreSQL, then rerun the core tests in a child pytest whose Prefect server uses it."""
    with PostgresServer() as pg:
        env = dict(os.environ)
        for name in ("PREFECT_API_URL", "PREFECT_HOME"):  # the child's conftest starts its own server
            env.pop(name, None)
        env["RH_TEST_PREFECT_DATABASE_URL"] = pg.url()
        env[PG_ENV] = f"postgresql://postgres@{pg.host}:{pg.port}/prefect"
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             str(Path(__file__).with_name("core_checks.py"))],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
        tables = subprocess.run([str(pg.bindir / "psql"), "-h", pg.host, "-p", str(pg.port), "-U", "postgres",
                                 "-d", "prefect", "-Atc", "SELECT count(*) FROM task_run"],
                                capture_output=True, text=True, timeout=30)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    print(f"core tests on PostgreSQL: {summary}")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "4 passed" in summary, done.stdout[-2000:]
    assert int(tables.stdout.strip() or 0) >= 3  # the task runs of those tests are rows in PostgreSQL


# =========================================================================== fan-out over Dask


def test_folder_copy_fans_out_over_a_dask_cluster(tmp_path, s3_env, s3_bucket):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect_dask import DaskTaskRunner

    from rh_prefect.flows.transfer import copy_folder_fanout, split_by_size

    files = {f"shard-{i:02d}.bin": os.urandom(48_000 + 1000 * i) for i in range(24)}
    src = rh.folder(path=str(tmp_path / "big")).put(files)
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 2, "processes": True,
                                            "dashboard_address": None})
    before = transfer.moved_here()

    state = copy_folder_fanout.with_options(task_runner=runner)(
        src, system="s3", path=f"/{s3_bucket}/big", partitions=4, return_state=True)

    out = state.result()
    assert (out["partitions"], out["files_copied"], out["bytes_copied"]) == (4, 24, sum(map(len, files.values())))
    assert transfer.moved_here() == before  # every byte moved in the Dask workers, none in this process
    fs = rh.folder(path=f"/{s3_bucket}/big", system="s3")
    assert {k: fs.get(k) for k in files} == files
    with prefect_client() as c:
        this_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        runs = c.read_task_runs(flow_run_filter=this_run)
    assert sorted(r.name.rsplit("-", 1)[0] for r in runs if r.name.startswith("rh-copy-part")) == ["rh-copy-part"] * 4
    sizes = {k: len(v) for k, v in files.items()}
    assert max(sum(sizes[k] for k in g) for g in split_by_size(sizes, 4)) < 1.1 * sum(sizes.values()) / 4
