"""Folder as Prefect storage: a flow's result_storage and deployment storage (put/get_directory, from_source)."""

from __future__ import annotations

import asyncio
import textwrap

import pytest
from prefect import flow, task
from prefect.cache_policies import INPUTS
from prefect.filesystems import WritableDeploymentStorage, WritableFileSystem
from prefect.results import ResultStore

import rh_prefect as rh
from rh_prefect import names

from helpers import read_tree, write_tree


@pytest.fixture
def s3_folder(s3_env, s3_bucket, unique_name) -> rh.Folder:
    return rh.folder(name=unique_name("store"), path=f"/{s3_bucket}/prefect", system="s3")


def test_folder_is_prefect_storage():
    assert issubclass(rh.Folder, WritableFileSystem)
    assert issubclass(rh.Folder, WritableDeploymentStorage)


def test_read_write_path_sync_and_async(s3_folder):
    assert s3_folder.write_path("k/v.bin", b"payload").endswith("k/v.bin")
    assert s3_folder.read_path("k/v.bin") == b"payload"

    async def roundtrip() -> bytes:
        await s3_folder.awrite_path("k/w.bin", b"async payload")
        return await s3_folder.aread_path("k/w.bin")

    assert asyncio.run(roundtrip()) == b"async payload"
    with pytest.raises(rh.NotFound, match="No file 'nope'"):
        s3_folder.read_path("nope")


def test_flow_results_stored_in_folder_and_read_back(s3_folder):
    s3_folder.save()  # Prefect requires result storage to be saved on the server
    calls = []

    @task(persist_result=True, result_storage=s3_folder, cache_policy=INPUTS, cache_result_in_memory=False)
    def square(x: int) -> dict:
        calls.append(x)
        return {"square": x * x, "payload": "r" * 1000}

    # The flow names the storage the way Prefect's docs do: "<block type slug>/<block document name>".
    @flow(persist_result=True, result_storage=f"rh-folder/{names.parse(s3_folder.name).block_name}")
    def compute(x: int) -> dict:
        return square(x)

    first = compute(7)
    assert first == {"square": 49, "payload": "r" * 1000}
    stored = s3_folder.ls(full_paths=False)
    assert stored  # the results Prefect persisted
    # Read back from the folder by Prefect's own result store (a fresh one: nothing cached in memory).
    values = [ResultStore(result_storage=s3_folder, cache_result_in_memory=False).read(key).result for key in stored]
    assert {"square": 49, "payload": "r" * 1000} in values

    # A second run finds the task's cached result in the folder (read back through read_path) and does
    # not run the task again.
    state = compute(7, return_state=True)
    assert state.result() == {"square": 49, "payload": "r" * 1000}
    assert calls == [7]
    # Without the stored results the task has to run again: the cache really lived in the folder.
    s3_folder.rm()
    assert compute(7) == {"square": 49, "payload": "r" * 1000}
    assert calls == [7, 7]


PROJECT = {
    "flows/hello.py": textwrap.dedent(
        """
        from prefect import flow

        @flow(name="hello-from-folder")
        def hello(who: str = "world") -> str:
            return f"hello {who}"
        """
    ).encode(),
    "flows/data/config.yaml": b"answer: 42\n",
    "README.md": b"# project\n",
    "scratch.tmp": b"not deployed\n",
}


def _write_project(root):
    """The project on local disk, with a .prefectignore that keeps scratch files from being deployed."""
    return write_tree(root, {**PROJECT, ".prefectignore": b"*.tmp\n"})


def test_put_and_get_directory_roundtrip(s3_folder, tmp_path):
    project = _write_project(tmp_path / "project")
    count = s3_folder.put_directory(local_path=str(project), to_path="code",
                                    ignore_file=str(project / ".prefectignore"))
    deployed = {k: v for k, v in PROJECT.items() if not k.endswith(".tmp")}
    assert count == len(deployed) + 1  # plus .prefectignore itself
    s3_folder.get_directory(from_path="code", local_path=str(tmp_path / "pulled"))
    pulled = read_tree(tmp_path / "pulled")
    assert "scratch.tmp" not in pulled
    assert {k: pulled[k] for k in deployed} == deployed


def test_async_directory_twins(s3_folder, tmp_path):
    project = _write_project(tmp_path / "project")

    async def go() -> None:
        await s3_folder.aput_directory(local_path=str(project), to_path="async-code")
        await s3_folder.aget_directory(from_path="async-code", local_path=str(tmp_path / "pulled"))

    asyncio.run(go())
    pulled = read_tree(tmp_path / "pulled")
    assert {k: pulled[k] for k in PROJECT} == PROJECT


def test_flow_from_source_folder(s3_folder, tmp_path):
    s3_folder.put_directory(local_path=str(_write_project(tmp_path / "project")))
    loaded = flow.from_source(source=s3_folder, entrypoint="flows/hello.py:hello")
    assert loaded.name == "hello-from-folder"
    assert loaded("folder") == "hello folder"


def test_pull_step_with_saved_folder(s3_folder, tmp_path, monkeypatch):
    from prefect.deployments.steps.pull import pull_with_block

    s3_folder.save().put_directory(local_path=str(_write_project(tmp_path / "project")))
    monkeypatch.chdir(tmp_path)
    out = asyncio.run(pull_with_block(block_document_name=names.parse(s3_folder.name).block_name,
                                      block_type_slug="rh-folder"))
    pulled = read_tree(tmp_path / out["directory"])
    assert pulled["flows/hello.py"] == PROJECT["flows/hello.py"]
