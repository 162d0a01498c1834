"""Table on every writable system: the six kinds, atomic versions, append, partitions, copies, the registry.

Everything runs against the suite's real servers (sshd, moto, fake-gcs-server, Prefect). Stored files are
inspected with the system's own fsspec filesystem, behind the Table API's back.

Every kind (arrow, pandas, dask, Hugging Face, polars, Ray on a small local Ray instance) round-trips on every
system. Streaming, shuffling, partitions, appends and concurrent readers run on every system.
"""

from __future__ import annotations

import json
import posixpath
import os
import sys
import threading

import dask.dataframe as dd
import datasets
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from prefect.blocks.core import Block

import rh_prefect as rh
from rh_prefect import names, settings
from rh_prefect.errors import InvalidArgument, MissingDependency, NotFound, SchemaMismatch
from rh_prefect.resources.table import (
    DaskTable, HuggingFaceTable, PandasTable, PolarsTable, RayTable, Table,
)
from rh_prefect.tables import dataset as tds

from helpers import prefect_client, wait_for

# Writing a table runs a Prefect task, so nearly every test here needs the Prefect server.
pytestmark = pytest.mark.servers

SYSTEMS = ["file", "ssh", "s3", "gs"]
KIND_CLASS = {"arrow": Table, "pandas": PandasTable, "dask": DaskTable, "huggingface": HuggingFaceTable,
              "polars": PolarsTable, "ray": RayTable}
# every kind on every system (issue 3: "for each kind on local, cluster, S3 and GCS")
ROUNDTRIPS = [(kind, sysname) for sysname in ("file", "ssh", "s3", "gs") for kind in KIND_CLASS]


# ----------------------------------------------------------------------------------------------- helpers
def frame(n: int, start: int = 0) -> pd.DataFrame:
    ids = np.arange(start, start + n, dtype=np.int64)
    return pd.DataFrame({"id": ids, "name": [f"name-{i}" for i in ids], "score": ids * 0.5,
                         "part": [f"p{i % 3}" for i in ids]})


def rows_of_frame(df: pd.DataFrame) -> list[dict]:
    return pa.Table.from_pandas(df, preserve_index=False).to_pylist()


def make(kind: str, df: pd.DataFrame):
    if kind == "arrow":
        return pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    if kind == "pandas":
        return df
    if kind == "dask":
        return dd.from_pandas(df, npartitions=3)
    if kind == "huggingface":
        return datasets.Dataset.from_dict(df.to_dict("list"))
    if kind == "polars":
        return pl.DataFrame(df.to_dict("list"))
    if kind == "ray":
        return ray_data().from_pandas(df)
    raise AssertionError(kind)


_RAY_STARTED = []


def ray_data():
    """ray.data, on a small local Ray instance started on first use (stopped at the end of the session)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20,
                 configure_logging=False)
        _RAY_STARTED.append(ray)
        # A user who wants rows in file order asks Ray for it (Ray may otherwise reorder blocks).
        ray.data.DataContext.get_current().execution_options.preserve_order = True
    return ray.data


@pytest.fixture(scope="module", autouse=True)
def _stop_ray():
    yield
    for ray in _RAY_STARTED:
        ray.shutdown()


def rows(batch) -> list[dict]:
    """Rows of a batch in any stream format."""
    if isinstance(batch, (pa.RecordBatch, pa.Table)):
        return batch.to_pylist()
    if isinstance(batch, pd.DataFrame):
        return pa.Table.from_pandas(batch, preserve_index=False).to_pylist()
    if isinstance(batch, pl.DataFrame):
        return batch.to_dicts()
    if isinstance(batch, dd.DataFrame):
        return rows(batch.compute())
    if isinstance(batch, datasets.Dataset):
        return batch.with_format("arrow")[:].to_pylist()
    if type(batch).__module__.startswith("ray."):
        return rows(batch.to_pandas())
    if isinstance(batch, dict):
        cols = list(batch)
        return [{c: _py(batch[c][i]) for c in cols} for i in range(len(batch[cols[0]]))]
    raise AssertionError(type(batch))


def _py(value):
    return value.item() if isinstance(value, np.generic) else value


def batch_len(batch) -> int:
    return len(batch[next(iter(batch))]) if isinstance(batch, dict) else len(batch)


def assert_native_equal(kind: str, fetched, original) -> None:
    if kind == "arrow":
        assert isinstance(fetched, pa.Table) and fetched.equals(original)
    elif kind == "pandas":
        pd.testing.assert_frame_equal(fetched, original)
    elif kind == "dask":
        assert isinstance(fetched, dd.DataFrame)
        pd.testing.assert_frame_equal(fetched.compute().reset_index(drop=True),
                                      original.compute().reset_index(drop=True))
    elif kind == "huggingface":
        assert isinstance(fetched, datasets.Dataset)
        assert fetched.features == original.features
        assert fetched.to_dict() == original.to_dict()
    elif kind == "polars":
        assert isinstance(fetched, pl.DataFrame) and fetched.equals(original)
    elif kind == "ray":
        rd = ray_data()
        from ray.data.dataset import MaterializedDataset

        assert isinstance(fetched, rd.Dataset) and not isinstance(fetched, MaterializedDataset)  # lazy
        assert fetched.columns() == original.columns()
        assert rows(fetched) == rows(original)  # same values in the same order (Ray reads strings as large_string)
    else:
        raise AssertionError(kind)


def version_dirs(t: Table) -> list[str]:
    fs = t.sys.fs
    fs.invalidate_cache()
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(t.fs_path, detail=False)
                  if posixpath.basename(p.rstrip("/")).startswith("v-"))


def pointer(t: Table) -> dict:
    return json.loads(t.sys.fs.cat_file(posixpath.join(t.fs_path, tds.POINTER)))


# ----------------------------------------------------------------------------------------------- kinds x systems
@pytest.mark.parametrize("kind,sysname", ROUNDTRIPS, ids=[f"{k}-{s}" for k, s in ROUNDTRIPS])
def test_write_save_reload_stream_fetch(kind, sysname, places, unique_name, small_groups):
    system, base = places[sysname]
    df = frame(250)
    original = make(kind, df)
    name = unique_name("tbl")
    t = rh.table(data=original, name=name, path=f"{base}/tbl", system=system,
                 metadata={"source": "test"}).save()
    assert type(t) is KIND_CLASS[kind] and t.kind == kind

    reloaded = rh.table(name=name)
    assert type(reloaded) is KIND_CLASS[kind]
    assert reloaded.kind == kind and reloaded.row_count == 250 and reloaded.metadata == {"source": "test"}
    assert "id: int64" in reloaded.table_schema and len(reloaded) == 250
    assert reloaded.schema.names == ["id", "name", "score", "part"]

    batches = list(reloaded.stream(batch_size=10))
    assert [batch_len(b) for b in batches] == [10] * 25  # exact sizes across 100-row groups and files
    assert [r for b in batches for r in rows(b)] == rows_of_frame(df)

    assert_native_equal(kind, reloaded.fetch(), original)
    assert rows(reloaded.fetch(columns=["id"], filters=[("id", "<", 5)])) == [{"id": i} for i in range(5)]
    assert rows(reloaded.head(3)) == rows_of_frame(df)[:3]


def test_block_shows_what_the_table_is(tmp_path, unique_name):
    name = unique_name("tbl")
    rh.table(data=frame(20), name=name, path=tmp_path / "t", partition_cols=["part"], stream_format="numpy",
             metadata={"owner": "ml"}).save()
    with prefect_client() as client:
        doc = client.read_block_document_by_name(names.encode(names.parse(name).full), "rh-table")
    data = doc.data
    assert data["kind"] == "pandas" and data["system"] == "file" and data["path"] == str(tmp_path / "t")
    assert data["partition_cols"] == ["part"] and data["row_count"] == 20 and data["stream_format"] == "numpy"
    assert data["metadata"] == {"owner": "ml"} and "score: double" in data["table_schema"]
    assert doc.block_type.slug == "rh-table"


def test_one_block_type_for_all_kinds():
    # Prefect dispatches the slug to Table (the subclasses neither take it over nor change the schema) ...
    assert Block.get_block_class_from_key("rh-table") is Table
    checksum = Table._calculate_schema_checksum()
    for klass in (PandasTable, DaskTable, RayTable, HuggingFaceTable, PolarsTable):
        assert klass.get_block_type_slug() == "rh-table"
        assert klass._calculate_schema_checksum() == checksum
        assert klass._to_block_type() == Table._to_block_type()
    # ... and the rh registry knows one type.
    from rh_prefect.runtime import registry

    assert registry.RESOURCE_TYPES["rh-table"] == "Table"
    assert sorted(registry.RESOURCE_TYPES) == ["rh-blob", "rh-cluster", "rh-folder", "rh-table"]


def test_loading_picks_the_kind_class(tmp_path, unique_name):
    name = unique_name("tbl")
    rh.table(data=pl.DataFrame({"a": [1, 2]}), name=name, path=tmp_path / "t").save()
    assert type(rh.table(name=name)) is PolarsTable
    assert type(rh.load(name)) is PolarsTable
    assert type(Table.load(names.parse(name).block_name)) is PolarsTable  # Prefect's own load, by block name
    with pytest.raises(NotFound, match="PolarsTable, not a PandasTable"):
        PandasTable._load_named(name)


# ----------------------------------------------------------------------------------------------- stream
@pytest.mark.parametrize("sysname", SYSTEMS)
def test_shuffle_is_deterministic_across_files_and_row_groups(sysname, places, small_groups):
    system, base = places[sysname]
    t = rh.table(data=frame(1000), path=f"{base}/shuf", system=system)
    assert len(pointer(t)["files"]) == 4  # 10 groups of 100 rows in files of 3 groups

    def ids(**kw):
        got = [b["id"].to_pylist() for b in t.stream(batch_size=64, batch_format="pyarrow", **kw)]
        assert [len(b) for b in got] == [64] * 15 + [40]
        return [i for b in got for i in b]

    first, again, other = ids(shuffle_seed=7), ids(shuffle_seed=7), ids(shuffle_seed=8)
    assert first == again
    assert first != other
    assert sorted(first) == sorted(other) == list(range(1000))
    # rows of different files and row groups are mixed within the first batch
    assert len({i // 100 for i in first[:64]}) >= 2
    small = ids(shuffle_seed=7, shuffle_buffer_size=150)
    assert sorted(small) == list(range(1000)) and small != first


def test_stream_formats_columns_filters_drop_last(tmp_path, small_groups):
    df = frame(250)
    t = rh.table(data=df, path=tmp_path / "t", stream_format="dict")
    assert isinstance(next(iter(t.stream(10))), dict)  # the saved stream_format wins over the kind's default
    expected = rows_of_frame(df)
    for fmt, typ in [("pyarrow", pa.RecordBatch), ("pandas", pd.DataFrame), ("numpy", dict), ("dict", dict),
                     ("polars", pl.DataFrame)]:
        batches = list(t.stream(batch_size=30, batch_format=fmt))
        assert all(isinstance(b, typ) for b in batches)
        assert [batch_len(b) for b in batches] == [30] * 8 + [10]
        assert [r for b in batches for r in rows(b)] == expected
    numpy_batch = next(iter(t.stream(5, batch_format="numpy")))
    assert isinstance(numpy_batch["id"], np.ndarray) and numpy_batch["id"].tolist() == [0, 1, 2, 3, 4]

    dropped = list(t.stream(batch_size=30, drop_last=True, batch_format="pyarrow"))
    assert [len(b) for b in dropped] == [30] * 8
    sel = list(t.stream(batch_size=7, columns=["id"], filters=pc.field("id").isin(list(range(0, 250, 10))), batch_format="pyarrow"))
    assert [r for b in sel for r in b.to_pylist()] == [{"id": i} for i in range(0, 250, 10)]
    assert [len(b) for b in sel] == [7, 7, 7, 4]
    assert [r["id"] for r in t][:3] == [0, 1, 2] and len(list(t)) == 250


def test_a_script_that_ends_with_a_stream_exits_cleanly(tmp_path):
    # The stream's Prefect task run finishes on a thread of its own; a script that exits right after reading must
    # still record it, without Prefect's "can't register atexit after shutdown" traceback.
    import subprocess

    script = tmp_path / "read.py"
    script.write_text(
        "import pyarrow as pa\nimport rh_prefect as rh\n"
        f"t = rh.table(data=pa.table({{'id': list(range(50))}}), path={str(tmp_path / 't')!r})\n"
        "print(sum(r['id'] for r in t))\n"
    )
    # Task-run lines of calls outside a flow are quiet by default; show them to see the stream's record.
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RH_PREFECT_TASK_LOGS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(sum(range(50)))
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
    assert "Task run 'rh-table-stream' - Finished in state Completed()" in proc.stderr


def test_a_long_stream_shows_as_running_and_a_short_one_is_recorded_at_its_end(tmp_path):
    # A stream is one Prefect task run. It starts once the stream has run for RECORD_AFTER_SECONDS, so a slow
    # consumer sees it Running in the UI; a sub-second stream is recorded after its last batch.
    import time
    from datetime import datetime, timezone

    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName, TaskRunFilterStartTime
    from prefect.client.schemas.sorting import TaskRunSort

    from rh_prefect import settings

    RECORD_AFTER_SECONDS = settings.current().stream_record_after

    def stream_runs(since):
        with prefect_client() as c:
            return c.read_task_runs(task_run_filter=TaskRunFilter(
                name=TaskRunFilterName(any_=["rh-table-stream"]),
                start_time=TaskRunFilterStartTime(after_=since)), sort=TaskRunSort.EXPECTED_START_TIME_DESC)

    t = rh.table(data=frame(100), path=tmp_path / "t")
    since = datetime.now(timezone.utc)
    s = t.stream(batch_size=10, batch_format="pyarrow")
    first = next(s)
    assert s.recorded(timeout=0) is False  # not started yet
    time.sleep(RECORD_AFTER_SECONDS + 0.2)
    second = next(s)
    running = wait_for(lambda: [r for r in stream_runs(since) if r.state and r.state.is_running()], 20,
                       "the stream's task run to show as running")
    assert len(running) == 1, stream_runs(since)
    rest = list(s)
    assert [r["id"] for b in [first, second, *rest] for r in b.to_pylist()] == list(range(100))
    assert s.recorded(timeout=30)
    done = wait_for(lambda: [r for r in stream_runs(since) if r.id == running[0].id and r.state.is_completed()], 20,
                    "the stream's task run to complete")
    assert done, stream_runs(since)

    since = datetime.now(timezone.utc)
    quick = t.stream(batch_size=10, batch_format="pyarrow")
    assert sum(len(b) for b in quick) == 100
    assert quick.recorded(timeout=30)
    assert wait_for(lambda: [r for r in stream_runs(since) if r.state.is_completed()], 20,
                    "the quick stream's task run to be recorded as completed")


def test_stream_resumes_at_a_row_and_counts_rows(tmp_path, small_groups):
    t = rh.table(data=frame(250), path=tmp_path / "t")
    s = t.stream(batch_size=40, batch_format="pyarrow")
    first = [next(s), next(s), next(s)]
    assert s.rows_delivered == 120
    s.close()
    rest = list(t.stream(batch_size=40, batch_format="pyarrow", start_row=s.rows_delivered))
    assert [r["id"] for b in first + rest for r in b.to_pylist()] == list(range(250))
    # a shuffled stream resumes too: its order is a function of the seed and the stored metadata
    full = [r["id"] for b in t.stream(50, shuffle_seed=3, batch_format="pyarrow") for r in b.to_pylist()]
    tail = [r["id"] for b in t.stream(50, shuffle_seed=3, batch_format="pyarrow", start_row=130)
            for r in b.to_pylist()]
    assert tail == full[130:]


def test_transient_read_errors_are_retried_without_duplicates(tmp_path, small_groups, monkeypatch):
    from rh_prefect.runtime import tasks
    from rh_prefect.tables import stream as tstream

    monkeypatch.setitem(tasks.RETRY_POLICY, "retry_delay_seconds", [0.01] * 4)
    t = rh.table(data=frame(500), path=tmp_path / "t")

    # The ordered scan: the connection drops twice after a few row groups (at rows 200 and 300)
    real_scan = tstream._scan_from
    starts = []

    def dropping_scan(snapshot, columns, position):
        starts.append(position)
        for i, batch in enumerate(real_scan(snapshot, columns, position)):
            if len(starts) <= 2 and i == 2 - len(starts) + 1:
                raise ConnectionResetError(104, "Connection reset by peer")
            yield batch

    monkeypatch.setattr(tstream, "_scan_from", dropping_scan)
    got = [r["id"] for b in t.stream(batch_size=33, batch_format="pyarrow") for r in b.to_pylist()]
    assert starts == [0, 200, 300]  # resumed at the next undelivered row each time
    assert got == list(range(500))  # every row exactly once, in order

    # Unit by unit (a filtered stream): one row group fails twice, then reads
    real_read = tds.Snapshot.read_row_group
    failures = {"left": 2}

    def flaky(self, index, group, columns, filter):
        if (index, group) == (1, 1) and failures["left"]:
            failures["left"] -= 1
            raise ConnectionResetError(104, "Connection reset by peer")
        return real_read(self, index, group, columns, filter)

    monkeypatch.setattr(tds.Snapshot, "read_row_group", flaky)
    got = [r["id"] for b in t.stream(batch_size=33, filters=pc.field("id") >= 0, batch_format="pyarrow")
           for r in b.to_pylist()]
    assert failures["left"] == 0 and got == list(range(500))

    def refused(self, index, group, columns, filter):
        raise PermissionError("Access denied")

    monkeypatch.setattr(tds.Snapshot, "read_row_group", refused)
    with pytest.raises(PermissionError, match="Access denied"):  # a user error is not retried
        list(t.stream(batch_size=33, shuffle_seed=1))


def test_bad_stream_arguments(tmp_path):
    t = rh.table(data=frame(10), path=tmp_path / "t")
    for kwargs, message in [
        (dict(batch_size=0), "batch_size must be a positive int, got 0"),
        (dict(batch_size=-3), "batch_size must be a positive int"),
        (dict(batch_size=2.5), "batch_size must be a positive int"),
        (dict(batch_size=5, batch_format="xml"), "Unknown batch format 'xml'"),
        (dict(batch_size=5, shuffle_seed="a"), "shuffle_seed must be an int"),
        (dict(batch_size=5, prefetch_batches=-1), "prefetch_batches must be a non-negative int"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            t.stream(**kwargs)
    with pytest.raises(InvalidArgument, match=r"Unknown column\(s\) \['nope'\]"):
        list(t.stream(5, columns=["nope"]))


# ----------------------------------------------------------------------------------------------- writes
@pytest.mark.parametrize("sysname", SYSTEMS)
def test_partitioned_write_reloads_the_same_rows(sysname, places, unique_name):
    system, base = places[sysname]
    df = frame(300)
    name = unique_name("tbl")
    rh.table(data=df, name=name, path=f"{base}/parts", system=system, partition_cols=["part"]).save()
    t = rh.table(name=name)
    assert t.partition_cols == ["part"]
    files = [f["path"].split("/", 1)[1] for f in pointer(t)["files"]]
    assert sorted(files) == ["part=p0/part-0.parquet", "part=p1/part-0.parquet", "part=p2/part-0.parquet"]
    fetched = t.fetch()
    assert list(fetched.columns) == ["id", "name", "score", "part"]
    pd.testing.assert_frame_equal(fetched.sort_values("id").reset_index(drop=True), df)
    streamed = [r for b in t.stream(batch_size=45) for r in rows(b)]
    assert sorted(streamed, key=lambda r: r["id"]) == rows_of_frame(df)
    only = t.fetch(filters=[("part", "=", "p1")])
    assert only["id"].tolist() == list(range(1, 300, 3)) and set(only["part"]) == {"p1"}


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_append_adds_rows_and_rejects_other_schemas(sysname, places, unique_name):
    system, base = places[sysname]
    name = unique_name("tbl")
    t = rh.table(data=frame(100), name=name, path=f"{base}/app", system=system).save()
    t.write(frame(50, start=100), mode="append")
    assert t.row_count == 150 and rh.table(name=name).row_count == 150  # the registry entry follows
    got = [r for b in t.stream(batch_size=16) for r in rows(b)]
    assert got == rows_of_frame(frame(150))
    assert len(version_dirs(t)) == 2  # the old files stay where they are: nothing is copied

    before = pointer(t)
    bad = frame(5).rename(columns={"score": "points"}).astype({"id": "float64"})
    with pytest.raises(SchemaMismatch) as err:
        t.write(bad, mode="append")
    message = str(err.value)
    assert "column 'id' is double but the table has int64" in message
    assert "column 'score' (double) is missing" in message
    assert "column 'points' (double) is not in the table" in message
    assert "Nothing was written" in message
    assert pointer(t) == before and len(version_dirs(t)) == 2 and len(t) == 150


def test_overwrite_keeps_the_old_version_until_retention_drops_it(tmp_path, small_groups):
    t = rh.table(data=frame(1000), path=tmp_path / "t")
    assert len(pointer(t)["files"]) == 4
    old = version_dirs(t)
    with settings.override(table_versions_kept=2, versions_min_age=0):
        t.write(frame(120, start=5000))
        assert version_dirs(t) == sorted(old + [t.version])  # the old version is kept, readable by id
        t.write(frame(30, start=9000))
    new = version_dirs(t)
    assert len(new) == 2 and old[0] not in new  # the oldest is dropped: its manifest and its files
    kept_manifests = [f"{tds.VERSIONS_DIR}/{v}.json" for v in new]
    listed = [f["path"] for v in new for f in json.loads((tmp_path / "t" / tds.VERSIONS_DIR / f"{v}.json").read_text())["files"]]
    on_disk = sorted(str(p.relative_to(tmp_path / "t")) for p in (tmp_path / "t").rglob("*") if p.is_file())
    assert on_disk == sorted([tds.POINTER, *kept_manifests, *listed])
    assert [r["id"] for r in t] == list(range(9000, 9030))


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_concurrent_reader_sees_a_complete_version(sysname, places, small_groups):
    system, base = places[sysname]
    versions = {v: pd.DataFrame({"id": np.arange(n), "version": v}) for v, n in ((1, 300), (2, 450))}
    t = rh.table(data=versions[1], path=f"{base}/conc", system=system)
    reader = rh.table(path=f"{base}/conc", system=system)
    reader.version = None  # a block that records no version reads the current one, whichever it is at each read
    seen, problems = [], []
    done = threading.Event()

    def read_loop():
        while not done.is_set():
            try:
                df = reader.fetch()
            except Exception as exc:  # recorded and asserted on below
                problems.append(exc)
                return
            seen.append(df)

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        for i in range(4):
            t.write(versions[2 if i % 2 == 0 else 1])
    finally:
        done.set()
        thread.join()
    assert not problems
    assert len(seen) >= 2
    for df in seen:
        assert len(set(df["version"])) == 1, "a read mixed two versions"
        v = int(df["version"].iloc[0])
        assert df["id"].tolist() == list(range(len(versions[v])))
    assert len(version_dirs(t)) == 5  # every version: all younger than settings.versions_min_age

    # A stream that is overtaken by an overwrite either finishes its version or stops with a clear error.
    s = reader.stream(batch_size=50, batch_format="pyarrow", prefetch_batches=0)
    first = next(s)
    t.write(versions[2])
    t.write(versions[1])
    try:
        rest = list(s)
    except NotFound as exc:
        assert "was overwritten while being streamed, after 100 rows" in str(exc)  # one 100-row group
    else:
        ids = [r["id"] for b in [first, *rest] for r in b.to_pylist()]
        assert ids in (list(range(300)), list(range(450)))


# ----------------------------------------------------------------------------------------------- factory
def test_name_alone_loads_and_missing_names_are_clear(unique_name):
    with pytest.raises(NotFound, match="No resource named 'tbl-missing-x' is saved"):
        rh.table(name="tbl-missing-x")


def test_dryrun_never_touches_data(tmp_path, unique_name):
    name = unique_name("tbl")
    t = rh.table(data=frame(10), name=name, path=tmp_path / "t").save()
    t.rm()  # the data is gone; a dryrun reference still loads from the registry alone
    ref = rh.table(name=name, dryrun=True)
    assert type(ref) is PandasTable and ref.row_count == 10 and not ref.exists_in_system()

    lazy = rh.table(data=frame(5), path=tmp_path / "later", dryrun=True)
    assert not (tmp_path / "later").exists()
    assert type(lazy) is PandasTable
    lazy.write()
    assert len(lazy) == 5 and lazy.exists_in_system()

    by_path = rh.table(path=tmp_path / "nowhere", dryrun=True)
    assert type(by_path) is Table and not (tmp_path / "nowhere").exists()


def test_missing_bucket_needs_mkdir(s3_env, s3_server):
    bucket = f"rh-test-mk-{np.random.default_rng().integers(1e9)}"
    with pytest.raises(NotFound, match=f"Bucket '{bucket}' does not exist .* pass mkdir=True"):
        rh.table(data=frame(5), path=f"/{bucket}/t", system="s3")
    t = rh.table(data=frame(5), path=f"/{bucket}/t", system="s3", mkdir=True)
    assert len(t) == 5
    t.sys.fs.rm(bucket, recursive=True)


def test_unknown_data_and_bad_arguments(tmp_path):
    with pytest.raises(InvalidArgument, match="cannot store a builtins.list; pass one of: datasets.Dataset"):
        rh.table(data=[1, 2, 3], path=tmp_path / "t")
    with pytest.raises(InvalidArgument, match=r"partition_cols \['nope'\] are not columns"):
        rh.table(data=frame(5), path=tmp_path / "t", partition_cols=["nope"])
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").rglob("*.parquet"))
    t = rh.table(data=frame(5), path=tmp_path / "t2")
    with pytest.raises(InvalidArgument, match="mode must be 'overwrite' or 'append'"):
        t.write(frame(5), mode="upsert")
    with pytest.raises(NotFound, match="No table is stored at"):
        rh.table(path=tmp_path / "empty").fetch()


def test_a_kind_without_its_library_says_what_to_install(tmp_path, unique_name, monkeypatch):
    # A machine without Ray (an optional extra): hide the installed package from imports.
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    name = unique_name("tbl")
    t = rh.table(data=frame(10), path=tmp_path / "t")
    RayTable(path=t.path, system="file").save(name)
    ray_table = rh.table(name=name)
    assert type(ray_table) is RayTable and ray_table.kind == "ray"
    with pytest.raises(MissingDependency, match=r"pip install 'rh-prefect\[ray\]'"):
        ray_table.fetch()
    assert [r["id"] for r in ray_table][:3] == [0, 1, 2]  # streaming needs no Ray


# ----------------------------------------------------------------------------------------------- copies
def test_to_copies_the_current_version_between_systems(places, small_groups):
    src = rh.table(data=frame(400), path=f"{places['file'][1]}/src")
    src.write(frame(100, start=400), mode="append")
    s3 = src.to(places["s3"][0], path=f"{places['s3'][1]}/copy")
    gs = s3.to(places["gs"][0], path=f"{places['gs'][1]}/copy")
    ssh = gs.to(places["ssh"][0], path=f"{places['ssh'][1]}/copy")
    for t in (s3, gs, ssh):
        assert type(t) is PandasTable and len(t) == 500
        pd.testing.assert_frame_equal(t.fetch(), frame(500))
        files = sorted(f["path"] for f in pointer(t)["files"])
        assert files == sorted(f["path"] for f in pointer(src)["files"])
    first = s3.version
    assert first == src.version
    src.write(frame(10))  # overwrite, then copy again: the destination gets the new version, and keeps the old
    s3 = src.to(places["s3"][0], path=f"{places['s3'][1]}/copy")
    assert len(s3) == 10 and [(v.id, v.current) for v in s3.versions()] == [(first, False), (src.version, True)]


def test_rm_and_exists(places):
    system, base = places["s3"]
    t = rh.table(data=frame(10), path=f"{base}/gone", system=system)
    assert t.exists_in_system()
    t.rm()
    assert not t.exists_in_system()
    t.sys.fs.invalidate_cache()
    assert not t.sys.fs.exists(t.fs_path)
    with pytest.raises(NotFound, match="No table is stored at s3://"):
        len(t)


def test_dask_fetch_reads_on_a_distributed_client(tmp_path, small_groups):
    from distributed import Client, LocalCluster

    df = frame(1000)
    t = rh.table(data=dd.from_pandas(df, npartitions=4), path=tmp_path / "t")
    lazy = t.fetch(columns=["id", "score"])
    assert lazy.npartitions == len(pointer(t)["files"]) == 4
    # a worker process: the read functions travel to it pickled and open the files there
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        result = lazy.compute()
        assert len(client.scheduler_info()["workers"]) == 1
    pd.testing.assert_frame_equal(result.reset_index(drop=True), df[["id", "score"]])


def test_a_table_is_a_valid_task_parameter(tmp_path):
    from prefect import flow, task

    @task
    def count(t: Table) -> int:
        return len(t)

    @flow
    def f(t: Table) -> int:
        return count(t)

    t = rh.table(data=frame(12), path=tmp_path / "t")
    assert f(t) == 12
    assert dict(t)["kind"] == "pandas"


def test_write_inside_a_flow_publishes_a_table_artifact(tmp_path):
    """Issue 6 point 4: the UI shows schema, row count and the first rows of a table written in a flow."""
    from prefect import flow
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.context import get_run_context

    df = pd.DataFrame({"id": list(range(25)), "word": [f"w{i}" for i in range(25)]})

    @flow(name="rh-table-artifact-test")
    def write_it() -> str:
        rh.table(data=df, path=str(tmp_path / "t"))
        return str(get_run_context().flow_run.id)

    run_id = write_it()
    with prefect_client() as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    tables = [a for a in arts if a.type == "table"]
    assert len(tables) == 1, [a.type for a in arts]
    rows = json.loads(tables[0].data) if isinstance(tables[0].data, str) else tables[0].data
    assert rows == [{"id": i, "word": f"w{i}"} for i in range(10)]
    assert "25 rows" in tables[0].description
    assert "id: int64" in tables[0].description and "word:" in tables[0].description


def test_loading_the_block_types_leaves_the_dataset_layer_unimported():
    """Prefect imports rh_prefect.blocks (the prefect.collections entry point) in every process that resolves a
    block, each flow run of a deployment with block parameters included; pyarrow.dataset and pandas are paid
    for only by processes that use a Table."""
    import subprocess
    import sys

    probe = ("import sys, rh_prefect.blocks as b; "
             "print(sorted(m for m in ('pyarrow.dataset', 'pandas') if m in sys.modules), b.Table.__name__)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["[]", "Table"], out.stdout + out.stderr
    use = ("import sys, pyarrow as pa, rh_prefect as rh, tempfile; d = tempfile.mkdtemp(); "
           "t = rh.table(path=d + '/t', system='file'); t.write(pa.table({'a': [1, 2]})); "
           "print(t.fetch().to_pydict(), 'pyarrow.dataset' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", use], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[-2] == "{'a': [1, 2]} True", out.stdout + out.stderr
