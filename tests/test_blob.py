"""Blob on every writable system: save/reload/fetch, atomic writes, checksums, copies between systems.

Everything runs against the suite's real servers (sshd, moto, fake-gcs-server, Prefect). Stored bytes are
inspected - and corrupted - with the system's own fsspec filesystem, behind the Blob API's back.
"""

from __future__ import annotations

import gc
import hashlib
import os
import pickle
import posixpath
from pathlib import Path

import numpy as np
import pytest

import rh_prefect as rh
from rh_prefect import blob_store, serializers, settings, transfer
from rh_prefect.errors import AlreadyExists, IntegrityError, InvalidPath, NotFound
from rh_prefect.serializers import SerializationError

SYSTEMS = ["file", "ssh", "s3", "gs"]

RNG = np.random.default_rng(4)
# (value, serializer chosen by default)
VALUES = {
    "array": (RNG.standard_normal((300, 400)).astype(np.float32), "pickle"),
    "text": ("héllo, wörld - ünïcode ✓\n" * 2000, "text"),
    "dict": ({"step": 7, "loss": [0.5, 0.25], "nested": {"ok": True, "pair": (1, 2)}, "none": None}, "pickle"),
    "bytes": (RNG.bytes(300_000), "bytes"),
}

pytestmark = pytest.mark.servers  # Blob reads and writes run as Prefect tasks: the API is needed


def same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return type(a) is type(b) and a == b


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored(b: rh.Blob) -> bytes:
    """The bytes of the file at the blob's path (what other tools read), read with fsspec directly."""
    b.sys.fs.invalidate_cache()
    return b.sys.fs.cat_file(b.fs_path)


def version_file(b: rh.Blob, version: str = None) -> str:
    """The filesystem path of a version of the blob (its recorded one by default), as the format lays it out."""
    return blob_store.version_path(b.fs_path, version or b.version)


def listing(b: rh.Blob) -> list[str]:
    """File names next to the blob, temporary ones included, read with fsspec directly."""
    fs = b.sys.fs
    fs.invalidate_cache()
    parent = posixpath.dirname(b.fs_path)
    if not fs.exists(parent):  # an object store has no empty directories
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(parent, detail=False))


def in_versions_dir(b: rh.Blob) -> list[str]:
    """File names in the blob's hidden versions directory, temporary ones included, read with fsspec directly."""
    fs = b.sys.fs
    fs.invalidate_cache()
    vdir = blob_store.versions_dir(b.fs_path)
    if not fs.exists(vdir):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(vdir, detail=False))


def with_descriptions(versions: list[str]) -> list[str]:
    """What a versions directory holds for these versions: each version object and its description beside it."""
    return sorted([*versions, *(v + blob_store.INFO_SUFFIX for v in versions)])


def version_ids(b: rh.Blob) -> list[str]:
    return [v.id for v in b.versions()]


class Exploding:
    """Pickling this raises: a serializer that fails after it has already written some bytes."""

    def __reduce__(self):
        raise RuntimeError("serializer exploded midway")


class Tripwire:
    """Unpickling this creates a file: proof of whether corrupted bytes were deserialized."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


# --------------------------------------------------------------------------- per system: save, reload, fetch


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_save_reload_by_name_fetch_equal(sysname, places, unique_name):
    system, base = places[sysname]
    for kind, (value, serializer) in VALUES.items():
        name = unique_name(f"blob-{kind}")
        saved = rh.blob(data=value, name=name, system=system, path=f"{base}/{kind}.bin").save()
        raw = stored(saved)
        assert (saved.serializer, saved.size, saved.sha256) == (serializer, len(raw), sha(raw))
        assert saved.version is not None and saved.sys.fs.cat_file(version_file(saved)) == raw

        loaded = rh.blob(name=name)
        assert isinstance(loaded, rh.Blob) and loaded.system == saved.system and loaded.path == saved.path
        assert (loaded.serializer, loaded.size, loaded.sha256, loaded.version) == (
            serializer, len(raw), sha(raw), saved.version)
        assert same(loaded.fetch(), value), kind
    assert rh.load(name).fetch() == VALUES["bytes"][0]  # any-type load finds blobs too


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_reload_by_path_reads_without_checksum_and_verify_records_one(sysname, places):
    system, base = places[sysname]
    for kind, (value, serializer) in VALUES.items():
        written = rh.blob(data=value, system=system, path=f"{base}/{kind}.bin")
        by_path = rh.blob(path=f"{base}/{kind}.bin", system=system, serializer=serializer)
        assert by_path.sha256 is None and by_path.size is None and by_path.version is None
        assert same(by_path.fetch(), value), kind
        assert by_path.verify().sha256 == written.sha256 and by_path.size == written.size
    # Without a serializer, a blob described by path is read as pickle (Runhouse's default).
    assert same(rh.blob(path=f"{base}/dict.bin", system=system).fetch(), VALUES["dict"][0])


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_write_on_saved_blob_updates_registry_and_rm(sysname, places, unique_name):
    system, base = places[sysname]
    name = unique_name("blob-rw")
    b = rh.blob(data={"v": 1}, name=name, system=system, path=f"{base}/rw.pkl").save()
    first = b.sha256
    b.write({"v": 2})
    reloaded = rh.blob(name=name)
    assert reloaded.sha256 == sha(stored(b)) != first
    assert reloaded.fetch() == {"v": 2}

    assert reloaded.exists_in_system()
    reloaded.rm()  # the file and every version
    assert not reloaded.exists_in_system()
    assert listing(reloaded) == [] and in_versions_dir(reloaded) == []
    with pytest.raises(NotFound, match="has no stored bytes"):
        reloaded.fetch()


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_open_streams_raw_bytes_and_writes_atomically(sysname, places):
    system, base = places[sysname]
    payload = RNG.bytes(3 * 2**20 + 17)
    b = rh.blob(data=payload, system=system, path=f"{base}/raw.bin")
    with b.open() as f:
        head = f.read(1000)
        rest = f.read()
    assert head + rest == payload

    with b.open("wb") as f:
        f.write(b"new ")
        f.write(memoryview(b"content"))
    assert stored(b) == b"new content"
    assert (b.size, b.sha256, b.serializer) == (11, sha(b"new content"), "bytes")
    assert b.fetch() == b"new content"


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_upload_download_stream_files(sysname, places, tmp_path, unique_name):
    system, base = places[sysname]
    src = tmp_path / "upload.bin"
    payload = RNG.bytes(9 * 2**20 + 123)  # more than one 8 MiB chunk
    src.write_bytes(payload)
    name = unique_name("blob-up")
    b = rh.blob(name=name, system=system, path=f"{base}/up/payload.bin").upload(src).save()
    assert (b.size, b.sha256, b.serializer) == (len(payload), sha(payload), "bytes")
    assert stored(b) == payload

    loaded = rh.blob(name=name)
    out = loaded.download(tmp_path / "back" / "payload.copy")
    assert Path(out).read_bytes() == payload
    into_dir = loaded.download(tmp_path / "back")  # a directory receives the blob under its own file name
    assert into_dir == str(tmp_path / "back" / "payload.bin") and Path(into_dir).read_bytes() == payload
    assert loaded.fetch() == payload


# --------------------------------------------------------------------------- integrity


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_corrupted_bytes_raise_integrity_error_before_deserializing(sysname, places, unique_name, tmp_path):
    """Tampering with the stored version (the bytes readers read) is caught before anything is deserialized."""
    system, base = places[sysname]
    name = unique_name("blob-corrupt")
    value = {"weights": VALUES["array"][0], "step": 3}
    b = rh.blob(data=value, name=name, system=system, path=f"{base}/ckpt.pkl").save()
    raw = stored(b)
    fs, version = b.sys.fs, version_file(b)

    # 1. same length, one byte flipped
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    fs.pipe_file(version, bytes(flipped))
    loaded = rh.blob(name=name)
    with pytest.raises(IntegrityError) as err:
        loaded.fetch()
    msg = str(err.value)
    assert f"Blob {name!r} at {b.url} failed verification" in msg
    assert f"records {len(raw)} bytes with sha256 {sha(raw)}" in msg
    assert f"are {len(raw)} bytes with sha256 {sha(bytes(flipped))}" in msg
    assert "changed or corrupted outside rh_prefect, so nothing was deserialized" in msg
    assert "blob.write(data)" in msg
    with pytest.raises(IntegrityError, match="failed verification"):
        loaded.verify()
    with pytest.raises(IntegrityError, match="failed verification"):
        loaded.download(tmp_path / "dl" / "ckpt.pkl")
    assert not (tmp_path / "dl" / "ckpt.pkl").exists() and os.listdir(tmp_path / "dl") == []

    # 2. replaced by a valid pickle that would act when loaded: verification must come first
    marker = tmp_path / "deserialized-it"
    fs.pipe_file(version, pickle.dumps(Tripwire(str(marker))))
    with pytest.raises(IntegrityError, match="stored bytes are \\d+ bytes"):
        rh.blob(name=name).fetch()
    assert not marker.exists()

    # 3. restoring the original bytes makes it verify again
    fs.pipe_file(version, raw)
    fetched = rh.blob(name=name).fetch()
    assert fetched["step"] == 3 and np.array_equal(fetched["weights"], value["weights"])

    # 4. the file at the path is for other tools: rh-prefect reads the version, whatever the file holds
    fs.pipe_file(b.fs_path, pickle.dumps(Tripwire(str(marker))))
    assert rh.blob(name=name).fetch()["step"] == 3 and not marker.exists()


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_versions_beyond_the_kept_number_are_dropped(sysname, places, unique_name):
    """After N + 2 writes only the newest N versions remain; the current one reads back, and the file at the
    path - read with the store's plain fsspec filesystem, as any other tool would - holds the latest bytes."""
    system, base = places[sysname]
    kept = 3
    name = unique_name("blob-kept")
    with settings.override(blob_versions_kept=kept, versions_min_age=0):
        b = rh.blob(data=b"write 0", name=name, system=system, path=f"{base}/kept/b.bin").save()
        written = [b.version]
        for i in range(1, kept + 2):
            b.write(b"write %d" % i)
            written.append(b.version)
            assert stored(b) == b"write %d" % i  # published: the latest version, a plain file
    assert len(set(written)) == kept + 2 and written == sorted(written)  # ids sort by time
    assert version_ids(b) == written[-kept:]
    assert in_versions_dir(b) == with_descriptions(written[-kept:])  # nothing else in there: no temporary files
    assert listing(b) == [".b.bin.rh-versions", "b.bin"]
    loaded = rh.blob(name=name)
    assert loaded.version == written[-1] and loaded.fetch() == b"write %d" % (kept + 1)
    assert rh.folder(path=posixpath.dirname(b.path), system=system).ls(full_paths=False) == ["b.bin"]


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_an_older_loaded_blob_reads_its_own_version_until_it_is_dropped(sysname, places, unique_name, tmp_path):
    """A reader holding a Blob loaded before newer writes gets exactly its version's bytes while that version is
    kept - no error and no waiting - and a NotFound that says what happened once it was dropped."""
    system, base = places[sysname]
    kept = 2
    name = unique_name("blob-pinned")
    rh.blob(data={"v": 1}, name=name, system=system, path=f"{base}/pinned.pkl").save()
    old = rh.blob(name=name)
    with settings.override(blob_versions_kept=kept, versions_min_age=0):
        rh.blob(name=name).write({"v": 2})
        assert old.fetch() == {"v": 1} and rh.blob(name=name).fetch() == {"v": 2}
        with old.open() as f:
            assert pickle.loads(f.read()) == {"v": 1}
        rh.blob(name=name).write({"v": 3})  # old's version is now the third newest: dropped
        with pytest.raises(NotFound) as err:
            old.fetch()
    msg = str(err.value)
    assert f"Blob {name!r} at {old.url}: version {old.version} is no longer stored" in msg
    assert f"keeps its newest {kept} versions (setting blob_versions_kept)" in msg
    assert "Load the blob again (rh.blob(name=...))" in msg
    with pytest.raises(NotFound, match="is no longer stored"):
        old.download(tmp_path / "old.pkl")
    assert not old.exists_in_system()
    assert rh.blob(name=name).fetch() == {"v": 3}


def test_a_write_removes_temporary_files_that_dead_writes_left_among_the_versions(tmp_path):
    """A writer killed while committing a version leaves a hidden temporary file in the versions directory; the
    next write removes it once nobody has touched it for ``settings.stale_temp_seconds``, never a live one."""
    b = rh.blob(data=b"one", path=str(tmp_path / "b.bin"))
    vdir = Path(blob_store.versions_dir(b.fs_path))
    stale, live = vdir / ".v-dead.rh-tmp-0123456789ab", vdir / ".v-live.rh-tmp-ba9876543210"
    stale.write_bytes(b"partial")
    live.write_bytes(b"partial")
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    b.write(b"two")
    assert sorted(os.listdir(vdir)) == sorted([live.name, *with_descriptions(version_ids(b))])
    assert len(b.versions()) == 2
    assert rh.folder(path=str(tmp_path)).ls(full_paths=False) == ["b.bin"]


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_failing_serializer_leaves_old_blob_intact(sysname, places, unique_name):
    system, base = places[sysname]
    name = unique_name("blob-torn")
    old = {"version": "old"}
    b = rh.blob(data=old, name=name, system=system, path=f"{base}/torn/ckpt.pkl").save()
    old_raw = stored(b)
    # 9 MiB reach the writer (more than one 8 MiB upload part) before the serializer fails.
    bomb = [RNG.bytes(9 * 2**20), Exploding()]
    with pytest.raises(SerializationError) as err:
        b.write(bomb)
    msg = str(err.value)
    assert "Could not serialize a list with 'pickle' (RuntimeError: serializer exploded midway)" in msg
    assert f"Nothing was written: Blob {name!r} at {b.url} is unchanged" in msg
    assert "cloudpickle" in msg

    assert stored(b) == old_raw and b.sha256 == sha(old_raw)  # the block still describes the old bytes
    assert rh.blob(name=name).fetch() == old
    # no temporary or partial file next to it, nor among its versions
    assert listing(b) == [".ckpt.pkl.rh-versions", "ckpt.pkl"] and in_versions_dir(b) == with_descriptions([b.version])

    fresh = rh.blob(system=system, path=f"{base}/torn/fresh.pkl", dryrun=True, data=bomb)
    with pytest.raises(SerializationError):
        fresh.write()
    assert not fresh.exists_in_system()
    assert listing(b) == [".ckpt.pkl.rh-versions", "ckpt.pkl"]  # a failed first write leaves no trace at all
    assert in_versions_dir(b) == with_descriptions([b.version])
    if sysname == "s3":  # the aborted multipart uploads are gone too, not just invisible
        bucket = b.fs_path.split("/", 1)[0]
        assert b.sys.fs.list_multipart_uploads(bucket) == []


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_small_failed_write_is_never_published(sysname, places):
    """A failure before the first upload part: nothing may appear, not even when the writer is collected."""
    system, base = places[sysname]
    b = rh.blob(system=system, path=f"{base}/small/x.pkl", data=[b"x" * 100_000, Exploding()], dryrun=True)
    with pytest.raises(SerializationError):
        b.write()

    def fail_inside_writer():  # the writer under the blob, dropped the way a failed task drops it
        with transfer.open_write(b.sys, b.fs_path) as f:
            f.write(b"partial" * 10_000)
            raise RuntimeError("failed before the first part")

    with pytest.raises(RuntimeError):
        fail_inside_writer()
    gc.collect()
    assert not b.exists_in_system()


# --------------------------------------------------------------------------- moving between systems

PAIRS = [("file", "ssh"), ("ssh", "s3"), ("s3", "gs"), ("gs", "file"), ("file", "s3"), ("gs", "ssh")]


@pytest.mark.parametrize("src_name,dst_name", PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_to_between_systems_preserves_bytes_and_checksum(src_name, dst_name, places, unique_name):
    src_sys, src_base = places[src_name]
    dst_sys, dst_base = places[dst_name]
    value = {"weights": RNG.standard_normal(600_000).astype(np.float32), "name": "bert"}  # ~2.4 MB
    src = rh.blob(data=value, name=unique_name("blob-src"), system=src_sys, path=f"{src_base}/ckpt.pkl").save()
    raw = stored(src)

    dst = src.to(dst_sys, path=f"{dst_base}/copies/ckpt.pkl")
    assert dst.system == dst_name and dst.path.endswith("copies/ckpt.pkl")
    # the copy carries the version it copied, and its file is published for other tools
    assert (dst.version, dst.size, dst.sha256, dst.serializer) == (src.version, src.size, src.sha256, "pickle")
    assert version_ids(dst) == [src.version] and dst.sys.fs.cat_file(version_file(dst)) == raw
    assert stored(dst) == raw

    dst_name_saved = unique_name("blob-dst")
    dst.save(dst_name_saved)
    fetched = rh.blob(name=dst_name_saved).fetch()
    assert fetched["name"] == "bert" and np.array_equal(fetched["weights"], value["weights"])
    assert rh.blob(name=src.name).path == src.path  # the source's registry entry is untouched


@pytest.mark.parametrize("sysname", ["ssh", "s3", "gs"])
def test_to_same_store_is_server_side(sysname, places):
    system, base = places[sysname]
    payload = RNG.bytes(2 * 2**20)
    src = rh.blob(data=payload, system=system, path=f"{base}/a/blob.bin")
    before = transfer.moved_here()
    dst = src.to(system, path=f"{base}/b/blob.bin")
    assert transfer.moved_here() - before == transfer.Moved()  # no byte went through this process
    assert stored(dst) == payload and (dst.sha256, dst.version) == (src.sha256, src.version)
    assert dst.fetch() == payload


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_to_folder_lands_in_folder_listing(sysname, places, tmp_path):
    system, base = places[sysname]
    folder = rh.folder(path=f"{base}/models", system=system)
    folder.put({"README.txt": b"models live here"})
    with pytest.raises(InvalidPath, match="is a directory, and a blob is one file"):
        rh.blob(data=b"not here", system=system, path=folder.path)  # writing onto the folder itself
    local = rh.blob(data={"layers": 12}, system="file", path=str(tmp_path / "src" / "model.pkl"))

    by_path = local.to(system, path=folder.path)  # an existing folder path: the blob keeps its file name
    assert by_path.path == posixpath.join(folder.path, "model.pkl")
    by_folder = local.to(folder, path="model-copy.pkl")  # a Folder object, with a name inside it
    in_memory = rh.blob(data=[1, 2, 3]).to(folder, path="numbers.pkl")  # an in-memory blob is written there

    # the blobs' hidden versions directories are neither listed nor copied with the folder
    files = ["README.txt", "model-copy.pkl", "model.pkl", "numbers.pkl"]
    assert folder.ls(full_paths=False) == files and folder.ls(full_paths=False, recursive=True) == files
    assert ".model.pkl.rh-versions" in listing(by_path)
    copied = folder.to("file", path=str(tmp_path / "folder-copy"))
    assert sorted(os.listdir(copied.path)) == files and copied.last_copy.files_copied == len(files)
    assert by_path.fetch() == {"layers": 12} and by_folder.fetch() == {"layers": 12}
    assert in_memory.fetch() == [1, 2, 3] and in_memory.sha256 == sha(stored(in_memory))
    assert folder.get("model.pkl") == stored(local)


# --------------------------------------------------------------------------- names, defaults, errors


def test_unnamed_in_memory_blob_cannot_be_saved(tmp_path, monkeypatch, unique_name):
    monkeypatch.chdir(tmp_path)
    b = rh.blob(data={"a": 1})
    assert b.path is None and not b.exists_in_system() and b.fetch() == {"a": 1}
    with pytest.raises(NotFound) as err:
        b.save()
    msg = str(err.value)
    assert "only in memory and has no name, so there is nowhere to save it" in msg
    assert "blob.save('my-blob')" in msg and "rh.blob(data, name='my-blob', system='s3'" in msg
    assert list(tmp_path.iterdir()) == []  # nothing was written
    with pytest.raises(InvalidPath, match="only in memory"):
        b.verify()

    name = unique_name("blob-mem")
    b.save(name)  # with a name it lives at the default place for that name: the current directory
    assert b.path == str(tmp_path / name) and (tmp_path / name).exists()
    assert sorted(os.listdir(tmp_path)) == [f".{name}.rh-versions", name]
    loaded = rh.blob(name=name)
    assert loaded.sha256 == sha((tmp_path / name).read_bytes()) and loaded.fetch() == {"a": 1}

    stored_unnamed = rh.blob(data=b"x", path=str(tmp_path / "x.bin"))
    with pytest.raises(NotFound, match=r"has no name: call \.save\(name='my-name'\)"):
        stored_unnamed.save()


def test_name_alone_loads_and_missing_name_or_nothing_is_an_error(unique_name):
    missing = unique_name("blob-missing")
    with pytest.raises(NotFound, match=f"No resource named {missing!r}"):
        rh.blob(name=missing)
    with pytest.raises(InvalidPath, match="needs data to store, a name to load"):
        rh.blob()
    folder_name = unique_name("folder")
    rh.folder(name=folder_name, path="/tmp/rh-test-not-a-blob").save()
    with pytest.raises(NotFound, match="is a Folder, not a Blob"):
        rh.blob(name=folder_name)


def test_name_taken_by_another_type_writes_nothing(tmp_path, monkeypatch, unique_name):
    monkeypatch.chdir(tmp_path)
    name = unique_name("taken")
    rh.folder(name=name, path=str(tmp_path / "folder")).save()
    with pytest.raises(AlreadyExists, match="already used by a Folder"):
        rh.blob(data=[1]).save(name)
    assert list(tmp_path.iterdir()) == []


def test_default_paths_per_system(places, rh_cluster, s3_bucket, tmp_path, monkeypatch, unique_name):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RH_PREFECT_S3_BUCKET", raising=False)
    name = unique_name("blob-default")
    assert rh.blob(data=b"local", name=name).path == str(tmp_path / name)

    on_cluster = rh.blob(data=b"remote", name=name, system=rh_cluster)
    assert on_cluster.path == f"~/.cache/rh_prefect/{name}" and on_cluster.fetch() == b"remote"
    on_cluster.rm()

    with pytest.raises(InvalidPath) as err:
        rh.blob(data=b"s3", name=name, system="s3")
    assert "pass path='/my-bucket/...'" in str(err.value) and "RH_PREFECT_S3_BUCKET" in str(err.value)
    monkeypatch.setenv("RH_PREFECT_S3_BUCKET", s3_bucket)
    on_s3 = rh.blob(data=b"s3", name=name, system="s3")
    assert on_s3.path == f"/{s3_bucket}/{name}" and stored(on_s3) == b"s3"

    with pytest.raises(NotFound, match="Bucket 'rh-test-no-such-bucket' does not exist"):
        rh.blob(data=b"x", system="s3", path="/rh-test-no-such-bucket/x")
    created = rh.blob(data=b"x", system="s3", path=f"/{s3_bucket}-new/x", mkdir=True)
    assert stored(created) == b"x"
    created.sys.fs.rm(f"{s3_bucket}-new", recursive=True)


# --------------------------------------------------------------------------- serializers


def test_serializer_is_saved_and_used_on_reload(tmp_path, unique_name):
    name = unique_name("blob-json")
    value = {"a": [1, 2, 3], "b": {"c": "ü"}}
    b = rh.blob(data=value, name=name, path=str(tmp_path / "v.json"), serializer="json").save()
    assert (tmp_path / "v.json").read_bytes() == '{"a": [1, 2, 3], "b": {"c": "ü"}}'.encode()
    loaded = rh.blob(name=name)
    assert loaded.serializer == "json" and loaded.fetch() == value

    text = rh.file(data="plain text", path=str(tmp_path / "t.txt"))  # rh.file: Runhouse's name for a blob
    assert text.serializer == "text" and (tmp_path / "t.txt").read_text() == "plain text"
    assert b.write({"replaced": True}).serializer == "json"  # the blob keeps its serializer


def test_cloudpickle_and_pickle_errors(tmp_path):
    factor = 3
    fn = lambda x: x * factor  # noqa: E731 - a closure plain pickle cannot store
    with pytest.raises(SerializationError) as err:
        rh.blob(data=fn, path=str(tmp_path / "fn.pkl"))
    assert "Could not serialize a function with 'pickle'" in str(err.value)
    assert "try serializer='cloudpickle'" in str(err.value)
    assert not (tmp_path / "fn.pkl").exists() and list(tmp_path.iterdir()) == []

    b = rh.blob(data=fn, path=str(tmp_path / "fn.pkl"), serializer="cloudpickle")
    assert rh.blob(path=str(tmp_path / "fn.pkl"), serializer="cloudpickle").fetch()(5) == 15
    assert b.fetch()(2) == 6


def test_unknown_or_mismatched_serializer(tmp_path):
    with pytest.raises(SerializationError, match="Unknown serializer 'yaml'; use one of: bytes, cloudpickle, json"):
        rh.blob(data={"a": 1}, path=str(tmp_path / "a.yaml"), serializer="yaml")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SerializationError, match="the 'bytes' serializer stores bytes-like data, not dict"):
        rh.blob(data={"a": 1}, path=str(tmp_path / "a.bin"), serializer="bytes")

    rh.blob(data="not a pickle", path=str(tmp_path / "t.txt"))
    with pytest.raises(SerializationError) as err:
        rh.blob(path=str(tmp_path / "t.txt")).fetch()
    assert "could not be read with serializer 'pickle'" in str(err.value)
    assert "serializer='bytes'" in str(err.value)
    assert rh.blob(path=str(tmp_path / "t.txt"), serializer="text").fetch() == "not a pickle"


def test_custom_serializer_registry(tmp_path):
    class Upper(serializers.TextSerializer):
        name = "upper-text"

        def load(self, f):
            return super().load(f).upper()

    serializers.register(Upper())
    try:
        b = rh.blob(data="shout", path=str(tmp_path / "s.txt"), serializer="upper-text")
        assert b.fetch() == "SHOUT" and b.serializer == "upper-text"
    finally:
        serializers._REGISTRY.pop("upper-text")
