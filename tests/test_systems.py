"""Every system as a Folder's system, credentials from the environment and from blocks, GitHub, Clusters."""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import gcsfs
import pytest
import s3fs
from prefect.client.orchestration import get_client

import rh_prefect as rh
from rh_prefect import names
from rh_prefect.systems import get_system
from helpers import folder_contents
from infra import free_port

PAYLOAD = os.urandom(200_000)


def raw_s3(s3_server) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(key=s3_server.access_key, secret=s3_server.secret_key,
                             endpoint_url=s3_server.endpoint_url, skip_instance_cache=True)


def raw_gcs(gcs_server) -> gcsfs.GCSFileSystem:
    return gcsfs.GCSFileSystem(endpoint_url=gcs_server.endpoint_url, token="anon", project="test",
                               skip_instance_cache=True)


def clear_cloud_env(monkeypatch, tmp_path) -> None:
    """No credential or endpoint in the environment: only a block can make a connection work."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS",
                 "RH_PREFECT_S3_BUCKET", "RH_PREFECT_GS_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


# --------------------------------------------------------------------------- system names


@pytest.mark.parametrize("alias, canonical", [("file", "file"), ("local", "file"), ("s3", "s3"), ("gs", "gs"),
                                              ("gcs", "gs"), ("github", "github"), ("ssh", "ssh"), ("sftp", "ssh"),
                                              ("S3", "s3")])
def test_system_names_and_aliases(alias, canonical, rh_cluster):
    assert get_system(alias, cluster=rh_cluster).name == canonical


def test_local_folder(tmp_path):
    f = rh.folder(path=tmp_path / "loc", system="file")
    f.put({"x/y.bin": PAYLOAD})
    assert (tmp_path / "loc" / "x" / "y.bin").read_bytes() == PAYLOAD
    assert f.is_local() and f.local_path == str(tmp_path / "loc")
    assert f.url == str(tmp_path / "loc")


# --------------------------------------------------------------------------- S3


def test_s3_from_environment_chain(s3_env, s3_server, s3_bucket):
    assert "AWS_ENDPOINT_URL_S3" in os.environ and "AWS_ENDPOINT_URL" not in os.environ
    f = rh.folder(path=f"/{s3_bucket}/a/b", system="s3")
    f.put({"blob.bin": PAYLOAD, "t.txt": "text"})
    # The first path component is the bucket; the rest is the key prefix.
    assert raw_s3(s3_server).cat(f"{s3_bucket}/a/b/blob.bin") == PAYLOAD
    assert f.url == f"s3://{s3_bucket}/a/b"
    assert f.get("t.txt", mode="r") == "text"


def test_s3_generic_endpoint_variable(s3_env, s3_server, s3_bucket, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    f = rh.folder(path=f"s3://{s3_bucket}/generic", system="s3")
    f.put({"k": b"v"})
    assert raw_s3(s3_server).cat(f"{s3_bucket}/generic/k") == b"v"
    assert f.path == f"/{s3_bucket}/generic"


def test_s3_credentials_block_without_environment(s3_server, s3_bucket, monkeypatch, tmp_path, unique_name):
    clear_cloud_env(monkeypatch, tmp_path)
    creds = rh.S3Credentials(aws_access_key_id=s3_server.access_key, aws_secret_access_key=s3_server.secret_key,
                             endpoint_url=s3_server.endpoint_url)
    name = unique_name("s3creds")
    f = rh.folder(name=name, path=f"/{s3_bucket}/blk", system="s3", credentials=creds).save()
    f.put({"b.bin": PAYLOAD})
    assert raw_s3(s3_server).cat(f"{s3_bucket}/blk/b.bin") == PAYLOAD
    # Reloaded from the server (secret included) it still connects.
    again = rh.folder(name=name)
    assert isinstance(again.credentials, rh.S3Credentials)
    assert again.get("b.bin") == PAYLOAD
    assert s3_server.secret_key not in repr(again) and s3_server.secret_key not in str(again.credentials)


def test_s3_without_any_credentials_is_a_credentials_error(s3_server, s3_bucket, monkeypatch, tmp_path):
    clear_cloud_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)  # the endpoint is right, no key anywhere
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    f = rh.folder(path=f"/{s3_bucket}/x", system="s3")
    with pytest.raises(rh.CredentialsError) as info:
        f.put({"a": b"1"})
    assert "check the credentials (S3Credentials block or environment)" in str(info.value)
    assert not raw_s3(s3_server).exists(f"{s3_bucket}/x/a")


def test_s3_unreachable_endpoint_is_not_a_missing_bucket(s3_env, monkeypatch):
    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    f = rh.folder(path="/some-bucket/x", system="s3")
    with pytest.raises(rh.SystemUnavailable) as info:
        f.put({"a": b"1"})
    assert f"127.0.0.1:{port}" in str(info.value) and "could not be reached" in str(info.value)


def test_missing_bucket_says_how_to_create_it(s3_env, s3_server):
    f = rh.folder(path="/no-such-bucket-here/x", system="s3")
    with pytest.raises(rh.NotFound, match=r"Bucket 'no-such-bucket-here' does not exist .*folder\.mkdir\(\)"):
        f.put({"a": b"1"})
    f.mkdir()  # creates the bucket
    f.put({"a": b"1"})
    assert raw_s3(s3_server).cat("no-such-bucket-here/x/a") == b"1"
    raw_s3(s3_server).rm("no-such-bucket-here", recursive=True)


def test_s3_default_bucket(s3_env, s3_server, s3_bucket, monkeypatch, tmp_path):
    src = rh.folder(path=tmp_path / "proj")
    src.put({"a.txt": b"a"})
    with pytest.raises(rh.InvalidPath, match="RH_PREFECT_S3_BUCKET"):
        src.to("s3")
    monkeypatch.setenv("RH_PREFECT_S3_BUCKET", s3_bucket)
    dst = src.to("s3")
    assert dst.path == f"/{s3_bucket}/proj"
    assert raw_s3(s3_server).cat(f"{s3_bucket}/proj/a.txt") == b"a"


# --------------------------------------------------------------------------- GCS


def test_gcs_from_emulator_host(gcs_env, gcs_server, gs_bucket):
    f = rh.folder(path=f"/{gs_bucket}/g/h", system="gs")
    f.put({"blob.bin": PAYLOAD})
    assert raw_gcs(gcs_server).cat(f"{gs_bucket}/g/h/blob.bin") == PAYLOAD
    assert f.url == f"gs://{gs_bucket}/g/h"
    assert f.ls(full_paths=False) == ["blob.bin"]


class _TokenHandler(BaseHTTPRequestHandler):
    """An OAuth2 token endpoint: accepts a signed JWT grant and hands out an access token."""

    grants: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.grants.append(dict(urllib.parse.parse_qsl(body.decode())))
        payload = json.dumps({"access_token": "test-access-token", "expires_in": 3600, "token_type": "Bearer"})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args):  # keep the test output clean
        return


@pytest.fixture
def token_server():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _TokenHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _TokenHandler.grants = []
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()
    server.server_close()


def service_account_json(token_uri: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return json.dumps({
        "type": "service_account", "project_id": "test", "private_key_id": "k1", "private_key": pem,
        "client_email": "rh-test@test.iam.gserviceaccount.com", "client_id": "1", "token_uri": token_uri,
    })


def test_gcs_credentials_block_with_service_account(gcs_server, gs_bucket, monkeypatch, tmp_path, token_server,
                                                    unique_name):
    clear_cloud_env(monkeypatch, tmp_path)
    info = service_account_json(token_server)
    creds = rh.GCSCredentials(service_account_info=info, project="test", endpoint_url=gcs_server.endpoint_url)
    name = unique_name("gcscreds")
    f = rh.folder(name=name, path=f"/{gs_bucket}/sa", system="gs", credentials=creds).save()
    f.put({"b.bin": PAYLOAD})
    assert raw_gcs(gcs_server).cat(f"{gs_bucket}/sa/b.bin") == PAYLOAD
    # The private key really signed a grant at the token endpoint.
    assert _TokenHandler.grants and _TokenHandler.grants[0]["grant_type"].endswith("jwt-bearer")
    again = rh.folder(name=name)
    assert again.get("b.bin") == PAYLOAD
    assert "PRIVATE KEY" not in repr(again) and "PRIVATE KEY" not in str(again.credentials)


def test_gcs_credentials_block_endpoint_only(gcs_server, gs_bucket, monkeypatch, tmp_path):
    clear_cloud_env(monkeypatch, tmp_path)
    creds = rh.GCSCredentials(endpoint_url=gcs_server.endpoint_url, project="test")
    f = rh.folder(path=f"/{gs_bucket}/anon", system="gs", credentials=creds)
    f.put({"x": b"y"})
    assert raw_gcs(gcs_server).cat(f"{gs_bucket}/anon/x") == b"y"


def test_wrong_credentials_type_is_refused(tmp_path):
    with pytest.raises(rh.CredentialsError, match="needs a S3Credentials block, got GCSCredentials"):
        rh.folder(path="/b/x", system="s3", credentials=rh.GCSCredentials(project="p"))


# --------------------------------------------------------------------------- GitHub (git daemon)


@pytest.fixture
def gh_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RH_PREFECT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "github"


@pytest.mark.parametrize("ref", ["main", "v1", "sha-v1", "sha-main", "default"])
def test_github_refs(git_server, gh_cache, ref):
    """A branch, an annotated tag, commit hashes, and no ref at all (the default branch, main)."""
    named = {"sha-v1": "v1", "sha-main": "main", "default": "main"}.get(ref, ref)
    real_ref = git_server.commits[named] if ref.startswith("sha-") else ref
    creds = rh.GitHubCredentials(base_url=git_server.base_url)
    path = "org/repo" if ref == "default" else f"org/repo@{real_ref}"
    f = rh.folder(path=path, system="github", credentials=creds)
    assert folder_contents(f) == git_server.expected_files(named)
    assert [p.name for p in gh_cache.iterdir()] == [git_server.commits[named]]  # cached by commit, nothing else


def test_github_subpath_base_url_from_environment(git_server, gh_cache, monkeypatch):
    monkeypatch.setenv("RH_PREFECT_GITHUB_URL", git_server.base_url)
    f = rh.folder(path="org/repo@main/data", system="github")
    assert f.ls(full_paths=False) == ["a.txt", "c.txt", "sub"]
    assert f.ls(full_paths=True) == ["org/repo@main/data/a.txt", "org/repo@main/data/c.txt", "org/repo@main/data/sub"]
    assert f.get("sub/b.bin") == git_server.expected_files("main")["data/sub/b.bin"]
    assert f.get("c.txt", mode="r") == "gamma\n"


def test_github_full_git_url(git_server, gh_cache):
    f = rh.folder(path=f"{git_server.repo_url}@v1/data", system="github")
    assert f.ls(full_paths=False, recursive=True) == ["a.txt", "sub/b.bin"]
    assert f.url == f"{git_server.repo_url}@v1/data"


def test_github_second_read_is_served_from_cache(git_server, gh_cache):
    sha = git_server.commits["v1"]
    creds = rh.GitHubCredentials(base_url=git_server.base_url)
    first = rh.folder(path=f"org/repo@{sha}", system="github", credentials=creds)
    assert first.get("README.md") == b"hello v1\n"
    checkout = gh_cache / sha
    stat_before = checkout.stat()
    # A new system pointing at a host that does not answer: a commit needs no network once cached.
    dead = rh.GitHubCredentials(base_url=f"git://127.0.0.1:{free_port()}")
    second = rh.folder(path=f"org/repo@{sha}", system="github", credentials=dead)
    assert folder_contents(second) == git_server.expected_files("v1")
    assert [p.name for p in gh_cache.iterdir()] == [sha]
    assert checkout.stat().st_ino == stat_before.st_ino and checkout.stat().st_mtime == stat_before.st_mtime


def test_github_missing_ref_and_unreachable_host(git_server, gh_cache):
    creds = rh.GitHubCredentials(base_url=git_server.base_url)
    with pytest.raises(rh.NotFound, match="Ref 'nope' does not exist"):
        rh.folder(path="org/repo@nope", system="github", credentials=creds).ls()
    dead = rh.GitHubCredentials(base_url=f"git://127.0.0.1:{free_port()}")
    with pytest.raises(rh.SystemUnavailable, match="git ls-remote failed"):
        rh.folder(path="org/repo@main", system="github", credentials=dead).ls()


def test_github_is_read_only(git_server, gh_cache, tmp_path):
    f = rh.folder(path="org/repo@main", system="github", credentials=rh.GitHubCredentials(base_url=git_server.base_url))
    attempts = {
        "put": lambda: f.put({"new.txt": b"x"}),
        "rm": lambda: f.rm(),
        "mkdir": lambda: f.mkdir(),
        "open-wb": lambda: f.open("new.txt", "wb").__enter__(),
        "to-github": lambda: rh.folder(path=tmp_path).to("github", path="org/repo@main"),
    }
    for what, call in attempts.items():
        with pytest.raises(rh.ReadOnlySystem) as info:
            call()
        assert "is read-only" in str(info.value), what
        assert "folder.to(system='file')" in str(info.value), what
    assert not f.is_writable()
    assert folder_contents(f) == git_server.expected_files("main")  # nothing changed


def test_github_folder_copies_to_local(git_server, gh_cache, tmp_path):
    f = rh.folder(path="org/repo@v1", system="github", credentials=rh.GitHubCredentials(base_url=git_server.base_url))
    local = f.to("file", path=tmp_path / "out")
    got = {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes()
           for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert got == git_server.expected_files("v1")
    assert local.system == "file"


# --------------------------------------------------------------------------- clusters (ssh / sftp)


def test_cluster_object_and_sftp_string_as_system(ssh_server, rh_cluster, unique_name):
    base = f"rh-test/{unique_name('sys')}"
    f = rh.folder(path=base, system=rh_cluster)
    f.put({"d/blob.bin": PAYLOAD})
    assert (ssh_server.home / base / "d" / "blob.bin").read_bytes() == PAYLOAD
    assert f.path == f"~/{base}"
    assert f.url == f"ssh://{ssh_server.user}@{ssh_server.host}:{ssh_server.port}/~/{base}"
    g = rh.folder(path=f"~/{base}", system="sftp", cluster=rh_cluster)
    assert g.get("d/blob.bin") == PAYLOAD
    with pytest.raises(rh.CredentialsError, match="needs a cluster"):
        rh.folder(path="/tmp/x", system="ssh")


def test_cluster_key_text_and_saved_cluster(ssh_server, unique_name):
    name = unique_name("cpu")
    c = rh.cluster(name=name, host=ssh_server.host, port=ssh_server.port, user=ssh_server.user,
                   ssh_key=ssh_server.client_key_text, known_hosts=str(ssh_server.known_hosts_path),
                   work_queue="rh-cpu-queue").save()
    assert c.up_if_not() is c
    loaded = rh.cluster(name)
    assert (loaded.host, loaded.port, loaded.user, loaded.work_queue) == (
        ssh_server.host, ssh_server.port, ssh_server.user, "rh-cpu-queue")
    assert loaded.ssh_key.get_secret_value() == ssh_server.client_key_text  # secret restored for use
    base = f"rh-test/{unique_name('key')}"
    saved = rh.folder(name=unique_name("onc"), path=base, system=loaded).save()
    saved.put({"a.txt": b"over ssh"})
    again = rh.folder(name=saved.name)
    assert isinstance(again.cluster, rh.Cluster)
    assert again.get("a.txt") == b"over ssh"


def test_cluster_ssh_key_is_a_secret(ssh_server, unique_name):
    key_text = ssh_server.client_key_text
    secret_line = key_text.splitlines()[1]
    name = unique_name("sec")
    c = rh.cluster(name=name, host=ssh_server.host, port=ssh_server.port, user=ssh_server.user, ssh_key=key_text,
                   known_hosts=str(ssh_server.known_hosts_path)).save()
    for text in (repr(c), str(c), json.dumps(c.model_dump(mode="json")), repr(rh.cluster(name))):
        assert secret_line not in text and "PRIVATE KEY" not in text
    with get_client(sync_client=True) as client:
        doc = client.read_block_document_by_name(names.encode(f"@/{name}"), "rh-cluster", include_secrets=False)
    assert secret_line not in json.dumps(doc.data, default=str)
    assert set(doc.data["ssh_key"]) == {"*"}  # masked by the server
    assert doc.data["host"] == ssh_server.host


def test_cluster_pinned_host_key(ssh_server, unique_name):
    c = rh.cluster(host=ssh_server.host, port=ssh_server.port, user=ssh_server.user,
                   ssh_key=str(ssh_server.client_key_path), host_key=ssh_server.host_public_key)
    base = f"rh-test/{unique_name('pin')}"
    rh.folder(path=base, system=c).put({"p.txt": b"pinned"})
    assert (ssh_server.home / base / "p.txt").read_bytes() == b"pinned"


def _other_host_key(tmp_path) -> str:
    import subprocess

    subprocess.run(["ssh-keygen", "-t", "ed25519", "-N", "", "-q", "-f", str(tmp_path / "other")], check=True)
    return " ".join((tmp_path / "other.pub").read_text().split()[:2])


def test_cluster_wrong_host_key_is_refused(ssh_server, tmp_path):
    wrong = _other_host_key(tmp_path)
    known = tmp_path / "known_hosts"
    known.write_text(f"[{ssh_server.host}]:{ssh_server.port} {wrong}\n")
    for kwargs in ({"known_hosts": str(known)}, {"host_key": wrong}):
        c = rh.cluster(host=ssh_server.host, port=ssh_server.port, user=ssh_server.user,
                       ssh_key=str(ssh_server.client_key_path), **kwargs)
        with pytest.raises(rh.HostKeyMismatch) as info:
            c.up_if_not()
        assert f"{ssh_server.host}:{ssh_server.port}" in str(info.value)
        assert "not the trusted one" in str(info.value)


def test_cluster_missing_known_hosts_file(ssh_server, tmp_path):
    c = rh.cluster(host=ssh_server.host, port=ssh_server.port, user=ssh_server.user,
                   ssh_key=str(ssh_server.client_key_path), known_hosts=str(tmp_path / "absent"))
    with pytest.raises(rh.HostKeyMismatch, match=r"ssh-keyscan -p \d+ 127\.0\.0\.1"):
        c.up_if_not()


def test_cluster_wrong_client_key_is_refused(ssh_server, tmp_path):
    _other_host_key(tmp_path)  # any key the server does not know
    c = rh.cluster(host=ssh_server.host, port=ssh_server.port, user=ssh_server.user,
                   ssh_key=str(tmp_path / "other"), known_hosts=str(ssh_server.known_hosts_path))
    with pytest.raises(rh.CredentialsError, match="refused the login; check user and ssh_key"):
        c.up_if_not()


def test_cluster_unreadable_key(ssh_server, tmp_path):
    c = rh.cluster(host=ssh_server.host, port=ssh_server.port, ssh_key=str(tmp_path / "no-such-key"),
                   known_hosts=str(ssh_server.known_hosts_path))
    with pytest.raises(rh.CredentialsError, match="could not be read"):
        c.up_if_not()


def test_up_if_not_on_closed_port_names_host_and_port():
    port = free_port()
    c = rh.cluster(host="127.0.0.1", port=port, user="nobody")
    with pytest.raises(rh.SystemUnavailable) as info:
        c.up_if_not()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "does not answer on its SSH port" in str(info.value)
    assert not c.is_up()


@pytest.mark.servers  # uses the Prefect API without a server fixture
def test_cluster_needs_name_or_host():
    with pytest.raises(rh.RhError, match="needs a name of a saved cluster or a host"):
        rh.cluster()
    with pytest.raises(rh.NotFound, match=r"No cluster named 'no-such-cluster-xyz' is saved.*\.save\(\)"):
        rh.cluster("no-such-cluster-xyz")


def test_saved_folder_on_an_unsaved_cluster_reloads(ssh_server, rh_cluster, unique_name):
    name = unique_name("anon-cluster")
    base = f"rh-test/{unique_name('nest')}"
    rh.folder(name=name, path=base, system=rh_cluster).save().put({"n.txt": b"nested cluster"})
    again = rh.folder(name=name)
    assert (again.cluster.host, again.cluster.port) == (ssh_server.host, ssh_server.port)
    assert again.get("n.txt") == b"nested cluster"
