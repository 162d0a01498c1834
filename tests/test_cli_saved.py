"""The CLI on saved names: ``rh-prefect rm`` of a saved Table deletes it the way Table.rm() does (pointer first, then
its files, then the name: a reader sees the whole table or no table, never a half-deleted one), and ``cat`` of a
saved Blob prints the version its entry records."""

from __future__ import annotations

import pyarrow as pa
import pytest

import rh_prefect as rh

pytestmark = pytest.mark.servers  # every test saves a name on the Prefect server

ROWS = pa.table({"id": list(range(50)), "text": [f"row {i}" for i in range(50)]})


def _write_saved_table(sysname: str, tmp_path, s3_bucket: str, name: str) -> rh.Table:
    path = str(tmp_path / "t") if sysname == "file" else f"/{s3_bucket}/tables/t"
    # Two writes: the second leaves a pointer, the current version and the files of the first on the store.
    rh.table(ROWS, path=path, system=sysname)
    return rh.table(ROWS, name=name, path=path, system=sysname).save()


def _stored_files(t: rh.Table) -> list[str]:
    """What is stored under the table's path, read behind the Table API's back."""
    fs = t.sys.fs
    fs.invalidate_cache()
    return fs.find(t.fs_path) if fs.exists(t.fs_path) else []


@pytest.mark.parametrize("sysname", ["file", "s3"])
def test_rm_of_a_saved_table_removes_data_and_name(cli, sysname, tmp_path, s3_bucket, s3_env, unique_name):
    name = unique_name("cli-rm-table")
    t = _write_saved_table(sysname, tmp_path, s3_bucket, name)
    assert rh.table(name=name).fetch().equals(ROWS) and _stored_files(t)

    result = cli("rm", "-y", name)

    assert (result.exit_code, result.stdout) == (0, f"removed {t.url} and forgot {name}\n"), result.stderr
    with pytest.raises(rh.NotFound, match="No resource named"):
        rh.table(name=name)
    with pytest.raises(rh.NotFound, match="No table is stored at"):
        rh.table(path=t.path, system=sysname).fetch()
    assert _stored_files(t) == []


def test_an_interrupted_rm_leaves_no_table_and_a_second_rm_finishes(cli, tmp_path, monkeypatch, unique_name):
    """The store fails once the delete has begun (after the pointer, at the first data file): readers then find
    no table at all rather than a half-deleted one, and running rm again removes the rest and the name."""
    name = unique_name("cli-rm-cut")
    t = _write_saved_table("file", tmp_path, "", name)
    system_type = type(t.sys)
    real_rm_tree = system_type.rm_tree

    def failing_rm_tree(self, fs_path):
        raise PermissionError(13, "Permission denied", fs_path)

    monkeypatch.setattr(system_type, "rm_tree", failing_rm_tree)
    result = cli("rm", "-y", name)
    assert result.exit_code == 1 and result.stderr.startswith("rh-prefect: error: Permission denied"), result.stderr
    assert _stored_files(t)  # the data files are still there ...
    with pytest.raises(rh.NotFound, match="No table is stored at"):
        rh.table(name=name).fetch()  # ... but no reader sees them as a table
    monkeypatch.setattr(system_type, "rm_tree", real_rm_tree)

    result = cli("rm", "-y", name)

    assert (result.exit_code, result.stdout) == (0, f"removed {t.url} and forgot {name}\n"), result.stderr
    assert _stored_files(t) == [] and not rh.exists(name)


def test_cat_of_a_saved_blob_prints_the_version_its_entry_records(cli, tmp_path, unique_name):
    """The file at a saved blob's path is for other tools; `cat NAME` streams the recorded version, even when
    someone rewrote that file."""
    import rh_prefect as rh

    name = unique_name("cat-blob")
    path = tmp_path / "b.bin"
    rh.blob(data=b"recorded bytes", name=name, path=str(path), serializer="bytes").save()
    path.write_bytes(b"someone else's bytes")
    result = cli("cat", name)
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes == b"recorded bytes"
    rh.delete(name)
