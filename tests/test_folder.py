"""The Folder API on every writable system: ls, put, get, open, exists_in_system, mkdir, rm, mv, to, defaults."""

from __future__ import annotations

import os
import threading
import time

import pytest

import rh_prefect as rh

from helpers import folder_contents, write_tree

SYSTEMS = ["file", "ssh", "s3", "gs"]
BIG = os.urandom(3 * 2**20 + 17)  # spans several SFTP/HTTP chunks, not a toy string


def make(places, sysname: str, sub: str = "f") -> rh.Folder:
    system, base = places[sysname]
    return rh.folder(path=f"{base}/{sub}", system=system)


def raw_exists(f: rh.Folder, key: str) -> bool:
    f.sys.fs.invalidate_cache()
    return f.sys.fs.exists(f"{f.fs_path}/{key}")


# --------------------------------------------------------------------------- put / get / ls


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_put_dict_get_and_ls(places, sysname):
    f = make(places, sysname)
    latin = "caf\xe9".encode("latin-1")
    f.put({"a.txt": "hello", "b.bin": b"\x00\xff", "empty": b"", "sub/deep/c.txt": b"c", "latin": latin})
    assert f.get("a.txt") == b"hello"
    assert f.get("a.txt", mode="r") == "hello"
    assert f.get("latin", encoding="latin-1") == "caf\xe9"
    assert f.get("empty") == b""
    assert f.get("sub/deep/c.txt") == b"c"
    assert f.ls(full_paths=False) == ["a.txt", "b.bin", "empty", "latin", "sub"]
    assert f.ls() == [f"{f.path}/{k}" for k in ["a.txt", "b.bin", "empty", "latin", "sub"]]
    assert f.ls(full_paths=False, recursive=True) == ["a.txt", "b.bin", "empty", "latin", "sub/deep/c.txt"]
    with pytest.raises(rh.NotFound, match=r"No file 'missing' in folder .*see folder\.ls\(\)"):
        f.get("missing")


def _set_mtime(f: rh.Folder, key: str, when: float) -> bool:
    """Backdate a file where the store allows it (local disk; the test cluster's disk is this machine's)."""
    if f.system == "file":
        os.utime(f"{f.fs_path}/{key}", (when, when))
        return True
    if f.system == "ssh":
        os.utime(f"{f.fs_path}/{key}", (when, when))  # same machine: the sshd serves this disk
        return True
    return False


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_ls_sort_newest_first(places, sysname):
    f = make(places, sysname)
    now = time.time()
    for i, key in enumerate(["old.txt", "mid.txt", "new.txt"]):
        f.put({key: key})
        if not _set_mtime(f, key, now - 100 + 10 * i) and i < 2:
            time.sleep(1.05)  # object stores stamp LastModified with 1 s resolution
    assert f.ls(full_paths=False, sort=True) == ["new.txt", "mid.txt", "old.txt"]
    assert f.ls(full_paths=False, sort=True, recursive=True) == ["new.txt", "mid.txt", "old.txt"]


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_put_local_paths_and_folders(places, sysname, tmp_path):
    f = make(places, sysname)
    src = write_tree(tmp_path / "src", {"x.txt": b"x", "d/y.bin": BIG, "d/e/z": b""})
    f.put(src)
    single = tmp_path / "single.txt"
    single.write_bytes(b"one file")
    f.put(str(single))
    other = rh.folder(path=tmp_path / "other")
    other.put({"o/1.txt": b"from a folder"})
    f.put(other)
    assert folder_contents(f) == {"x.txt": b"x", "d/y.bin": BIG, "d/e/z": b"", "single.txt": b"one file",
                           "o/1.txt": b"from a folder"}
    with pytest.raises(rh.NotFound, match="does not exist"):
        f.put(tmp_path / "nope")
    with pytest.raises(TypeError, match="dict of name -> bytes/str, a local path or a Folder"):
        f.put(123)  # type: ignore[arg-type]


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_put_without_overwrite_writes_nothing(places, sysname, tmp_path):
    f = make(places, sysname)
    f.put({"a.txt": b"original"})

    with pytest.raises(rh.AlreadyExists) as info:
        f.put({"new1.txt": b"1", "a.txt": b"replacement", "new2/x.txt": b"2"})
    assert "'a.txt'" in str(info.value) and "overwrite=True" in str(info.value)
    assert "Nothing was written" in str(info.value)

    src = write_tree(tmp_path / "src", {"new3.txt": b"3", "a.txt": b"local version"})
    with pytest.raises(rh.AlreadyExists, match="Nothing was copied"):
        f.put(src)
    other = rh.folder(path=tmp_path / "other")
    other.put({"new4.txt": b"4", "a.txt": b"folder version"})
    with pytest.raises(rh.AlreadyExists, match="overwrite=True"):
        f.put(other)

    for key in ("new1.txt", "new2/x.txt", "new3.txt", "new4.txt"):
        assert not raw_exists(f, key), key
    assert folder_contents(f) == {"a.txt": b"original"}

    f.put({"a.txt": b"replacement", "new1.txt": b"1"}, overwrite=True)
    assert folder_contents(f) == {"a.txt": b"replacement", "new1.txt": b"1"}


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_bad_keys_are_refused_before_writing(places, sysname):
    f = make(places, sysname)
    f.put({"keep": b"k"})
    for bad, words in [("../escape", "contains '..'"), ("/abs", "is absolute"), ("a\x00b", "NUL"), ("", "non-empty")]:
        with pytest.raises(rh.InvalidPath, match=words):
            f.put({"fine.txt": b"f", bad: b"x"})
    assert folder_contents(f) == {"keep": b"k"}


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_a_backslash_is_a_character_of_a_name_everywhere(places, sysname, tmp_path):
    # Keys are '/'-separated; a backslash is part of a name in put, get, ls, open, rm and copies alike, so a
    # name listed by ls() round-trips (before, put() read it as a separator while copies kept it).
    f = make(places, sysname)
    f.put({"a\\b.txt": b"one", "dir\\x/c.txt": b"two", "..\\not-up": b"three"})
    assert f.ls(full_paths=False, recursive=True) == ["..\\not-up", "a\\b.txt", "dir\\x/c.txt"]
    assert f.get("a\\b.txt") == b"one" and f.get("dir\\x/c.txt") == b"two"
    assert not raw_exists(f, "a/b.txt")
    with f.open("a\\b.txt") as fh:
        assert fh.read() == b"one"
    copy = f.to("file", str(tmp_path / "copy"))
    assert sorted(str(p.relative_to(tmp_path / "copy")) for p in (tmp_path / "copy").rglob("*") if p.is_file()) \
        == ["..\\not-up", "a\\b.txt", "dir\\x/c.txt"]
    assert folder_contents(copy) == {"..\\not-up": b"three", "a\\b.txt": b"one", "dir\\x/c.txt": b"two"}
    f.rm(["a\\b.txt"])
    assert f.ls(full_paths=False, recursive=True) == ["..\\not-up", "dir\\x/c.txt"]
    with pytest.raises(rh.InvalidPath, match="is absolute"):
        f.put({"/abs\\x": b"x"})


# --------------------------------------------------------------------------- open


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_open_streams_reads_and_writes_atomically(places, sysname):
    f = make(places, sysname)
    f.put({"big.bin": b"old"})
    with f.open("big.bin", "wb") as w:
        for start in range(0, len(BIG), 2**20):
            w.write(BIG[start : start + 2**20])
            # Until the writer closes, readers still see the old file under the final name.
            assert f.get("big.bin") == b"old"
        assert not raw_exists(f, "fresh.bin")
    assert f.get("big.bin") == BIG

    with f.open("big.bin") as r:
        first = r.read(2**20)
        rest = r.read()
    assert first + rest == BIG and len(first) == 2**20

    with f.open("notes.txt", "w") as w:
        w.write("line 1\nline 2\n")
    with f.open("notes.txt", "r") as r:
        assert r.readlines() == ["line 1\n", "line 2\n"]

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with f.open("big.bin", "wb") as w:
            w.write(b"half-written")
            raise Boom()
    with pytest.raises(Boom):
        with f.open("never.bin", "wb") as w:
            w.write(b"half-written")
            raise Boom()
    assert f.get("big.bin") == BIG  # the failed write left the committed file alone
    assert not raw_exists(f, "never.bin")
    assert f.ls(full_paths=False) == ["big.bin", "notes.txt"]  # and no temporary names show
    with pytest.raises(rh.InvalidPath, match="mode 'ab' is not supported"):
        f.open("x", "ab").__enter__()


# --------------------------------------------------------------------------- exists / mkdir / rm


@pytest.mark.parametrize("sysname", SYSTEMS)
def test_exists_mkdir_rm(places, sysname):
    f = make(places, sysname, "fresh")
    assert not f.exists_in_system()
    with pytest.raises(rh.NotFound, match="does not exist"):
        f.ls()
    assert f.mkdir() is f
    if f.system in ("file", "ssh"):  # object stores have no empty directories
        assert f.exists_in_system() and f.ls() == []
    f.put({"a.txt": b"a", "b.txt": b"b", "sub/c.txt": b"c"})
    assert f.exists_in_system()
    f.rm(["a.txt", "sub", "not-there.txt"])
    assert folder_contents(f) == {"b.txt": b"b"}
    f.rm()
    assert not f.exists_in_system()


def test_mkdir_creates_a_missing_bucket(s3_env, s3_server, unique_name):
    import s3fs

    bucket = unique_name("mk")
    f = rh.folder(path=f"/{bucket}/data", system="s3")
    f.mkdir()
    raw = s3fs.S3FileSystem(skip_instance_cache=True)
    assert raw.exists(bucket)
    f.put({"a": b"1"})
    assert raw.cat(f"{bucket}/data/a") == b"1"
    raw.rm(bucket, recursive=True)


# --------------------------------------------------------------------------- to / mv


@pytest.mark.parametrize("src_sys, dst_sys", [("file", "s3"), ("s3", "ssh"), ("ssh", "gs"), ("gs", "file")])
def test_mv_moves_data_and_registry_entry(places, src_sys, dst_sys, unique_name):
    name = unique_name("mv")
    f = make(places, src_sys, "moving").save(name)
    f.put({"a.txt": b"a", "d/b.bin": BIG})
    old = rh.folder(path=f.path, system=places[src_sys][0])
    system, base = places[dst_sys]
    moved = f.mv(system, f"{base}/moved")
    assert moved is f
    assert folder_contents(f) == {"a.txt": b"a", "d/b.bin": BIG}
    assert not old.exists_in_system()
    again = rh.folder(name=name)
    assert again.system == f.system == rh.folder(path=f"{base}/x", system=system).system
    assert again.path == f.path
    assert folder_contents(again) == {"a.txt": b"a", "d/b.bin": BIG}


def test_mv_onto_itself_keeps_the_data(tmp_path):
    f = rh.folder(path=tmp_path / "same")
    f.put({"a.txt": b"precious"})
    for target in (f.path, f"{f.path}/inside"):
        with pytest.raises(rh.InvalidPath, match="onto itself|inside itself"):
            f.mv("file", target)
    assert folder_contents(f) == {"a.txt": b"precious"}


def test_to_default_paths(places, tmp_path, monkeypatch, s3_bucket, gs_bucket, rh_cluster, ssh_server, unique_name):
    leaf = unique_name("proj")
    src = rh.folder(path=f"/{s3_bucket}/{leaf}", system="s3")
    src.put({"a.txt": b"a"})

    monkeypatch.chdir(tmp_path)
    local = src.to("file")
    assert local.path == str(tmp_path / leaf)
    assert (tmp_path / leaf / "a.txt").read_bytes() == b"a"

    on_cluster = local.to(rh_cluster)
    assert on_cluster.path == f"~/.cache/rh_prefect/{leaf}"
    assert (ssh_server.home / ".cache" / "rh_prefect" / leaf / "a.txt").read_bytes() == b"a"
    on_cluster.rm()

    monkeypatch.delenv("RH_PREFECT_GS_BUCKET", raising=False)
    with pytest.raises(rh.InvalidPath) as info:
        local.to("gs")
    assert "needs a path" in str(info.value) and "RH_PREFECT_GS_BUCKET" in str(info.value)
    monkeypatch.setenv("RH_PREFECT_GS_BUCKET", gs_bucket)
    gs = local.to("gs")
    assert gs.path == f"/{gs_bucket}/{leaf}"
    assert gs.get("a.txt") == b"a"


def test_to_returns_unsaved_copy_keeping_the_source(places, unique_name):
    name = unique_name("keep")
    f = make(places, "file").save(name)
    f.put({"a.txt": b"a"})
    system, base = places["s3"]
    copy = f.to(system, f"{base}/copy")
    assert copy.system == "s3" and copy.path == f"{base}/copy"
    assert copy.last_copy.files_copied == 1
    assert rh.folder(name=name).system == "file"  # the saved entry still points at the source
    assert folder_contents(copy) == folder_contents(f) == {"a.txt": b"a"}


def test_resources_needs_a_saved_folder(tmp_path):
    with pytest.raises(rh.NotFound, match="save it with a name first"):
        rh.folder(path=tmp_path).resources()


def test_concurrent_puts_from_threads(places):
    f = make(places, "s3")
    errors = []

    def worker(i: int) -> None:
        try:
            f.put({f"t{i}/{j}.txt": f"{i}-{j}" for j in range(5)})
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert folder_contents(f) == {f"t{i}/{j}.txt": f"{i}-{j}".encode() for i in range(4) for j in range(5)}
