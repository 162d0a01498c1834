"""Lineage events (issue 19, point 2): what a write, a copy and a delete tell the Prefect server, what
``rh.lineage`` / ``rh-prefect lineage`` read back from it, and that events never hold up a data operation.

Events reach the server through Prefect's events queue and its event persister (which the suite's server runs with
a 1 s flush): tests poll the server with a deadline for what they expect.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import rh_prefect as rh
from helpers import prefect_client, wait_for
from infra import free_port

REPO = Path(__file__).resolve().parents[1]


def _events(ids: list[str]) -> list[Any]:
    """The rh and asset events the server stores for these resource ids, oldest first."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    with prefect_client() as client:
        page = client.read_events(filter=EventFilter(
            event=EventNameFilter(prefix=["rh.resource.", "prefect.asset."]), resource=EventResourceFilter(id=ids),
        ), limit=50)
    return sorted(page.events, key=lambda e: e.occurred)


def _wait_events(expected: set[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """Poll until the server has an event of each ``(event name, resource id)``; the latest of each."""
    def found() -> dict[tuple[str, str], Any]:
        got = {(e.event, e.resource.id): e for e in _events(sorted({rid for _, rid in expected}))}
        return got if expected <= set(got) else {}

    return wait_for(found, timeout=30, what=f"the events {sorted(expected)}")


def _roles(event: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in event.related:
        out.setdefault(r.role, []).append(r)
    return out


def _script_env(api_url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(home), PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return env


@pytest.mark.servers
def test_a_flow_that_writes_copies_and_deletes_leaves_events_that_lineage_reads_back(
        tmp_path, unique_name, s3_server, s3_bucket, cli):
    from prefect import flow, task
    from prefect.runtime import flow_run

    secret = f"lineage-secret-{uuid.uuid4().hex}"  # moto takes any secret: this one really signs the requests
    creds = rh.S3Credentials(aws_access_key_id=s3_server.access_key, aws_secret_access_key=secret,
                             endpoint_url=s3_server.endpoint_url)
    bucket = rh.folder(path=f"/{s3_bucket}", system="s3", credentials=creds)
    src_name, copy_name = f"/lineage/{unique_name('src')}", f"/lineage/{unique_name('copy')}"
    src_path = str(tmp_path / "src")

    @task
    def make_table() -> str:
        return rh.table(data=pa.table({"id": [1, 2, 3]}), name=src_name, path=src_path).save().version

    @flow
    def pipeline() -> tuple[str, str]:
        version = make_table()
        rh.table(name=src_name).to(bucket.sys, path=f"/{s3_bucket}/copy").save(copy_name)
        return version, flow_run.id

    version, run_id = pipeline()
    gone = rh.blob(data=b"bye", path=str(tmp_path / "gone.bin"))
    gone.rm()
    assert cli("cp", src_name, str(tmp_path / "cp")).exit_code == 0  # the CLI's copy of a saved name

    copy_url = f"s3://{s3_bucket}/copy"
    ids = {"src": f"rh.table.{src_path}", "src_name": f"rh.table.{src_name}", "copy": f"rh.table.{copy_url}",
           "copy_name": f"rh.table.{copy_name}", "gone": f"rh.blob.{gone.url}", "cp": f"rh.table.{tmp_path / 'cp'}"}
    got = _wait_events({
        ("rh.resource.written", ids["src"]), ("rh.resource.written", ids["src_name"]),
        ("rh.resource.copied", ids["copy"]), ("rh.resource.written", ids["copy_name"]),
        ("rh.resource.deleted", ids["gone"]), ("prefect.asset.materialization.succeeded", copy_url),
        ("rh.resource.copied", ids["cp"]),
    })

    # The write, in a task of the flow: the table at its URL (saved after it), its version, the flow run and task run.
    written = got[("rh.resource.written", ids["src"])]
    assert {k: written.resource.get(k) for k in ("rh.type", "rh.name", "rh.url", "rh.version")} == {
        "rh.type": "table", "rh.name": "", "rh.url": src_path, "rh.version": version}
    roles = _roles(written)
    assert [r.id for r in roles["flow-run"]] == [f"prefect.flow-run.{run_id}"]
    assert roles["task-run"][0].get("prefect.resource.name").startswith("make_table")
    saved = got[("rh.resource.written", ids["src_name"])]
    assert (saved.resource.get("rh.name"), saved.resource.get("rh.version")) == (src_name, version)

    # The copy to S3: the destination at the version copied, the saved source, the flow run (no task: the flow body).
    copied = got[("rh.resource.copied", ids["copy"])]
    assert (copied.resource.get("rh.url"), copied.resource.get("rh.version")) == (copy_url, version)
    roles = _roles(copied)
    assert [(r.id, r.get("rh.version"), r.get("rh.url")) for r in roles["source"]] == [
        (ids["src_name"], version, src_path)]
    assert [r.id for r in roles["flow-run"]] == [f"prefect.flow-run.{run_id}"] and "task-run" not in roles
    # Saving the copy under a name is that name's new version: written, naming the copy's source.
    named = got[("rh.resource.written", ids["copy_name"])]
    assert [r.id for r in _roles(named)["source"]] == [ids["src_name"]]
    # Prefect's asset vocabulary: the S3 key materialized from the local table.
    asset = got[("prefect.asset.materialization.succeeded", copy_url)]
    assert [r.id for r in _roles(asset)["asset"]] == [f"file://{src_path}"]
    deleted = got[("rh.resource.deleted", ids["gone"])]
    assert deleted.resource.get("rh.type") == "blob"
    assert not {"flow-run", "task-run"} & set(_roles(deleted))  # deleted after the flow, outside any run
    cp = got[("rh.resource.copied", ids["cp"])]
    assert [(r.id, r.get("rh.version")) for r in _roles(cp)["source"]] == [(ids["src_name"], version)]
    # Names, URLs, versions and run ids - never a credential.
    assert not [e.event for e in _events(list(ids.values()) + [copy_url]) if secret in e.model_dump_json()]

    # Lineage of the copy: copied (in the flow run) from the source's version, which its task wrote.
    lin = rh.lineage(copy_name)
    assert [hop.event for hop in lin.hops] == ["copied", "written"]
    assert (lin.hops[1].resource.name, lin.hops[1].resource.version) == (src_name, version)
    assert lin.hops[0].flow_run.id == str(run_id) and lin.hops[1].flow_run.id == str(run_id)
    assert lin.hops[1].task_run.name.startswith("make_table")
    assert lin.hops[1].flow == "pipeline"
    # ... and the source knows what was made from it: the copy (saved under its name since) and the CLI's.
    assert [(c.resource.name, c.resource.url, c.source_version) for c in rh.lineage(src_name).derived] == [
        (copy_name, copy_url, version), (None, str(tmp_path / "cp"), version)]

    shown = cli("lineage", copy_name)
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == f"table {copy_name} @ {version} ({copy_url})"
    assert f"from table {src_name} @ {version} ({src_path})" in shown.stdout
    assert f"by flow run '{lin.hops[0].flow_run.name}' (flow 'pipeline')" in shown.stdout

    unknown = unique_name("never-saved")
    with pytest.raises(rh.NotFound, match=f"No resource named '{unknown}' is saved"):
        rh.lineage(unknown)
    missing = cli("lineage", unknown)
    assert missing.exit_code == 1 and missing.stderr.startswith(f"rh-prefect: error: No resource named '{unknown}'")


@pytest.mark.servers
def test_the_events_of_a_short_plain_script_reach_the_server(prefect_server, tmp_path):
    where = tmp_path / "data"
    script = textwrap.dedent("""
        import sys
        import rh_prefect as rh
        rh.folder(path=sys.argv[1]).put({"a.txt": b"a"})
    """)
    done = subprocess.run([sys.executable, "-c", script, str(where)], env=_script_env(prefect_server.api_url,
                          tmp_path / "home"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Still processing items" not in done.stderr  # the queue was settled before Prefect drained it at exit
    event = _wait_events({("rh.resource.written", f"rh.folder.{where}")})[("rh.resource.written", f"rh.folder.{where}")]
    assert event.payload == {"files": ["a.txt"]} and "flow-run" not in _roles(event)


def test_a_server_that_does_not_answer_costs_one_warning_and_no_data(tmp_path):
    where = tmp_path / "data"
    script = textwrap.dedent("""
        import sys
        import rh_prefect as rh
        f = rh.folder(path=sys.argv[1])
        f.put({"a.txt": b"a"})
        f.put({"b.txt": b"b"})
        f.rm(["a.txt"])
        print(f.ls(full_paths=False))
    """)
    dead = f"http://127.0.0.1:{free_port()}/api"
    done = subprocess.run([sys.executable, "-c", script, str(where)], env=_script_env(dead, tmp_path / "home"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['b.txt']"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"The Prefect server at {dead} did not answer" in lines[0], done.stderr
    # Prefect's events queue was never started against it: no reconnecting, no failure at exit.
    assert "EventsWorker" not in done.stderr and "Unable to connect" not in done.stderr


def test_asset_keys_are_storage_urls():
    from rh_prefect.runtime.events import asset_key

    assert asset_key("s3://bucket/tables/t") == "s3://bucket/tables/t"
    assert asset_key("/home/me/t") == "file:///home/me/t"
    assert asset_key("/home/me/with space") is None  # Prefect refuses it as a key: no asset event, the rh one stays
