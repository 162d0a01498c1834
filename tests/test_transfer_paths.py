"""The copy engine's faster paths keep its promises: byte-exact results, resume-by-skip, nothing partial under a
final name, and a clear error (not a hang) when one side fails mid-stream.

Paths covered here and not by test_copy_matrix.py (whose tree is too small to reach them):
* many small files from a cluster to a bucket: one tar stream, each file uploaded as it arrives;
* a large file between two remote systems: streamed reads (one S3 GET; pipelined SFTP reads) overlapped with
  the upload (S3 parts in parallel; GCS one streamed resumable-upload request);
* small files as coroutines on the filesystem's event loop (bucket -> local, bucket -> bucket), one of which fails.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import rh_prefect as rh
from rh_prefect import settings, transfer
from rh_prefect.systems import get_system

from helpers import sha256s, stored_sha256s, write_tree

SMALL = {f"d{i % 3}/f{i:03d}.bin": os.urandom(1000 + i) for i in range(30)}
BIG_SIZE = 20 * 2**20 + 12345  # above the 8 MiB streaming chunk and the 16 MiB parallel-upload threshold


@pytest.fixture(scope="module")
def big_bytes() -> bytes:
    return os.urandom(BIG_SIZE)


@pytest.fixture
def source_tree(tmp_path: Path, big_bytes: bytes) -> tuple[Path, dict[str, str]]:
    files = dict(SMALL, **{"big/big.bin": big_bytes})
    return write_tree(tmp_path / "src", files), sha256s(files)


@pytest.mark.parametrize("src_name,dst_name", [("ssh", "s3"), ("ssh", "gs"), ("s3", "gs"), ("gs", "s3")])
def test_remote_to_remote_small_and_big_files(places, source_tree, src_name, dst_name):
    local_root, expected = source_tree
    system, base = places[src_name]
    src = rh.folder(path=f"{base}/src", system=system)
    src.put(str(local_root))
    assert stored_sha256s(src) == expected

    dst_system, dst_base = places[dst_name]
    before = transfer.moved_here()
    dst = src.to(dst_system, f"{dst_base}/from-{src_name}")
    assert stored_sha256s(dst) == expected
    assert dst.last_copy.files_copied == len(expected)
    assert (transfer.moved_here() - before).bytes_copied == sum(len(v) for v in SMALL.values()) + BIG_SIZE

    again = src.to(dst_system, f"{dst_base}/from-{src_name}")
    assert (again.last_copy.files_copied, again.last_copy.files_skipped) == (0, len(expected))


@pytest.mark.parametrize("src_name,dst_name", [("ssh", "s3"), ("s3", "gs"), ("gs", "s3")])
def test_stream_shorter_than_listed_commits_nothing(places, tmp_path, big_bytes, src_name, dst_name):
    """A source that yields fewer bytes than its listing said (it changed mid-copy) is an IntegrityError, and
    the upload is abandoned: no object under the final name, no multipart upload left behind."""
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "big.bin").write_bytes(big_bytes)
    system, base = places[src_name]
    src = rh.folder(path=f"{base}/one", system=system)
    src.put(str(tmp_path / "one"))
    dst_system, dst_base = places[dst_name]
    dst = rh.folder(path=f"{dst_base}/short", system=dst_system)
    dst.mkdir()
    src_path = f"{src.fs_path.rstrip('/')}/big.bin"
    dst_path = f"{dst.fs_path.rstrip('/')}/big.bin"

    with pytest.raises(rh.IntegrityError, match=f"read {BIG_SIZE} bytes but the source listed {BIG_SIZE + 1}"):
        transfer.copy_file(src.sys, src_path, dst.sys, dst_path, size=BIG_SIZE + 1)

    dst.sys.fs.invalidate_cache()
    assert not dst.sys.fs.exists(dst_path)
    if dst_name == "s3":
        bucket = dst.fs_path.split("/", 1)[0]
        assert dst.sys.fs.list_multipart_uploads(bucket) == []


def test_failing_destination_stops_the_cluster_stream(places, rh_cluster):
    """Files streamed from a cluster into a bucket that does not exist: every upload fails, the tar stream is
    stopped (the call returns instead of waiting on a stalled channel), and the connection still works."""
    system, base = places["ssh"]
    src = rh.folder(path=f"{base}/stream-src", system=system)
    src.put(SMALL)
    ssh, s3 = src.sys, get_system("s3")
    missing = "rh-test-no-such-bucket-7f3a/x"

    with pytest.raises(rh.TransferError) as info:
        transfer.copy_tree(ssh, src.fs_path, s3, missing)
    assert f"{len(SMALL)} of {len(SMALL)} files failed to copy" in str(info.value)
    assert "run the copy again to resume" in str(info.value)
    assert set(info.value.failures) == set(SMALL)

    dst_system, dst_base = places["s3"]
    dst = src.to(dst_system, f"{dst_base}/after-failure")  # the same cluster connection, used again
    assert dst.last_copy.files_copied == len(SMALL)
    assert stored_sha256s(dst) == sha256s(SMALL)


def test_one_failing_file_in_a_batch_leaves_the_others_committed(places, tmp_path):
    """Small files from a bucket to local disk travel in batches of coroutines; a key that cannot be a local
    file name (a 300-byte path component; Linux allows 255) fails alone, with its own error, and the rest of
    its batch is committed and skipped on the next run."""
    system, base = places["s3"]
    src = rh.folder(path=f"{base}/batch", system=system)
    long_key = "d0/" + "n" * 300
    files = dict(SMALL, **{long_key: b"cannot land here"})
    src.sys.fs.pipe({f"{src.fs_path}/{k}": v for k, v in files.items()})

    dst = tmp_path / "batch-dst"
    with pytest.raises(rh.TransferError) as info:
        src.to("file", str(dst))
    assert f"1 of {len(files)} files failed to copy" in str(info.value)
    assert list(info.value.failures) == [long_key]
    assert isinstance(info.value.failures[long_key], OSError)
    assert "File name too long" in str(info.value.failures[long_key])

    got = {str(p.relative_to(dst)): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert got == SMALL  # no temporary files left either
    report = transfer.copy_tree(src.sys, src.fs_path, get_system("file"), str(dst), keys=list(SMALL))
    assert (report.files_copied, report.files_skipped) == (0, len(SMALL))


@pytest.mark.parametrize("dst_name", ["file", "ssh"])
def test_a_copy_removes_temporary_files_left_by_killed_writes(places, ssh_server, tmp_path, dst_name):
    # A SIGKILLed write leaves its hidden temporary file behind (never under a final name). The next whole-folder
    # copy onto that directory removes the ones untouched for an hour, and leaves fresh ones (a live write) and
    # anything inside a staging directory alone.
    src = rh.folder(path=str(tmp_path / "src"))
    src.put({"a.bin": b"a" * 100, "sub/b.bin": b"b" * 200})
    system, base = places[dst_name]
    dst = rh.folder(path=f"{base}/dst", system=system).mkdir()
    # The test cluster serves this machine's disk: a relative ssh path is under the sshd user's home.
    on_disk = Path(dst.fs_path) if dst.fs_path.startswith("/") else ssh_server.home / dst.fs_path
    (on_disk / "sub").mkdir(parents=True, exist_ok=True)
    (on_disk / ".rh-tmp-stage-0123456789ab").mkdir()
    old = [on_disk / ".a.bin.rh-tmp-0123456789ab", on_disk / "sub" / ".c.bin.rh-tmp-0123456789ab",
           on_disk / ".rh-tmp-stage-0123456789ab" / "x.bin"]
    fresh = on_disk / "sub" / ".b.bin.rh-tmp-ba9876543210"
    long_ago = time.time() - settings.current().stale_temp_seconds - 600
    for p in old + [fresh]:
        p.write_bytes(b"partial")
    for p in old:
        os.utime(p, (long_ago, long_ago))

    report = transfer.copy_tree(src.sys, src.fs_path, dst.sys, dst.fs_path)

    assert report.temps_removed == 2
    assert not old[0].exists() and not old[1].exists()
    assert old[2].exists() and fresh.exists()  # a staging directory's content and a live write: kept
    assert dst.get("a.bin") == b"a" * 100 and dst.get("sub/b.bin") == b"b" * 200
    assert dst.ls(full_paths=False, recursive=True) == ["a.bin", "sub/b.bin"]
    again = transfer.copy_tree(src.sys, src.fs_path, dst.sys, dst.fs_path)
    assert (again.files_copied, again.temps_removed) == (0, 0) and fresh.exists()


@pytest.mark.parametrize("written", ["more", "fewer"])
def test_gcs_streamed_upload_of_other_than_announced_size_leaves_nothing(places, big_bytes, written):
    """A GCS upload of known size goes up as one streamed request; bytes beyond the announced size (a source that
    grew while it was read), or fewer at close, are an IntegrityError that says so, and no object appears."""
    system, base = places["gs"]
    folder = rh.folder(path=f"{base}/sized", system=system)
    folder.mkdir()
    gs = folder.sys
    path = f"{folder.fs_path.rstrip('/')}/big.bin"
    announced = BIG_SIZE - 1 if written == "more" else BIG_SIZE + 1

    with pytest.raises(rh.IntegrityError, match="did the source change while it was copied"):
        with transfer.open_write(gs, path, size=announced) as f:
            chunk = settings.current().chunk_size
            for i in range(0, BIG_SIZE, chunk):
                f.write(big_bytes[i : i + chunk])

    gs.fs.invalidate_cache()
    assert not gs.fs.exists(path)
    transfer.write_bytes(gs, path, b"still usable")  # the filesystem and its connections still work
    assert gs.fs.cat_file(path) == b"still usable"


# ----------------------------------------------------------------------- sources listed in pages (object stores)

#: three listing pages (of PAGE objects)
MANY = {f"p{i % 7}/f{i:05d}.txt": str(i).encode() * (i % 5 + 1) for i in range(210)}
PAGE = 100  # objects per listing page in these tests (settings.list_page_size; 1000 by default): 3 pages


@pytest.fixture
def small_pages():
    with settings.override(list_page_size=PAGE):
        yield


def _seed_many(places: dict, name: str, leaf: str) -> rh.Folder:
    system, base = places[name]
    src = rh.folder(path=f"{base}/{leaf}", system=system)
    src.sys.fs.pipe({f"{src.fs_path}/{k}": v for k, v in MANY.items()})
    return src


def _raw_contents(folder: rh.Folder) -> dict[str, bytes]:
    """relative path -> bytes of every file under the folder, read with the raw fsspec filesystem."""
    fs, root = folder.sys.fs, folder.fs_path.rstrip("/")
    fs.invalidate_cache()
    paths = fs.find(root)
    start = len(root.lstrip("/")) + 1
    return {p.lstrip("/")[start:]: data for p, data in fs.cat(paths).items()}


def _recording_pages(monkeypatch, system_type: type, root: str) -> list[float]:
    """When each page of ``root``'s listing reached the copy (wall clock), through the public listing hook."""
    arrived: list[float] = []
    real = system_type.iter_files

    def iter_files(self, fs_root):
        for page in real(self, fs_root):
            if fs_root == root:
                arrived.append(time.time())
            yield page

    monkeypatch.setattr(system_type, "iter_files", iter_files)
    return arrived


@pytest.mark.parametrize("src_name,dst_name", [("s3", "file"), ("gs", "file"), ("s3", "s3")])
def test_a_source_listed_in_pages_is_copied_whole_while_it_is_listed(places, monkeypatch, src_name, dst_name,
                                                                  small_pages):
    """210 objects come in three listing pages; copying starts with the first page, every file arrives
    byte-exact, a directory placeholder object is not taken for a file, and a re-run (a destination listed in
    pages too) copies nothing."""
    src = _seed_many(places, src_name, "many")
    if src_name == "s3":  # a "folder" made in a console: an empty object whose key ends in "/"
        bucket, _, key = src.fs_path.partition("/")
        src.sys.fs.call_s3("put_object", Bucket=bucket, Key=f"{key}/p0/", Body=b"")
    arrived = _recording_pages(monkeypatch, type(src.sys), src.fs_path)
    dst_system, dst_base = places[dst_name]

    dst = src.to(dst_system, f"{dst_base}/many-copy")

    assert len(arrived) == 3
    assert _raw_contents(dst) == MANY
    assert dst.last_copy.files_copied == len(MANY)
    if dst_name == "file":  # the first file was committed before the listing's last page arrived
        first_commit = min(p.stat().st_mtime for p in Path(dst.fs_path).rglob("*") if p.is_file())
        assert first_commit < arrived[-1], (first_commit, arrived)
    again = src.to(dst_system, f"{dst_base}/many-copy")
    assert (again.last_copy.files_copied, again.last_copy.files_skipped) == (0, len(MANY))


def test_overwrite_false_checks_every_page_before_copying_anything(places, tmp_path, small_pages):
    """A clash on the listing's last page still stops the copy before its first file."""
    src = _seed_many(places, "gs", "clash")
    last = sorted(MANY)[-1]
    dst = tmp_path / "clash-dst"
    (dst / last).parent.mkdir(parents=True)
    (dst / last).write_bytes(b"the user's own version")

    with pytest.raises(rh.AlreadyExists, match=r"1 file\(s\) already exist .*Nothing was copied"):
        transfer.copy_tree(src.sys, src.fs_path, get_system("file"), str(dst), overwrite=False)
    assert [p for p in dst.rglob("*") if p.is_file()] == [dst / last]
    assert (dst / last).read_bytes() == b"the user's own version"


def test_a_listing_that_breaks_midway_leaves_complete_files_and_resumes(places, tmp_path, monkeypatch,
                                                                       small_pages):
    """The listing's second page fails (the connection dropped): the copy raises that error once the files
    already started are done; what is at the destination is complete, and a re-run copies only the rest."""
    src = _seed_many(places, "s3", "broken")
    system_type = type(src.sys)
    real = system_type.iter_files

    def breaking(self, fs_root):
        pages = real(self, fs_root)
        yield next(pages)
        if fs_root == src.fs_path:
            raise ConnectionResetError("listing connection reset by peer")
        yield from pages

    monkeypatch.setattr(system_type, "iter_files", breaking)
    dst = tmp_path / "broken-dst"
    with pytest.raises(ConnectionResetError, match="listing connection reset"):
        transfer.copy_tree(src.sys, src.fs_path, get_system("file"), str(dst))
    got = {str(p.relative_to(dst)): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert got and len(got) <= PAGE
    assert all(MANY[k] == v for k, v in got.items())  # complete files only, no temporary names

    monkeypatch.setattr(system_type, "iter_files", real)
    report = transfer.copy_tree(src.sys, src.fs_path, get_system("file"), str(dst))
    assert (report.files_copied, report.files_skipped) == (len(MANY) - len(got), len(got))
    assert {str(p.relative_to(dst)): p.read_bytes() for p in dst.rglob("*") if p.is_file()} == MANY


def test_a_prefix_holding_only_a_directory_placeholder_is_an_empty_folder(places, tmp_path):
    """A "folder" made in the S3 console is an empty object named "<prefix>/": copying it copies nothing and
    makes no file out of the placeholder; a placeholder next to files is not a file either."""
    system, base = places["s3"]
    src = rh.folder(path=f"{base}/console", system=system)
    bucket, _, key = src.fs_path.partition("/")
    src.sys.ensure_container(src.fs_path, create=True)
    src.sys.fs.call_s3("put_object", Bucket=bucket, Key=f"{key}/", Body=b"")

    report = transfer.copy_tree(src.sys, src.fs_path, get_system("file"), str(tmp_path / "empty"))
    assert (report.files_copied, report.files_skipped) == (0, 0)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]

    src.sys.fs.call_s3("put_object", Bucket=bucket, Key=f"{key}/sub/", Body=b"")
    src.sys.fs.call_s3("put_object", Bucket=bucket, Key=f"{key}/sub/a.txt", Body=b"a")
    copied = src.to("file", str(tmp_path / "one"))
    assert _raw_contents(copied) == {"sub/a.txt": b"a"}
    assert src.ls(full_paths=False, recursive=True) == ["sub/a.txt"]


def test_small_uploads_to_s3_go_with_their_headers_and_large_parts_wait_for_continue(places, source_tree):
    """Small bodies are sent without ``Expect: 100-continue`` (each would cost a round trip more); parts of a
    large upload still ask the server first. Headers are read from the requests as botocore sends them."""
    from fsspec.asyn import sync

    from rh_prefect.systems.local import LocalSystem

    local_root, expected = source_tree
    _, base = places["s3"]
    s3 = get_system("s3")
    fs = s3.fs
    sync(fs.loop, fs.set_session)
    sent: list[tuple[str, str, int, str | None]] = []

    def record(request, **_):
        if request.method in ("PUT", "POST"):
            expect = request.headers.get("Expect")
            length = int(request.headers.get("Content-Length") or 0)
            sent.append((request.method, request.url, length,
                         expect.decode() if isinstance(expect, bytes) else expect))

    fs.s3.meta.events.register("before-send.s3", record)
    report = transfer.copy_tree(LocalSystem(), str(local_root), s3, s3.fs_path(f"{base}/expect"))

    assert report.files_copied == len(expected)
    assert stored_sha256s(rh.folder(path=f"{base}/expect", system="s3")) == expected
    small = [s for s in sent if s[0] == "PUT" and "uploadId=" not in s[1]]
    parts = [s for s in sent if s[0] == "PUT" and "uploadId=" in s[1]]
    assert len(small) == len(SMALL) and all(s[3] is None for s in small), small
    assert len(parts) >= 2 and all(p[2] > 2**20 and p[3] == "100-continue" for p in parts), parts
