"""Issue 20: the seed's calls - ``from_cluster``, ``rh.cluster("^rh-cpu")`` and ``.to("here")`` - on Folder, Table
and Blob, against the suite's sshd, git daemon and Prefect server; and their bad input (clear RhError, nothing
changed)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

import rh_prefect as rh
from infra import free_port
from rh_prefect.runtime.worker import COLOCATED_ENV, colocated_identity

pytestmark = pytest.mark.servers  # names are saved and loaded on the Prefect server

KINDS = ["folder", "table", "blob"]
FILES = {"a.txt": b"alpha", "sub/b.bin": bytes(range(256))}
ROWS = [{"id": i, "text": f"row {i}"} for i in range(7)]
BLOB = b"checkpoint bytes \x00\x01"


def make(kind: str, system, path: str, name: str | None = None):
    """A stored resource of ``kind`` at ``path`` on ``system`` holding the module's test data."""
    if kind == "folder":
        return rh.folder(name=name, path=path, system=system).put(FILES)
    if kind == "table":
        return rh.table(data=pa.Table.from_pylist(ROWS), name=name, path=path, system=system)
    return rh.blob(data=BLOB, name=name, path=path + ".bin", system=system, serializer="bytes")


def content(res):
    """What a user reads back from a resource: files and bytes, rows in order, the object."""
    if isinstance(res, rh.Folder):
        return {key: res.get(key) for key in res.ls(full_paths=False, recursive=True)}
    if isinstance(res, rh.Table):
        return res.fetch().to_pylist()
    return res.fetch()


EXPECTED = {"folder": FILES, "table": ROWS, "blob": BLOB}


@pytest.fixture
def remote_base(ssh_server):
    """A fresh relative directory under the sshd login home; removed afterwards."""
    base = f"rh-test/fc-{uuid.uuid4().hex[:10]}"
    yield base
    shutil.rmtree(ssh_server.home / base, ignore_errors=True)


@pytest.fixture
def on_worker_of(monkeypatch):
    """Make this process look like it runs on ``cluster``'s Prefect worker (the variables start_worker() sets)."""
    from rh_prefect.runtime.worker import COLOCATED_NAME_ENV

    def on(cluster):
        monkeypatch.setenv(COLOCATED_ENV, colocated_identity(cluster.system()))
        monkeypatch.setenv(COLOCATED_NAME_ENV, cluster.name)

    return on


def unreachable_twin(cluster, tmp_path):
    """A Cluster with the same host, port and user but a key file that does not exist: any SSH use fails with
    CredentialsError, so whatever still works through it was read from the local disk."""
    return rh.cluster(host=cluster.host, port=cluster.port, user=cluster.user,
                      ssh_key=str(tmp_path / "no-such-key"), known_hosts=cluster.known_hosts)


# --------------------------------------------------------------------------- from_cluster


@pytest.mark.parametrize("kind", KINDS)
def test_from_cluster_is_a_view_of_the_same_data_through_the_cluster(kind, rh_cpu, remote_base, unique_name,
                                                                      ssh_server):
    name = unique_name(kind)
    on_cluster = make(kind, rh_cpu, f"{remote_base}/{kind}", name=name).save()
    stored = ssh_server.home / remote_base
    files_before = sorted(p.relative_to(stored) for p in stored.rglob("*"))
    view = on_cluster.from_cluster(rh_cpu)
    assert (view.system, view.path, view.cluster.host) == ("ssh", on_cluster.path, ssh_server.host)
    assert view.name == name and view._block_document_id == on_cluster._block_document_id  # same entry
    assert not view.sys.is_local  # read over SSH from here
    assert content(view) == EXPECTED[kind]
    assert sorted(p.relative_to(stored) for p in stored.rglob("*")) == files_before  # no copy was made


@pytest.mark.parametrize("kind", KINDS)
def test_from_cluster_on_the_cluster_itself_reads_its_disk(kind, rh_cpu, remote_base, on_worker_of, tmp_path,
                                                           ssh_server):
    stored = make(kind, rh_cpu, f"{remote_base}/{kind}")
    twin = unreachable_twin(rh_cpu, tmp_path)
    with pytest.raises(rh.CredentialsError):  # the twin really cannot log in ...
        rh.folder(path=remote_base, system=twin).ls()
    on_worker_of(twin)
    view = stored.from_cluster(twin)
    # ... so the view read the cluster's files from this host's disk, while it still records the cluster
    assert content(view) == EXPECTED[kind]
    assert view.sys.is_local and view.local_path == str(ssh_server.home / remote_base / Path(stored.path).name)
    assert (view.system, view.path, view.cluster.host) == ("ssh", stored.path, ssh_server.host)
    assert view.url.startswith(f"ssh://{ssh_server.user}@{ssh_server.host}:{ssh_server.port}/")


@pytest.mark.parametrize("kind", KINDS)
def test_from_cluster_with_a_path_copies_down_to_a_local_resource(kind, rh_cpu, remote_base, tmp_path,
                                                                 unique_name):
    name = unique_name(kind)
    on_cluster = make(kind, rh_cpu, f"{remote_base}/{kind}", name=name).save()
    local = on_cluster.from_cluster(rh_cpu, path=str(tmp_path / "down"))
    assert local.system == "file" and local.is_local() and local.name == name
    assert local.path == str(tmp_path / "down")
    assert content(local) == EXPECTED[kind]
    if kind == "blob":
        assert (tmp_path / "down").read_bytes() == BLOB
    elif kind == "folder":
        assert (tmp_path / "down" / "sub" / "b.bin").read_bytes() == FILES["sub/b.bin"]
    assert rh.load(name).system == "ssh"  # the saved entry still names the cluster's copy


def test_from_cluster_of_a_local_folder_is_its_path_on_the_cluster(rh_cpu, remote_base, ssh_server):
    """Runhouse's meaning: a local path given to from_cluster is the same path on the cluster."""
    on_host = ssh_server.home / remote_base / "made-there"
    on_host.mkdir(parents=True)
    (on_host / "x.txt").write_bytes(b"made on the cluster")
    view = rh.folder(path=str(on_host)).from_cluster(rh_cpu)
    assert (view.system, view.path) == ("ssh", str(on_host))
    assert view.get("x.txt") == b"made on the cluster"


# --------------------------------------------------------------------------- rh.cluster("^NAME")


def test_caret_name_loads_the_saved_cluster(rh_cpu, ssh_server):
    c = rh.cluster("^rh-cpu")
    assert isinstance(c, rh.Cluster) and c.name == "rh-cpu"
    assert (c.host, c.port, c.user, c.default_root) == (ssh_server.host, ssh_server.port, ssh_server.user,
                                                        rh_cpu.default_root)
    assert c.up_if_not() is c  # the host answers and the login works
    described = rh.cluster(name="^rh-other", host=ssh_server.host, port=ssh_server.port)
    assert described.name == "rh-other"  # the mark is dropped when naming one, too


def test_caret_name_of_a_cluster_not_saved_says_how_to_save_one():
    assert not rh.exists("rh-nope")
    with pytest.raises(rh.NotFound) as info:
        rh.cluster("^rh-nope")
    message = str(info.value)
    assert "No cluster named 'rh-nope' is saved" in message
    assert "rh.cluster(name='rh-nope', host=" in message and ".save()" in message
    assert not rh.exists("rh-nope")


def test_caret_up_if_not_still_checks_the_host_answers(ssh_server, unique_name):
    name = unique_name("down")
    rh.cluster(name=name, host=ssh_server.host, port=free_port(), user=ssh_server.user,
               known_hosts=str(ssh_server.known_hosts_path)).save()
    try:
        with pytest.raises(rh.SystemUnavailable, match="does not answer on its SSH port"):
            rh.cluster(f"^{name}").up_if_not()
    finally:
        rh.delete(name)


# --------------------------------------------------------------------------- .to("here")


@pytest.mark.parametrize("kind", KINDS)
def test_to_here_copies_under_the_current_directory(kind, rh_cpu, remote_base, tmp_path, monkeypatch, unique_name):
    name = unique_name(kind)
    on_cluster = make(kind, rh_cpu, f"{remote_base}/{kind}", name=name)
    monkeypatch.chdir(tmp_path)
    local = on_cluster.to("here")
    leaf = Path(on_cluster.path).name  # Runhouse's default: cwd / the last component of the resource's path
    assert (local.system, local.path, local.name) == ("file", str(tmp_path / leaf), name)
    assert content(local) == EXPECTED[kind]
    explicit = on_cluster.to("here", path="elsewhere")
    assert explicit.path == str(tmp_path / "elsewhere") and content(explicit) == EXPECTED[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_to_here_on_a_cluster_worker_lands_on_the_clusters_disk(kind, rh_cpu, remote_base, tmp_path, monkeypatch,
                                                               on_worker_of, ssh_server):
    source = make(kind, "file", str(tmp_path / "src" / kind))
    workdir = ssh_server.home / remote_base / "workdir"  # the worker's current directory, on the cluster
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)
    on_worker_of(rh_cpu)
    there = source.to("here")
    leaf = Path(source.path).name
    assert (there.system, there.cluster.name, there.path) == ("ssh", "rh-cpu", str(workdir / leaf))
    assert there.sys.is_local  # written as local files on the cluster
    monkeypatch.delenv(COLOCATED_ENV)
    # read back over SSH, as any other process would from the recorded place
    if kind == "folder":
        again = rh.folder(path=there.path, system=rh_cpu)
    elif kind == "table":
        again = rh.table(path=there.path, system=rh_cpu)
    else:
        again = rh.blob(path=there.path, system=rh_cpu, serializer="bytes")
    assert not again.sys.is_local and content(again) == EXPECTED[kind]


def test_to_here_on_a_worker_of_an_unsaved_cluster_is_the_local_disk(rh_cluster, tmp_path, monkeypatch,
                                                                    on_worker_of):
    """Without a saved Cluster block to record, "here" on a worker is simply this host's disk."""
    source = make("folder", "file", str(tmp_path / "src" / "f"))
    monkeypatch.chdir(tmp_path)
    on_worker_of(rh.cluster(host="10.255.0.1", port=2222))  # no saved cluster has this identity
    there = source.to("here", path="out")
    assert (there.system, there.path, there.cluster) == ("file", str(tmp_path / "out"), None)
    assert content(there) == FILES


# --------------------------------------------------------------------------- bad input


def test_from_cluster_of_an_in_memory_blob_is_refused(rh_cpu):
    b = rh.blob(data={"a": 1})
    with pytest.raises(rh.InvalidPath, match="has no path, so it has nothing on a cluster"):
        b.from_cluster(rh_cpu)
    assert b.fetch() == {"a": 1} and b.path is None


@pytest.mark.parametrize("bad", ["rh-cpu", None, 42], ids=["a-name", "none", "an-int"])
def test_from_cluster_needs_a_cluster(bad, tmp_path):
    f = make("folder", "file", str(tmp_path / "f"))
    before = (f.system, f.path, sorted(p.name for p in tmp_path.iterdir()))
    with pytest.raises(rh.InvalidArgument) as info:
        f.from_cluster(bad)
    assert "from_cluster() takes a Cluster, such as rh.cluster('rh-cpu')" in str(info.value)
    assert "nothing was changed" in str(info.value)
    assert (f.system, f.path, sorted(p.name for p in tmp_path.iterdir())) == before
    assert content(f) == FILES


def test_from_cluster_refuses_data_that_is_not_on_that_cluster(rh_cpu, s3_env, s3_bucket, tmp_path):
    on_s3 = make("folder", "s3", f"/{s3_bucket}/f")
    with pytest.raises(rh.InvalidArgument) as info:
        on_s3.from_cluster(rh_cpu)
    assert "not on cluster 'rh-cpu'" in str(info.value) and ".to(system=cluster)" in str(info.value)
    assert (on_s3.system, on_s3.path) == ("s3", f"/{s3_bucket}/f") and content(on_s3) == FILES


def test_caret_alone_is_a_clear_error():
    names_before = rh.list_names()
    with pytest.raises(rh.InvalidName) as info:
        rh.cluster("^")
    assert isinstance(info.value, rh.RhError)
    assert "rh.cluster('^') names no cluster" in str(info.value) and "rh.cluster('^rh-cpu')" in str(info.value)
    assert rh.list_names() == names_before


def test_to_here_of_a_github_folder_onto_other_content_without_overwrite(git_server, tmp_path, monkeypatch):
    monkeypatch.setenv("RH_PREFECT_CACHE", str(tmp_path / "cache"))
    repo = rh.folder(path="org/repo@v1", system="github",
                     credentials=rh.GitHubCredentials(base_url=git_server.base_url))
    work = tmp_path / "work"
    dest = work / "repo@v1"  # where .to("here") puts it: cwd / the path's last component
    dest.mkdir(parents=True)
    (dest / "README.md").write_bytes(b"my own notes\n")  # other content under a name the repo also has
    (dest / "mine.txt").write_bytes(b"keep me")
    monkeypatch.chdir(work)
    with pytest.raises(rh.AlreadyExists) as info:
        repo.to("here", overwrite=False)
    assert "already exist at the destination with different content" in str(info.value)
    assert "README.md" in str(info.value) and "overwrite=True" in str(info.value)
    got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == {"README.md": b"my own notes\n", "mine.txt": b"keep me"}  # nothing changed
    assert sorted(p.name for p in work.iterdir()) == ["repo@v1"]
