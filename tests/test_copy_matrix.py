"""Copies between every pair of systems keep paths and bytes, resume to zero work, and never show partial files."""

from __future__ import annotations

import hashlib
import os
import posixpath
import threading
from pathlib import Path

import pytest

import rh_prefect as rh
from rh_prefect import transfer

SYSTEMS = ["file", "ssh", "s3", "gs"]
TREE = {
    "empty.txt": b"",
    "top.txt": b"top level\n",
    "a/big.bin": os.urandom(3 * 2**20 + 123),  # ~3 MiB: several SFTP and HTTP chunks
    "a/b/small.txt": b"small",
    "a/b/c/deep.bin": os.urandom(10_000),
    "z/only-child/leaf.dat": b"\x00" * 100,
}


def sha_manifest(f: rh.Folder) -> dict[str, str]:
    """relative path -> sha256, read through the raw fsspec filesystem (not the copy engine)."""
    fs = f.sys.fs
    fs.invalidate_cache()
    root = f.fs_path.rstrip("/")
    out = {}
    for path in fs.find(root):
        norm = path if path.startswith("/") or not root.startswith("/") else "/" + path
        rel = norm[len(root) + 1 :]
        digest = hashlib.sha256()
        with fs.open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(2**20), b""):
                digest.update(chunk)
        out[rel] = digest.hexdigest()
    return out


def expected_manifest(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


@pytest.fixture
def local_tree(tmp_path) -> Path:
    root = tmp_path / "tree"
    for rel, data in TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def source_on(places, sysname: str, local_tree: Path) -> rh.Folder:
    system, base = places[sysname]
    src = rh.folder(path=f"{base}/src", system=system)
    src.put(local_tree)
    return src


@pytest.mark.parametrize("dst_name", SYSTEMS)
@pytest.mark.parametrize("src_name", SYSTEMS)
def test_copy_pair(places, local_tree, src_name, dst_name):
    src = source_on(places, src_name, local_tree)
    assert sha_manifest(src) == expected_manifest(TREE)
    system, base = places[dst_name]
    dst_path = f"{base}/dst-from-{src_name}"

    before = transfer.COUNTERS["bytes_copied"]
    dst = src.to(system, dst_path)
    moved = transfer.COUNTERS["bytes_copied"] - before
    assert sha_manifest(dst) == expected_manifest(TREE)
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
    assert sha_manifest(dst) == expected_manifest(TREE)


@pytest.fixture
def github_source(git_server, tmp_path, monkeypatch) -> rh.Folder:
    monkeypatch.setenv("RH_PREFECT_CACHE", str(tmp_path / "cache"))
    creds = rh.GitHubCredentials(base_url=git_server.base_url)
    return rh.folder(path="org/repo@main", system="github", credentials=creds)


@pytest.mark.parametrize("dst_name", SYSTEMS)
def test_copy_from_github(places, github_source, git_server, dst_name):
    system, base = places[dst_name]
    dst = github_source.to(system, f"{base}/from-github")
    assert sha_manifest(dst) == expected_manifest(git_server.expected_files("main"))
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
    assert sha_manifest(dst) == expected_manifest({"top.txt": b"different and longer content"})


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
    assert sha_manifest(dst) == expected_manifest({"big.bin": big})
