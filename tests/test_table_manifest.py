"""The table pointer (manifest) on its own: what a reader finds in ``_rh_table.json``, and how a copy is split.

No server: part of the fast tier (``-m "not servers"``). Tables written and read on real systems: test_table.py.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from rh_prefect.errors import RhError
from rh_prefect.systems import get_system
from rh_prefect.tables import dataset

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("part", pa.string())])


def _manifest() -> dataset.Manifest:
    files = (dataset.FileEntry("v-1/part=a/f0.parquet", 250, 4096, (100, 100, 50)),
             dataset.FileEntry("v-2/part=b/f0.parquet", 30, 900, (30,)))
    return dataset.Manifest(version="v-2", schema=SCHEMA, files=files, partition_cols=("part",), kind="pandas",
                            metadata={"owner": "ml"}, created="2026-12-04T11:00:00Z")


def test_a_manifest_survives_its_json_and_says_what_the_table_is():
    m = _manifest()
    raw = m.to_json()
    assert dataset.Manifest.from_json(raw, "t") == m
    doc = json.loads(raw)
    assert (doc["num_rows"], doc["kind"], doc["partition_cols"]) == (280, "pandas", ["part"])
    assert "id: int64" in doc["schema_text"]  # readable without pyarrow, e.g. in the Prefect UI
    assert m.num_rows == 280 and m.versions == {"v-1", "v-2"}  # an append references the older version


@pytest.mark.parametrize("raw", [b"not json", b"{}", json.dumps({"format": "rh-table", "format_version": 99}).encode(),
                                 json.dumps({"format": "rh-table", "format_version": 1, "schema": "x"}).encode()],
                         ids=["not json", "empty", "a newer format", "a broken schema"])
def test_a_pointer_this_version_cannot_read_says_what_to_do(raw):
    with pytest.raises(RhError, match=r"s3://b/t/_rh_table.json is not a table pointer .* upgrade rh-prefect, or "
                                      r"write the table again"):
        dataset.Manifest.from_json(raw, "s3://b/t/_rh_table.json")


def test_no_pointer_means_no_table_and_a_pointer_is_read_back(tmp_path):
    local = get_system("file")
    root = str(tmp_path / "t")
    assert dataset.read_manifest(local, root) is None
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / dataset.POINTER).write_bytes(_manifest().to_json())
    assert dataset.read_manifest(local, root) == _manifest()


def test_a_fan_out_copy_splits_files_into_parts_of_about_equal_size():
    from rh_prefect.flows.transfer import split_by_size

    sizes = {f"f{i:02d}": 1000 + 100 * i for i in range(20)}
    parts = split_by_size(sizes, 4)
    assert len(parts) == 4 and sorted(k for p in parts for k in p) == sorted(sizes)  # every file exactly once
    totals = [sum(sizes[k] for k in p) for p in parts]
    assert max(totals) - min(totals) <= max(sizes.values())
    assert split_by_size({"a": 5, "b": 1}, 8) == [["a"], ["b"]]  # never an empty part
    assert split_by_size({}, 3) == []


def test_a_version_is_described_the_same_wherever_its_manifest_is_read():
    """A copy commits the manifest it read; its checksum (sha256 of the manifest's JSON) must come out the same."""
    m = _manifest()
    again = dataset.Manifest.from_json(m.to_json(), "copy")
    assert again.checksum == m.checksum and again.to_json() == m.to_json()
    v = m.describe(current=True)
    assert (v.id, v.rows, v.size, v.current) == ("v-2", 280, 4996, True)
    assert v.created.isoformat() == "2026-12-04T11:00:00+00:00"


@pytest.mark.parametrize("bad", ["../x", "v-1", "", "v-20261204T112144123456Z-1a2b3c4d/../../etc", None])
def test_only_version_ids_name_a_version_file(bad):
    from rh_prefect.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="is not a version id of a table .* list them with .versions()"):
        dataset.version_manifest_path("/t", bad)
    assert dataset.version_manifest_path("/t", "v-20261204T112144123456Z-1a2b3c4d") == \
        "/t/_rh_versions/v-20261204T112144123456Z-1a2b3c4d.json"
