"""Versions of Tables and Blobs (issue 19, points 1 and 6): one vocabulary (``versions()``, ``version=``,
``rollback()``), kept by retention, immutable, carried by copies; bad versions change nothing.

Against the suite's real servers (local disk, moto S3, and where cheap every writable system). Everything is
checked through the public API: rows equal in order, bytes equal, error types and messages.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

import rh_prefect as rh
from rh_prefect import settings
from rh_prefect.errors import InvalidArgument, NotFound, ReadOnlyVersion

pytestmark = pytest.mark.servers

SYSTEMS = ["file", "ssh", "s3", "gs"]


def data(n: int, start: int = 0) -> pa.Table:
    return pa.table({"id": pa.array(range(start, start + n), pa.int64()),
                     "text": [f"row {i}" for i in range(start, start + n)]})


def ids(table) -> list[int]:
    return table.column("id").to_pylist()


def stored_files(resource) -> dict[str, str]:
    """sha256 of every file under a table's root or beside a blob (its file and versions directory), read with
    the system's own fsspec filesystem: what a bad request must leave unchanged."""
    fs = resource.sys.fs
    fs.invalidate_cache()
    root = resource.fs_path if isinstance(resource, rh.Table) else resource.fs_path.rsplit("/", 1)[0]
    return {p: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in fs.find(root)}


# ------------------------------------------------------------------------------------------------ tables
@pytest.mark.parametrize("sysname", ["file", "s3"])
def test_a_table_keeps_its_newest_versions_and_each_reads_back_exactly(sysname, places, unique_name):
    system, base = places[sysname]
    name = unique_name("vt")
    kept = 3
    with settings.override(table_versions_kept=kept, versions_min_age=0):
        t = rh.table(data=data(10), name=name, path=f"{base}/t", system=system).save()
        written = [t.version]
        for i in range(1, kept + 2):  # N + 2 writes in all: the last one an append
            t.write(data(10 + i, start=100 * i), mode="append" if i == kept + 1 else "overwrite")
            written.append(t.version)
    listed = t.versions()
    assert [v.id for v in listed] == written[-kept:]  # oldest first, the newest N
    assert [v.current for v in listed] == [False] * (kept - 1) + [True]
    assert [v.rows for v in listed] == [10 + kept - 1, 10 + kept, 10 + kept + 11 + kept]
    assert all(v.size > 0 and len(v.checksum) == 64 for v in listed)
    assert listed == sorted(listed, key=lambda v: v.created)
    for i, v in zip(range(len(written) - kept, len(written)), listed):
        old = rh.table(name=name, version=v.id)
        expected = list(range(100 * i, 100 * i + 10 + i))
        if i == kept + 1:  # the append: the rows before it, then its own
            expected = list(range(100 * kept, 100 * kept + 10 + kept)) + expected
        assert old.version == v.id and len(old) == len(expected)
        assert ids(old.fetch()) == expected
        assert ids(old.head(2)) == expected[:2]
        assert [r["id"] for b in old.stream(batch_size=4, batch_format="pyarrow") for r in b.to_pylist()] == expected
    for dropped in written[:-kept]:
        with pytest.raises(NotFound, match=f"has no version {dropped}.*Kept versions, newest first: {written[-1]}"):
            rh.table(name=name, version=dropped)
    rh.delete(name)


def test_an_old_version_reads_the_same_after_newer_writes_and_a_reader_never_sees_it_change(tmp_path, unique_name):
    name = unique_name("vt")
    t = rh.table(data=data(50), name=name, path=tmp_path / "t").save()
    v1 = t.version
    pinned = rh.table(name=name, version=v1)
    stream = iter(pinned.stream(batch_size=10, batch_format="pyarrow", prefetch_batches=0))
    first = next(stream)
    held = rh.table(name=name)  # loaded now: it reads the version its entry named when it was loaded
    for i in range(3):  # newer writes, while the reader holds v1 (and is part-way through a stream of it)
        rh.table(name=name).write(data(7, start=1000 * (i + 1)))
    rest = list(stream)
    assert [r["id"] for b in [first, *rest] for r in b.to_pylist()] == list(range(50))
    assert ids(pinned.fetch()) == list(range(50)) and len(pinned) == 50
    assert held.version == v1 and ids(held.fetch()) == list(range(50))
    assert ids(rh.table(name=name).fetch()) == list(range(3000, 3007))
    rh.delete(name)


def test_rollback_makes_an_old_version_current_for_every_reader(tmp_path, unique_name):
    name = unique_name("vt")
    t = rh.table(data=data(5), name=name, path=tmp_path / "t").save()
    v1 = t.version
    t.write(data(8, start=50))
    v2 = t.version
    t.rollback(v1)
    assert t.version == v1 and ids(t.fetch()) == list(range(5))
    loaded = rh.table(name=name)
    assert loaded.version == v1 and loaded.row_count == 5 and ids(loaded.fetch()) == list(range(5))
    assert ids(rh.table(path=tmp_path / "t").fetch()) == list(range(5))  # the pointer on storage too
    assert [(v.id, v.current) for v in t.versions()] == [(v1, True), (v2, False)]
    loaded.write(data(3, start=90), mode="append")  # writes go on from the rolled-back version
    assert ids(rh.table(name=name).fetch()) == [0, 1, 2, 3, 4, 90, 91, 92]
    rh.delete(name)


@pytest.mark.parametrize("dst", ["s3", "ssh"])
def test_a_table_copy_carries_its_version(dst, places, unique_name):
    src = rh.table(data=data(20), path=f"{places['file'][1]}/src")
    v1 = src.version
    src.write(data(4, start=500))
    old = rh.table(path=src.path, version=v1)
    copy = old.to(places[dst][0], path=f"{places[dst][1]}/copy")
    assert copy.version == v1 and ids(copy.fetch()) == list(range(20))
    there = copy.versions()
    assert [(v.id, v.current) for v in there] == [(v1, True)]
    assert there[0].checksum == next(v for v in src.versions() if v.id == v1).checksum
    copy.write(data(2, start=7))  # the copy is a table of its own: writable
    assert ids(rh.table(path=copy.path, system=copy.sys, version=v1).fetch()) == list(range(20))


def test_a_table_written_before_versions_were_kept_lists_its_current_version_and_keeps_it(tmp_path):
    """A table stored by an earlier rh-prefect has a pointer and no _rh_versions/: its current version is its one
    version, readable by id, and the next write keeps it like any other."""
    import shutil

    t = rh.table(data=data(4), path=tmp_path / "t")
    old = t.version
    shutil.rmtree(tmp_path / "t" / "_rh_versions")  # the layout before versions were kept
    assert [(v.id, v.rows, v.current) for v in t.versions()] == [(old, 4, True)]
    assert ids(rh.table(path=tmp_path / "t", version=old).fetch()) == list(range(4))
    t.write(data(2, start=40))
    assert [(v.id, v.current) for v in t.versions()] == [(old, False), (t.version, True)]
    assert ids(rh.table(path=tmp_path / "t", version=old).fetch()) == list(range(4))


def test_bad_table_versions_are_refused_and_change_nothing(tmp_path, unique_name):
    name = unique_name("vt")
    with settings.override(table_versions_kept=1, versions_min_age=0):
        t = rh.table(data=data(5), name=name, path=tmp_path / "t").save()
        dropped = t.version
        t.write(data(6, start=10))
    current = t.version
    before = stored_files(t)
    unknown = "v-20200101T000000000000Z-0badc0de"
    with pytest.raises(NotFound, match=f"has no version {unknown}.*Kept versions, newest first: {current}"):
        rh.table(name=name, version=unknown)
    with pytest.raises(NotFound, match=f"has no version {dropped}.*table_versions_kept.*table.versions()"):
        t.rollback(dropped)
    with pytest.raises(InvalidArgument, match="'../x' is not a version id"):
        t.rollback("../x")
    pinned = rh.table(name=name, version=current)
    for act in (lambda: pinned.write(data(1)), lambda: pinned.rollback(current), pinned.rm, pinned.save):
        with pytest.raises(ReadOnlyVersion, match=f"loaded at version {current}.*without version="):
            act()
    with pytest.raises(InvalidArgument, match="cannot be combined"):
        rh.table(data=data(1), path=tmp_path / "t", version=current)
    assert stored_files(t) == before
    loaded = rh.table(name=name)
    assert loaded.version == current and ids(loaded.fetch()) == list(range(10, 16))
    rh.delete(name)


# ------------------------------------------------------------------------------------------------ blobs
@pytest.mark.parametrize("sysname", ["file", "s3"])
def test_a_blob_keeps_its_newest_versions_and_each_reads_back_exactly(sysname, places, unique_name):
    system, base = places[sysname]
    name = unique_name("vb")
    kept = 3
    payloads = [f"payload {i}".encode() * (i + 1) for i in range(kept + 2)]
    with settings.override(blob_versions_kept=kept, versions_min_age=0):
        b = rh.blob(data=payloads[0], name=name, path=f"{base}/b.bin", system=system).save()
        written = [b.version]
        for p in payloads[1:]:  # N + 2 writes in all
            b.write(p)
            written.append(b.version)
    listed = b.versions()
    assert [v.id for v in listed] == written[-kept:]
    assert [v.current for v in listed] == [False] * (kept - 1) + [True]
    assert [(v.size, v.checksum, v.rows) for v in listed] == [
        (len(p), hashlib.sha256(p).hexdigest(), None) for p in payloads[-kept:]]
    for v, p in zip(listed, payloads[-kept:]):
        old = rh.blob(name=name, version=v.id)
        assert old.version == v.id and old.sha256 == v.checksum and old.fetch() == p
        with old.open() as f:
            assert f.read() == p
        assert old.verify().size == len(p)
    for dropped in written[:-kept]:
        with pytest.raises(NotFound, match=f"has no version {dropped}.*Kept versions, newest first: {written[-1]}"):
            rh.blob(name=name, version=dropped)
    rh.delete(name)


def test_an_old_blob_version_reads_the_same_after_newer_writes(tmp_path, unique_name):
    name = unique_name("vb")
    b = rh.blob(data={"step": 1}, name=name, path=tmp_path / "ckpt.pkl").save()
    v1 = b.version
    pinned = rh.blob(name=name, version=v1)
    held = rh.blob(name=name)
    for step in (2, 3):
        rh.blob(name=name).write({"step": step})
    assert pinned.fetch() == {"step": 1} and held.fetch() == {"step": 1} and held.version == v1
    assert pinned.download(tmp_path / "down.pkl") and (tmp_path / "down.pkl").read_bytes() == \
        (tmp_path / ".ckpt.pkl.rh-versions" / v1).read_bytes()
    assert rh.blob(name=name).fetch() == {"step": 3}
    rh.delete(name)


def test_blob_rollback_makes_an_old_version_current(tmp_path, unique_name):
    name = unique_name("vb")
    path = tmp_path / "b.json"
    b = rh.blob(data={"a": 1}, name=name, path=path, serializer="json").save()
    v1 = b.version
    b.write(b"raw bytes now", serializer="bytes")  # another serializer: a rollback brings the old one back
    v2 = b.version
    b.rollback(v1)
    assert b.version == v1 and b.serializer == "json" and b.fetch() == {"a": 1}
    loaded = rh.blob(name=name)
    assert loaded.version == v1 and loaded.fetch() == {"a": 1}
    assert path.read_bytes() == b'{"a": 1}'  # the plain file for other tools is that version again
    assert [(v.id, v.current) for v in loaded.versions()] == [(v1, True), (v2, False)]
    rh.delete(name)


def test_a_blob_copy_carries_its_version(places, unique_name):
    src = rh.blob(data=b"first", path=f"{places['file'][1]}/src.bin")
    v1 = src.version
    src.write(b"second")
    copy = rh.blob(path=src.path, version=v1).to(places["s3"][0], path=f"{places['s3'][1]}/copy.bin")
    assert copy.version == v1 and copy.fetch() == b"first"
    assert [(v.id, v.checksum, v.current) for v in copy.versions()] == [
        (v1, hashlib.sha256(b"first").hexdigest(), True)]
    again = rh.blob(path=copy.path, system="s3", version=v1)
    assert again.fetch() == b"first" and again.sha256 == hashlib.sha256(b"first").hexdigest()


def test_bad_blob_versions_are_refused_and_change_nothing(tmp_path, unique_name):
    name = unique_name("vb")
    with settings.override(blob_versions_kept=1, versions_min_age=0):  # a write also keeps the version its blob named before
        b = rh.blob(data=b"one", name=name, path=tmp_path / "b.bin").save()
        dropped = b.version
        b.write(b"two")
        b.write(b"three")
    current = b.version
    before = stored_files(b)
    unknown = "v-20200101T000000000000Z-0badc0de"
    with pytest.raises(NotFound, match=f"has no version {unknown}.*Kept versions, newest first: {current}"):
        rh.blob(name=name, version=unknown)
    with pytest.raises(NotFound, match=f"has no version {dropped}.*blob_versions_kept.*blob.versions()"):
        b.rollback(dropped)
    with pytest.raises(InvalidArgument, match="'../b.bin' is not a version id"):
        b.rollback("../b.bin")
    pinned = rh.blob(name=name, version=current)
    for act in (lambda: pinned.write(b"x"), lambda: pinned.rollback(current), pinned.rm, pinned.save,
                lambda: pinned.open("wb").__enter__(), lambda: pinned.upload(tmp_path / "b.bin")):
        with pytest.raises(ReadOnlyVersion, match=f"loaded at version {current}.*without version="):
            act()
    assert stored_files(b) == before
    loaded = rh.blob(name=name)
    assert loaded.version == current and loaded.fetch() == b"three"
    rh.delete(name)
