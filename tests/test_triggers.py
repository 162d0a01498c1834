"""Runs triggered by data (issue 19, points 3 and 6): ``rh.on_update`` makes a Prefect Automation that runs a
deployment when a saved resource gets a new version, passing the resource by reference and the version id.

Against the suite's Prefect server (its triggers service, which also runs the actions, is on by default) and moto
S3. The deployment is on no work pool and no worker runs it: what is checked is the flow run the automation creates
(exactly one per new version, carrying the version and a reference that resolves to the resource with its secrets),
which is what a worker would start. "No run" is never waited out: a later event that does start a run marks the
moment by which an earlier event would have started its own (the triggers service takes events in arrival order).
"""

from __future__ import annotations

import uuid
from typing import Optional

import pyarrow as pa
import pytest
from prefect import flow

import rh_prefect as rh
from helpers import prefect_client, wait_for
from rh_prefect.errors import InvalidArgument, NotFound

pytestmark = pytest.mark.servers

FLOW = "rh-test-on-update"


@flow(name=FLOW)
def consume(table: rh.Table, version: Optional[str] = None, note: str = "") -> Optional[str]:
    """A flow that takes the table that changed and its new version (never run here: no worker)."""
    return rh.table(name=table.name, version=version).version if version else None


@flow(name="rh-test-on-update-blob")
def consume_blob(ckpt: rh.Blob, version: str = "") -> str:
    return version


@flow(name="rh-test-on-update-epochs")
def needs_epochs(table: rh.Table, epochs: int, version: str = "") -> int:
    return epochs


@flow(name="rh-test-no-table")
def no_table(text: str = "") -> str:
    return text


def deploy(fn, enforce: bool = True) -> tuple[str, str]:
    """Register ``fn`` as a deployment with no work pool; ``(flow/deployment name, deployment id)``. Prefect's
    default: the server checks every run's parameters against the flow's schema (block references included)."""
    name = f"d-{uuid.uuid4().hex[:8]}"
    dep_id = fn.to_deployment(name=name, enforce_parameter_schema=enforce).apply()
    return f"{fn.name}/{name}", str(dep_id)


@pytest.fixture(scope="module")
def deployment(prefect_server):
    name, dep_id = deploy(consume)
    yield name, dep_id
    with prefect_client() as client:
        client.delete_deployment(dep_id)


def runs_of(dep_id: str) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with prefect_client() as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])))


def versions_run(dep_id: str) -> list[str]:
    return sorted(r.parameters.get("version") for r in runs_of(dep_id))


def wait_for_run(dep_id: str, version: str) -> None:
    wait_for(lambda: version in versions_run(dep_id), 30, f"a flow run carrying version {version}", interval=0.25)


def automations_named(name: str) -> list:
    with prefect_client() as client:
        return client.read_automations_by_name(name)


def data(*values: int) -> pa.Table:
    return pa.table({"a": pa.array(values, pa.int64())})


def test_a_write_runs_the_deployment_once_with_the_version_and_the_table_by_reference(
        deployment, s3_server, s3_bucket, tmp_path, unique_name):
    from prefect.blocks.core import Block

    dep_name, dep_id = deployment
    secret = f"s3cret-{uuid.uuid4().hex}"
    creds = rh.S3Credentials(aws_access_key_id=s3_server.access_key, aws_secret_access_key=s3_server.secret_key,
                             endpoint_url=s3_server.endpoint_url, aws_session_token=secret)
    a_name, b_name = f"/ds/{unique_name('trig-a')}", f"/ds/{unique_name('trig-b')}"
    a = rh.table(data=data(1), name=a_name, system="s3", path=f"/{s3_bucket}/a", credentials=creds).save()
    b = rh.table(data=data(2), name=b_name, path=tmp_path / "b").save()

    auto = rh.on_update(a_name, deployment=dep_name, parameters={"note": "first"})
    assert auto.id is not None and auto.name == f"rh-on-update {a_name} -> {dep_name}"
    assert auto.trigger.expect == {"rh.resource.written"}
    assert auto.trigger.posture == "Reactive" and auto.trigger.threshold == 1
    assert rh.on_update(a, deployment=dep_name, parameters={"note": "first"}).id == auto.id  # idempotent
    assert len(automations_named(auto.name)) == 1
    assert runs_of(dep_id) == []  # creating it started nothing

    a.write(data(1, 2))
    v2 = a.version
    wait_for_run(dep_id, v2)
    [run] = runs_of(dep_id)
    assert run.parameters["note"] == "first"
    assert run.parameters["table"] == {"$ref": {"block_document_id": str(a._block_document_id)}}
    resolved = Block.load_from_ref(run.parameters["table"]["$ref"])  # what the flow run receives
    assert (type(resolved).__name__, resolved.name, resolved.version) == ("Table", a_name, v2)
    assert resolved.credentials.aws_session_token.get_secret_value() == secret  # by reference: secrets survive

    # Another table's write starts nothing; the next write of a starts exactly one more run.
    b.write(data(3))
    a.write(data(4))
    v3 = a.version
    wait_for_run(dep_id, v3)
    assert versions_run(dep_id) == sorted([v2, v3])

    # Changed parameters update the same automation.
    again = rh.on_update(a_name, deployment=dep_name, parameters={"note": "second"})
    assert again.id == auto.id and len(automations_named(auto.name)) == 1
    with prefect_client() as client:
        assert client.read_automation(auto.id).actions[0].parameters["note"] == "second"

    # Deleted, it starts no more runs: b's own automation (created after) marks when a's write would have.
    assert auto.delete() is True
    auto_b = rh.on_update(b_name, deployment=dep_name)
    try:
        a.write(data(5))
        b.write(data(6))
        wait_for_run(dep_id, b.version)
        assert versions_run(dep_id) == sorted([v2, v3, b.version])
        runs = {r.parameters["version"]: r for r in runs_of(dep_id)}
        assert runs[b.version].parameters["table"]["$ref"]["block_document_id"] == str(b._block_document_id)
        assert "note" not in runs[b.version].parameters  # its own parameters: none fixed
    finally:
        auto_b.delete()
    rh.delete(a_name)
    rh.delete(b_name)


def test_a_blob_write_runs_the_deployment_too(tmp_path, unique_name, prefect_server):
    dep_name, dep_id = deploy(consume_blob)
    name = unique_name("trig-blob")
    b = rh.blob(data={"step": 1}, name=name, path=tmp_path / "ckpt.pkl").save()
    auto = rh.on_update(name, deployment=dep_name)
    try:
        b.write({"step": 2})
        wait_for_run(dep_id, b.version)
        [run] = runs_of(dep_id)
        assert run.parameters == {"ckpt": {"$ref": {"block_document_id": str(b._block_document_id)}},
                                  "version": b.version}
    finally:
        auto.delete()
        with prefect_client() as client:
            client.delete_deployment(dep_id)
        rh.delete(name)


def test_bad_input_raises_a_clear_error_and_creates_no_automation(deployment, tmp_path, unique_name):
    dep_name, _ = deployment
    name = unique_name("trig-bad")
    t = rh.table(data=data(1), name=name, path=tmp_path / "t").save()
    unsaved = rh.table(data=data(1), path=tmp_path / "u")
    enforced, enforced_id = deploy(needs_epochs)
    other, other_id = deploy(no_table)
    cases = [
        (lambda: rh.on_update("never-saved-xyz", deployment=dep_name), NotFound, "No resource named 'never-saved-xyz'"),
        (lambda: rh.on_update(unsaved, deployment=dep_name), NotFound, "needs a saved Folder, Table or Blob"),
        (lambda: rh.on_update(name, deployment=f"{FLOW}/no-such-deployment"), NotFound,
         f"No deployment '{FLOW}/no-such-deployment'"),
        (lambda: rh.on_update(name, deployment="just-a-flow-name"), InvalidArgument, "flow-name/deployment-name"),
        (lambda: rh.on_update(name, deployment=enforced), InvalidArgument, "would refuse the runs: .*'epochs' is a required property"),
        (lambda: rh.on_update(name, deployment=other), InvalidArgument, "no parameter typed as an rh Table"),
        (lambda: rh.on_update(name, deployment=dep_name, parameters={"lr": 0.1}), InvalidArgument,
         "has no parameter 'lr'"),
        (lambda: rh.on_update(name, deployment=dep_name, parameters={"version": "v"}), InvalidArgument,
         "leave it out"),
        (lambda: rh.on_update(name, deployment=dep_name, parameters={"note": object()}), InvalidArgument,
         "JSON values"),
    ]
    try:
        for call, error, message in cases:
            with pytest.raises(error, match=message) as info:
                call()
            assert "No automation was created" in str(info.value)
        for dep in (dep_name, enforced, other, f"{FLOW}/no-such-deployment"):
            assert automations_named(f"rh-on-update {rh.table(name=name).full_name} -> {dep}") == []
    finally:
        with prefect_client() as client:
            client.delete_deployment(enforced_id)
            client.delete_deployment(other_id)
        rh.delete(name)
    assert t.version is not None
