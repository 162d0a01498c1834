"""Copies between every pair of systems keep paths and bytes, resume to zero work, and never show partial files."""

from __future__ import annotations

import os
import posixpath
import threading
from pathlib import Path

import pytest

import rh_prefect as rh
from rh_prefect import transfer

from helpers import sha256s, stored_sha256s, write_tree

SYSTEMS = ["file", "ssh", "s3", "gs"]
TREE = {
    "empty.txt": b"",
    "top.txt": b"top level\n",
    "a/big.bin": os.urandom(3 * 2**20 + 123),  # ~3 MiB: several SFTP and HTTP chunks
    "a/b/small.txt": b"small",
    "a/b/c/deep.bin": os.urandom(10_000),
    "z/only-child/leaf.dat": b"\x00" * 100,
}


@pytest.fixture
def local_tree(tmp_path) -> Path:
    return write_tree(tmp_path / "tree", TREE)


def source_on(places, sysname: str, local_tree: Path) -> rh.Folder:
    system, base = places[sysname]
    src = rh.folder(path=f"{base}/src", system=system)
    src.put(local_tree)
    return src


@pytest.mark.parametrize("dst_name", SYSTEMS)
@pytest.mark.parametrize("src_name", SYSTEMS)
def test_copy_pair(places, local_tree, src_name, dst_name):
    src = source_on(places, src_name, local_tree)
    assert stored_sha256s(src) == sha256s(TREE)
    system, base = places[dst_name]
    dst_path = f"{base}/dst-from-{src_name}"

    before = transfer.moved_here()
    dst = src.to(system, dst_path)
    moved = (transfer.moved_here() - before).bytes_copied
    assert stored_sha256s(dst) == sha256s(TREE)
    assert dst.last_copy.files_copied == len(TREE)
    if src_name == dst_name and dst_name in ("s3", "gs"):
        # Same endpoint: the store copies the objects itself, no byte passes through this process.
        assert dst.last_copy.server_side and moved == 0
    elif dst.last_copy.server_side:  # a cluster copying within itself (cp on the host)
        assert src_name == dst_name == "ssh" and moved == 0
    else:
        assert moved == sum(len(v) for v in TREE.values())

    again = src.to(system, dst_path)
    assert again.last_copy.files_copied == 0
    assert again.last_copy.files_skipped == len(TREE)
    assert stored_sha256s(dst) == sha256s(TREE)


@pytest.fixture
def github_source(git_server, tmp_path, monkeypatch) -> rh.Folder:
    monkeypatch.setenv("RH_PREFECT_CACHE", str(tmp_path / "cache"))
    creds = rh.GitHubCredentials(base_url=git_server.base_url)
    return rh.folder(path="org/repo@main", system="github", credentials=creds)


@pytest.mark.parametrize("dst_name", SYSTEMS)
def test_copy_from_github(places, github_source, git_server, dst_name):
    system, base = places[dst_name]
    dst = github_source.to(system, f"{base}/from-github")
    assert stored_sha256s(dst) == sha256s(git_server.expected_files("main"))
    assert github_source.to(system, f"{base}/from-github").last_copy.files_copied == 0


def test_copy_missing_source_says_so(places):
    system, base = places["s3"]
    missing = rh.folder(path=f"{base}/never-written", system=system)
    with pytest.raises(rh.NotFound, match="Nothing to copy: s3://.*never-written does not exist"):
        missing.to("file", path="/tmp/rh-should-not-exist")
    assert not os.path.exists("/tmp/rh-should-not-exist")


def test_overwrite_false_copy_refuses_before_copying(places, local_tree):
    src = source_on(places, "file", local_tree)
    system, base = places["s3"]
    dst = rh.folder(path=f"{base}/dst", system=system)
    dst.put({"top.txt": b"different and longer content"})
    with pytest.raises(rh.AlreadyExists, match="Nothing was copied"):
        src.to(system, f"{base}/dst", overwrite=False)
    assert stored_sha256s(dst) == sha256s({"top.txt": b"different and longer content"})


@pytest.mark.parametrize("dst_name", SYSTEMS)
def test_no_partial_file_under_its_final_name(places, tmp_path, dst_name):
    big = os.urandom(24 * 2**20)
    src_dir = tmp_path / "bigsrc"
    src_dir.mkdir()
    (src_dir / "big.bin").write_bytes(big)
    system, base = places[dst_name]
    dst = rh.folder(path=f"{base}/big", system=system)
    dst.mkdir()
    fs = dst.sys.fs
    root = dst.fs_path
    seen_sizes: list[int] = []
    temp_names: set[str] = set()
    polls = 0
    done = threading.Event()
    watching = threading.Event()

    def watch() -> None:
        nonlocal polls
        while not done.is_set():
            watching.set()
            fs.invalidate_cache()
            try:
                entries = fs.ls(root, detail=True)
            except FileNotFoundError:
                entries = []
            polls += 1
            for info in entries:
                base_name = posixpath.basename(info["name"].rstrip("/"))
                if base_name == "big.bin":
                    seen_sizes.append(int(info["size"]))
                elif ".rh-tmp-" in base_name:
                    temp_names.add(base_name)

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert watching.wait(30)  # the watcher is listing before the copy starts
    try:
        rh.folder(path=src_dir).to(system, f"{base}/big")
    finally:
        done.set()
        watcher.join()
    assert polls >= 1
    assert all(size == len(big) for size in seen_sizes), sorted(set(seen_sizes))
    if dst_name == "ssh":
        assert temp_names, "the watcher never saw the copy in progress"  # proves the check was meaningful
    assert dst.ls(full_paths=False) == ["big.bin"]  # no temporary name left behind
    assert stored_sha256s(dst) == sha256s({"big.bin": big})
