"""Every private attribute of a storage library we use has a public fallback that moves the same bytes (issue 17,
point 2): here each copy runs once on the private paths and once with all of them switched off, as on a release
of s3fs/gcsfs/aiobotocore/asyncssh that lacks them; and an attribute that is there but changed its signature is
noticed on its first call, which then goes the public way."""

from __future__ import annotations

import logging
import os
import sys

import pytest

import rh_prefect as rh
from rh_prefect.systems import _gcs_private, _s3_private, _s3tls, _ssh_private  # noqa: F401  (registers them)
from rh_prefect.systems._private import Private

from helpers import folder_contents, sha256s, stored_sha256s, write_tree

TREE = {
    "top.txt": b"top level\n",
    "empty.txt": b"",
    "a/b/small.txt": b"small",
    "a/b/c/deep.bin": os.urandom(10_000),
    # over GCS_STREAMED_UPLOAD_MIN (8 MiB): local -> gs takes the streamed upload on the private path; and over
    # twice the S3 upload part (2 x 8 MiB): gs -> s3 takes the concurrent multipart upload (S3 calls of our own)
    "a/large.bin": os.urandom(17 * 2**20 + 7),
    **{f"many/f{i:03d}.txt": f"file {i}\n".encode() for i in range(30)},
}


@pytest.fixture(params=["private", "public"])
def way(request, monkeypatch):
    """"private": the private paths where the installed libraries have them; "public": every one switched off."""
    for private in Private.registry.values():
        monkeypatch.setattr(private, "_usable", {})  # checked afresh in this test
        monkeypatch.setattr(private, "forced_off", request.param == "public")
    return request.param


@pytest.fixture
def local_tree(tmp_path):
    return write_tree(tmp_path / "tree", TREE)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture
def caplog():
    """The records of rh_prefect.private (Prefect's logging setup keeps rh_prefect's loggers from propagating to
    pytest's own caplog handler)."""
    logger = logging.getLogger("rh_prefect.private")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _private_paths_taken(caplog) -> set[str]:
    return {r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().endswith("private path")}


def test_s3_copies_and_listing_same_bytes(places, local_tree, way, tmp_path, caplog):
    system, base = places["s3"]
    up = rh.folder(path=str(local_tree)).to(system, f"{base}/up")  # local -> s3
    assert stored_sha256s(up) == sha256s(TREE)
    assert sorted(up.ls(full_paths=False, recursive=True)) == sorted(TREE)
    assert folder_contents(up) == TREE

    down = up.to("file", str(tmp_path / "down"))  # s3 -> local
    assert stored_sha256s(down) == sha256s(TREE)

    across = up.to(system, f"{base}/across")  # s3 -> s3, server-side
    assert across.last_copy.server_side
    assert stored_sha256s(across) == sha256s(TREE)
    assert up.to(system, f"{base}/across").last_copy.files_copied == 0  # the listing finds them all again

    gs_system, gs_base = places["gs"]
    to_gs = up.to(gs_system, f"{gs_base}/from-s3")  # s3 -> gs: one streamed GET per object (S3 calls of our own)
    assert stored_sha256s(to_gs) == sha256s(TREE)
    back = to_gs.to(system, f"{base}/from-gs")  # gs -> s3: the large one as a concurrent multipart upload
    assert stored_sha256s(back) == sha256s(TREE)

    taken = _private_paths_taken(caplog)
    if way == "public":
        assert not taken
    else:
        assert any("_copy_basic" in t for t in taken) and any("_call_s3" in t for t in taken), taken


def test_gcs_copies_and_listing_same_bytes(places, local_tree, way, tmp_path, caplog):
    system, base = places["gs"]
    up = rh.folder(path=str(local_tree)).to(system, f"{base}/up")  # local -> gs (a streamed upload when private)
    assert stored_sha256s(up) == sha256s(TREE)
    assert sorted(up.ls(full_paths=False, recursive=True)) == sorted(TREE)

    down = up.to("file", str(tmp_path / "down"))  # gs -> local (direct media GETs when private)
    assert stored_sha256s(down) == sha256s(TREE)
    assert up.to("file", str(tmp_path / "down")).last_copy.files_copied == 0

    if way == "public":
        assert not _private_paths_taken(caplog)


def test_changed_signature_is_noticed_and_the_public_way_taken(places, local_tree, tmp_path, monkeypatch, caplog):
    """An s3fs/gcsfs release whose private helpers take other arguments: the signature check (or, where it passes,
    the first call) notices, a WARNING says so once, and the bytes still arrive."""
    import gcsfs
    import s3fs

    for private in Private.registry.values():
        monkeypatch.setattr(private, "_usable", {})

    original = s3fs.S3FileSystem._copy_basic

    async def copy_basic(self, source, destination):  # renamed parameters: the signature check catches it
        return await original(self, source, destination)  # (s3fs's own public _cp_file still calls it)

    list_objects = getattr(gcsfs.GCSFileSystem, "_call_list_objects", None)

    async def call_list_objects(self, bucket, **kwargs):  # same signature, but our call fails as a change would
        # (gcsfs's own listing calls it too, and must keep working)
        if sys._getframe(1).f_globals.get("__name__") == _gcs_private.__name__:
            raise TypeError("_call_list_objects() got an unexpected keyword argument 'maxResults'")
        return await list_objects(self, bucket, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_copy_basic", copy_basic)
    monkeypatch.setattr(gcsfs.GCSFileSystem, "_call_list_objects", call_list_objects, raising=False)

    s3_system, s3_base = places["s3"]
    up = rh.folder(path=str(local_tree)).to(s3_system, f"{s3_base}/up")
    across = up.to(s3_system, f"{s3_base}/across")
    assert across.last_copy.server_side and stored_sha256s(across) == sha256s(TREE)
    assert "_copy_basic takes no path1, path2 any more: public fallback" in caplog.text

    gs_system, gs_base = places["gs"]
    gs_up = rh.folder(path=str(local_tree)).to(gs_system, f"{gs_base}/up")
    down = gs_up.to("file", str(tmp_path / "down"))  # lists gs: the first page call fails, the fallback lists
    assert stored_sha256s(down) == sha256s(TREE)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "_call_list_objects" in r.getMessage()]
    assert len(warnings) == 1  # once, not per listing


@pytest.mark.servers
def test_prefect_save_same_document_either_way(tmp_path, unique_name, way):
    """Block saves through Prefect's private _save_sync or its public asave: the same document comes back, and a
    second save of the same name updates it instead of failing."""
    name = unique_name("priv")
    rh.folder(name=name, path=tmp_path / "data").save().put({"a.txt": b"hello"})
    again = rh.folder(name=name)
    assert again.path == str(tmp_path / "data") and again.get("a.txt") == b"hello"
    again.path = str(tmp_path / "moved")
    again.save(overwrite=True)
    assert rh.load(name).path == str(tmp_path / "moved")


@pytest.mark.servers
def test_prefect_run_snapshot_either_way(tmp_path, way):
    """The snapshot a run on a worker reads its blocks from: saved anonymously (private) or under a unique name
    (public); either way a document with the block's fields, which the dispatcher deletes by its id."""
    from helpers import prefect_client

    from rh_prefect.runtime import _prefect_private

    folder = rh.folder(path=tmp_path / "snap")
    doc_id = _prefect_private.save_block(folder.model_copy(deep=True), anonymous=True)
    with prefect_client() as client:
        doc = client.read_block_document(doc_id)
        assert doc.data["path"] == str(tmp_path / "snap")
        assert doc.is_anonymous == (way == "private")
        client.delete_block_document(doc_id)
