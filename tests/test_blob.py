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
from rh_prefect import serializers, transfer
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


def same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return type(a) is type(b) and a == b


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored(b: rh.Blob) -> bytes:
    """The bytes on the system, read with fsspec directly."""
    b.sys.fs.invalidate_cache()
    return b.sys.fs.cat_file(b.fs_path)


def listing(b: rh.Blob) -> list[str]:
    """File names next to the blob, temporary ones included, read with fsspec directly."""
    fs = b.sys.fs
    fs.invalidate_cache()
    parent = posixpath.dirname(b.fs_path)
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(parent, detail=False))


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

        loaded = rh.blob(name=name)
        assert isinstance(loaded, rh.Blob) and loaded.system == saved.system and loaded.path == saved.path
        assert (loaded.serializer, loaded.size, loaded.sha256) == (serializer, len(raw), sha(raw))
        assert same(loaded.fetch(), value), kind
    assert rh.load(name).fetch() == VALUES["bytes"][0]  # any-type load finds blobs too


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_reload_by_path_reads_without_checksum_and_verify_records_one(sysname, places):
    system, base = places[sysname]
    for kind, (value, serializer) in VALUES.items():
        written = rh.blob(data=value, system=system, path=f"{base}/{kind}.bin")
        by_path = rh.blob(path=f"{base}/{kind}.bin", system=system, serializer=serializer)
        assert by_path.sha256 is None and by_path.size is None
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
    reloaded.rm()
    assert not reloaded.exists_in_system()
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
    system, base = places[sysname]
    name = unique_name("blob-corrupt")
    value = {"weights": VALUES["array"][0], "step": 3}
    b = rh.blob(data=value, name=name, system=system, path=f"{base}/ckpt.pkl").save()
    raw = stored(b)

    # 1. same length, one byte flipped
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    b.sys.fs.pipe_file(b.fs_path, bytes(flipped))
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
    b.sys.fs.pipe_file(b.fs_path, pickle.dumps(Tripwire(str(marker))))
    with pytest.raises(IntegrityError, match=f"stored bytes are \\d+ bytes"):
        rh.blob(name=name).fetch()
    assert not marker.exists()

    # 3. restoring the original bytes makes it verify again
    b.sys.fs.pipe_file(b.fs_path, raw)
    fetched = rh.blob(name=name).fetch()
    assert fetched["step"] == 3 and np.array_equal(fetched["weights"], value["weights"])


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_a_reader_waits_while_another_writer_is_in_flight(sysname, places, unique_name, blob_writer_in_flight):
    """On every system: a writer's in-flight marker is found beside the blob (and nothing else is taken for one:
    another blob's marker, a file whose name starts alike, a directory's contents), and a reader meeting new,
    unregistered bytes waits for their registration while the marker is there instead of calling them corrupt."""
    import threading
    import time

    from rh_prefect.resources import blob as blob_mod

    system, base = places[sysname]
    name = unique_name("blob-inflight")
    rh.blob(data=b"one", name=name, system=system, path=f"{base}/dir/b.bin", serializer="bytes").save()
    reader, writer = rh.blob(name=name), rh.blob(name=name)
    fs, head = writer.sys.fs, posixpath.dirname(writer.fs_path)
    for decoy in (".c.bin.rh-tmp-pending-0123", "b.bin.rh-tmp-pending-0123x", "b.bin2"):
        fs.pipe_file(f"{head}/{decoy}", b"")
    fs.makedirs(f"{head}/.b.bin.rh-tmp-pending-sub", exist_ok=True)
    for deeper in ("file", ".b.bin.rh-tmp-pending-0123"):  # keys under a marker-like prefix
        fs.pipe_file(f"{head}/.b.bin.rh-tmp-pending-sub/{deeper}", b"")
    prefix = blob_mod._marker_prefix(writer.fs_path)
    assert writer.sys.names_beside(writer.fs_path, prefix) == []

    size, digest, marker = blob_writer_in_flight(writer, b"two")  # committed, not yet registered
    assert writer.sys.names_beside(writer.fs_path, prefix) == [posixpath.basename(marker)]
    registered = threading.Timer(1.2, lambda: writer._record(size, digest, "bytes", marker))
    registered.start()
    started = time.monotonic()
    try:
        assert reader.fetch() == b"two"
        assert time.monotonic() - started >= 0.9  # it waited for the registration
    finally:
        registered.join()
    assert writer.sys.names_beside(writer.fs_path, prefix) == []  # registered: the marker is gone
    assert rh.blob(name=name).fetch() == b"two"
    rh.delete(name)


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
    assert listing(b) == ["ckpt.pkl"]  # no temporary or partial file next to it

    fresh = rh.blob(system=system, path=f"{base}/torn/fresh.pkl", dryrun=True, data=bomb)
    with pytest.raises(SerializationError):
        fresh.write()
    assert not fresh.exists_in_system()
    assert listing(b) == ["ckpt.pkl"]
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
    assert (dst.size, dst.sha256, dst.serializer) == (src.size, src.sha256, "pickle")
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
    before = transfer.COUNTERS["bytes_copied"]
    dst = src.to(system, path=f"{base}/b/blob.bin")
    assert transfer.COUNTERS["bytes_copied"] == before  # no byte went through this process
    assert stored(dst) == payload and dst.sha256 == src.sha256
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

    assert folder.ls(full_paths=False) == ["README.txt", "model-copy.pkl", "model.pkl", "numbers.pkl"]
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
