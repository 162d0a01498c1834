"""Caches keyed on the data (issue 19, point 4): ``rh.DATA_VERSIONS``, a Prefect cache policy whose key is the data
version of every rh resource among a task's parameters.

Tasks run against the suite's Prefect server with real results persisted (Prefect's default local result storage in
the test process's PREFECT_HOME); whether a task body ran is counted in the test.
"""

from __future__ import annotations

import shutil

import pyarrow as pa
import pytest
from prefect import flow, task
from prefect.cache_policies import INPUTS

import rh_prefect as rh

pytestmark = pytest.mark.servers

RAN: list[str] = []


@task(cache_policy=rh.DATA_VERSIONS)
def total(table: rh.Table) -> int:
    RAN.append("total")
    return sum(table.fetch()["a"].to_pylist())


@task(cache_policy=rh.DATA_VERSIONS + INPUTS)
def scaled(table: rh.Table, factor: int) -> int:
    RAN.append(f"scaled x{factor}")
    return factor * sum(table.fetch()["a"].to_pylist())


@task(cache_policy=rh.DATA_VERSIONS)
def file_count(folders: list) -> int:
    RAN.append("file_count")
    return sum(len(f.ls(recursive=True)) for f in folders)


@flow
def pipeline(name: str) -> tuple[int, int, int]:
    table = rh.table(name=name)  # loaded by name in each run: the registry's current version
    return total(table), scaled(table, 2), scaled(table, 3)


def data(*values: int) -> pa.Table:
    return pa.table({"a": pa.array(values, pa.int64())})


def test_a_task_is_served_from_cache_while_the_table_is_unchanged_and_runs_after_a_write(tmp_path, unique_name):
    name = unique_name("cache-t")
    t = rh.table(data=data(1, 2), name=name, path=tmp_path / "t").save()
    v1 = t.version
    RAN.clear()
    assert pipeline(name) == (3, 6, 9)
    assert RAN == ["total", "scaled x2", "scaled x3"]
    assert pipeline(name) == (3, 6, 9)  # unchanged table: every task from the cache
    assert RAN == ["total", "scaled x2", "scaled x3"]

    t.write(data(10))
    assert pipeline(name) == (10, 20, 30)  # a new version: every task runs again
    assert RAN == ["total", "scaled x2", "scaled x3"] * 2

    # A table pinned at a version is keyed on that version: v1's results are still cached.
    pinned = rh.table(name=name, version=v1)
    assert total(pinned) == 3 and scaled(pinned, 2) == 6
    assert rh.DATA_VERSIONS.compute_key(None, {"table": pinned}, {}) == \
        rh.DATA_VERSIONS.compute_key(None, {"table": rh.table(name=name, version=v1)}, {})
    assert len(RAN) == 6
    rh.delete(name)


def test_the_key_names_the_version_a_table_reads_and_reads_no_data(tmp_path, unique_name):
    from rh_prefect.runtime.caching import data_versions

    t = rh.table(data=data(1), path=tmp_path / "t")
    b = rh.blob(data={"step": 1}, path=tmp_path / "ckpt.pkl")
    inputs = {"xs": [t, {"ckpt": b}], "n": 3}
    assert data_versions(inputs) == {"xs[0]": t.version, "xs[1].ckpt": b.version}
    key = rh.DATA_VERSIONS.compute_key(None, inputs, {})
    # Nothing is read for a recorded version: the same key with the table's files moved away.
    shutil.move(tmp_path / "t", tmp_path / "moved")
    assert rh.DATA_VERSIONS.compute_key(None, inputs, {}) == key
    shutil.move(tmp_path / "moved", tmp_path / "t")
    b.write({"step": 2})  # a resource nested in the parameters changes the key too
    assert rh.DATA_VERSIONS.compute_key(None, inputs, {}) != key
    assert rh.DATA_VERSIONS.compute_key(None, {"n": 3}, {}) is None  # no rh resource: no key (not cached)
    # The key of a table object is the version that object reads, even after another object wrote a newer one.
    stale = rh.table(path=tmp_path / "t")
    rh.table(path=tmp_path / "t").write(data(2))
    assert data_versions({"t": stale}) == {"t": t.version}


def test_a_folder_is_keyed_on_its_listing(tmp_path, unique_name):
    f = rh.folder(path=tmp_path / "f")
    f.put({"a.txt": b"a", "sub/b.txt": b"bb"})
    other = rh.folder(path=tmp_path / "g")
    other.put({"c.txt": b"c"})
    RAN.clear()
    assert file_count([f, other]) == 3
    assert file_count([f, other]) == 3
    assert RAN == ["file_count"]  # served from the cache
    f.put({"sub/b.txt": b"changed!"}, overwrite=True)  # same name, new content
    assert file_count([f, other]) == 3
    other.put({"d.txt": b"d"})
    assert file_count([f, other]) == 4
    assert RAN == ["file_count"] * 3



@flow
def train_on(name: str, ckpt: str, ckpt_path: str) -> int:
    """Reads the table through the cached task, then writes a checkpoint: the write names what the run read."""
    n = total(rh.table(name=name))
    rh.blob(data={"n": n}, name=ckpt, path=ckpt_path).save(overwrite=True)
    return n


def test_a_result_served_from_the_cache_still_counts_as_a_read_in_lineage(tmp_path, unique_name):
    name, ckpt = unique_name("cache-lin"), unique_name("cache-ckpt")
    t = rh.table(data=data(1, 2), name=name, path=tmp_path / "t").save()
    RAN.clear()
    assert train_on(name, ckpt, str(tmp_path / "ckpt.pkl")) == 3
    assert train_on(name, ckpt, str(tmp_path / "ckpt.pkl")) == 3  # served from the cache: the table is not read
    assert RAN == ["total"]
    # The second run's checkpoint still names the table version its cached result was made from.
    origin = rh.lineage(ckpt).origin
    assert origin.flow == "train-on"
    assert [(h.resource.name, h.resource.version) for h in origin.inputs] == [(t.full_name, t.version)]
    rh.delete(ckpt)
    rh.delete(name)
