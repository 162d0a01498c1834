"""The named registry on the Prefect server: save/reload, plain Prefect loading, names, namespaces, exists/delete."""

from __future__ import annotations

import pytest

import rh_prefect as rh
from rh_prefect import names

from helpers import prefect_client

pytestmark = pytest.mark.servers  # every test here saves, loads or lists names on the Prefect server


def test_save_returns_the_folder_and_chains(tmp_path, unique_name):
    name = unique_name("chain")
    local = rh.folder(name=name, path=tmp_path / "folder_tmp").save()
    assert isinstance(local, rh.Folder)
    # The Runhouse seed chains straight off save().
    local.put({f"sample_file_{i}.txt": f"file{i}".encode() for i in range(3)})
    assert local.name == name
    assert local.full_name == f"@/{name}"
    assert sorted(p.name for p in (tmp_path / "folder_tmp").iterdir()) == [
        "sample_file_0.txt", "sample_file_1.txt", "sample_file_2.txt"
    ]


def test_name_alone_reloads_the_saved_folder(tmp_path, unique_name):
    name = unique_name("reload")
    rh.folder(name=name, path=tmp_path / "data").save().put({"a.txt": b"hello"})

    again = rh.folder(name=name)
    assert again.path == str(tmp_path / "data")
    assert again.system == "file"
    assert again.name == name
    assert again.get("a.txt") == b"hello"
    assert type(rh.load(name)) is rh.Folder


def test_plain_prefect_block_load_works(tmp_path, unique_name):
    name = unique_name("plain")
    rh.folder(name=name, path=tmp_path / "p").save()
    # A default-namespace name is its own block name, so plain Prefect code (and the UI) sees it as such.
    loaded = rh.Folder.load(name)
    assert loaded.path == str(tmp_path / "p")
    assert loaded.name == name

    ns_name = f"/{unique_name('ns')}/x_Y.z"
    rh.folder(name=ns_name, path=tmp_path / "q").save()
    block_name = names.encode(ns_name)
    assert block_name.startswith("--s")
    loaded = rh.Folder.load(block_name)
    assert loaded.path == str(tmp_path / "q")
    assert loaded.name == ns_name  # decoded back from the block name


def test_names_in_different_forms_do_not_collide(tmp_path, unique_name):
    base = unique_name("form")
    forms = [base + "_x", base + "-x", base + ".x", base.upper() + "-x", f"/{base}/x", f"@/{base}-0x", f"@/{base}--x"]
    for i, name in enumerate(forms):
        rh.folder(name=name, path=tmp_path / f"d{i}").save()
    for i, name in enumerate(forms):
        assert rh.folder(name=name).path == str(tmp_path / f"d{i}"), name
    # "@/x" and "x" are the same resource, not two.
    assert rh.folder(name=f"@/{base}_x").path == str(tmp_path / "d0")


def test_save_overwrite_false_refuses_and_keeps_the_old_entry(tmp_path, unique_name):
    name = unique_name("ow")
    rh.folder(name=name, path=tmp_path / "first").save()
    with pytest.raises(rh.AlreadyExists, match="pass overwrite=True to replace it"):
        rh.folder(path=tmp_path / "second").save(name, overwrite=False)
    assert rh.folder(name=name).path == str(tmp_path / "first")
    # by default too: a name saved by someone else is replaced only with overwrite=True
    with pytest.raises(rh.AlreadyExists, match="pass overwrite=True to replace it"):
        rh.folder(path=tmp_path / "second").save(name)
    assert rh.folder(name=name).path == str(tmp_path / "first")
    rh.folder(path=tmp_path / "second").save(name, overwrite=True)
    assert rh.folder(name=name).path == str(tmp_path / "second")
    assert [n for n, _ in rh.list_names() if n == f"@/{name}"] == [f"@/{name}"]
    # the resource loaded by that name is updated in place without asking
    loaded = rh.folder(name=name)
    loaded.path = str(tmp_path / "third")
    loaded.save()
    assert rh.folder(name=name).path == str(tmp_path / "third")


def test_folder_and_cluster_cannot_share_a_name(tmp_path, unique_name, ssh_server):
    name = unique_name("shared")
    rh.cluster(name=name, host=ssh_server.host, port=ssh_server.port, user=ssh_server.user).save()
    with pytest.raises(rh.AlreadyExists) as info:
        rh.folder(name=name, path=tmp_path / "f").save()
    assert "already used by a Cluster" in str(info.value)
    assert f"rh.delete({name!r})" in str(info.value)
    assert type(rh.load(name)) is rh.Cluster  # the cluster entry is untouched

    other = unique_name("shared")
    rh.folder(name=other, path=tmp_path / "g").save()
    with pytest.raises(rh.AlreadyExists, match="already used by a Folder"):
        rh.cluster(name=other, host=ssh_server.host, port=ssh_server.port).save()
    with pytest.raises(rh.NotFound, match="is a Folder, not a Cluster"):
        rh.cluster(other)


def test_exists_and_delete_remove_config_only(tmp_path, unique_name):
    name = unique_name("del")
    f = rh.folder(name=name, path=tmp_path / "keep").save()
    f.put({"data.bin": b"\x00\x01"})
    assert rh.exists(name)
    assert rh.exists(f"@/{name}")

    rh.delete(name)
    assert not rh.exists(name)
    assert (tmp_path / "keep" / "data.bin").read_bytes() == b"\x00\x01"  # data stays
    with pytest.raises(rh.NotFound, match="No resource named"):
        rh.load(name)
    with pytest.raises(rh.NotFound, match="nothing to delete"):
        rh.delete(name)
    # Runhouse behaviour: a name with nothing saved gives a new, unsaved folder at the default place.
    fresh = rh.folder(name=name)
    assert fresh.path.endswith("/" + name) and fresh._block_document_id is None


def test_save_without_name_explains(tmp_path):
    with pytest.raises(rh.NotFound, match=r"has no name: call \.save\(name='my-name'\)"):
        rh.folder(path=tmp_path / "anon").save()


def test_namespace_folder_holds_its_resources(s3_env, s3_bucket, unique_name):
    ns = "/" + unique_name("ds")
    ds = rh.folder(name=ns, path=f"/{s3_bucket}/datasets", system="s3").save()

    child = rh.folder(name=f"{ns}/bert_preproc")  # no path, no system: placed under the ds folder
    assert child.system == "s3"
    assert child.path == f"/{s3_bucket}/datasets/bert_preproc"
    child.put({"part-0.txt": b"tokens"})
    child.save()

    other = rh.folder(name=f"{ns}/other", path=f"/{s3_bucket}/elsewhere", system="s3").save()
    assert other.path == f"/{s3_bucket}/elsewhere"  # an explicit path wins

    assert ds.ls(full_paths=False) == ["bert_preproc"]
    assert ds.resources() == [f"{ns}/bert_preproc", f"{ns}/other"]
    assert ds.contains("bert_preproc") and ds.contains(f"{ns}/other")
    assert not ds.contains("missing")
    assert ds.locate("bert_preproc") == ("s3", f"/{s3_bucket}/datasets/bert_preproc")
    assert ds.locate("/elsewhere/bert_preproc") is None  # outside the namespace

    reloaded = rh.folder(name=f"{ns}/bert_preproc")
    assert reloaded.get("part-0.txt") == b"tokens"
    assert names.parse(f"{ns}/bert_preproc").block_name in _block_names()


def test_nested_namespace_listing(tmp_path, unique_name):
    ns = "/" + unique_name("team")
    team = rh.folder(name=ns, path=tmp_path / "team").save()
    rh.folder(name=f"{ns}/a").save()
    rh.folder(name=f"{ns}/sub").save()
    rh.folder(name=f"{ns}/sub/b").save()
    assert rh.folder(name=f"{ns}/sub/b").path == str(tmp_path / "team" / "sub" / "b")
    assert team.resources() == [f"{ns}/a", f"{ns}/sub"]
    assert team.resources(recursive=True) == [f"{ns}/a", f"{ns}/sub", f"{ns}/sub/b"]


def _block_names() -> set[str]:
    with prefect_client() as client:
        return {doc.name for doc in client.read_block_documents() if doc.name}
