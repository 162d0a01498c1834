"""Bad input is refused: the documented error type, a message that says what to do, and nothing changed.

One table of bad calls across Folder, Table, Blob, Cluster and the ``rh.*`` constructors on every system
(local disk, the test sshd, moto S3, fake-gcs-server, the git daemon standing in for GitHub). Each case runs
against a world seeded with saved resources and stored data, and the test takes a snapshot of everything a
case could touch before and after it:

* storage: every file under the local test directory (also the working directory and the GitHub checkout
  cache), the test directory on the sshd, every object in every bucket of both S3 servers and of the GCS
  server (sha256 of the bytes for this module's buckets, size/ETag/mtime for all), and the git repository;
* the registry: every block document on the Prefect server, anonymous ones included, with its data and
  ``updated`` time.

Wrong credentials need a server that checks them: moto accepts any key unless ``INITIAL_NO_AUTH_ACTION_COUNT``
is set, so a second moto server runs with authentication on (an IAM user with an access key is created with
the first requests) and the wrong-secret and unknown-key cases use it; the sshd refuses an unknown key or user.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import boto3
import pandas as pd
import pyarrow as pa
import pytest
from prefect.client.orchestration import get_client
from prefect.utilities.asyncutils import run_coro_as_sync

import rh_prefect as rh
from rh_prefect.errors import (
    AlreadyExists, CredentialsError, InvalidArgument, InvalidName, InvalidPath, NotFound, ReadOnlySystem,
    RhError, SchemaMismatch, SystemUnavailable, UnknownSystem,
)
from rh_prefect.serializers import SerializationError
from infra import MotoS3Server, _venv_executable, free_port, http_status

# --------------------------------------------------------------------------------------------- servers


class AuthMotoS3Server(MotoS3Server):
    """moto with request authentication on: after the first three requests (which create an IAM user, its
    policy and its access key) every request must be signed with that key, or moto refuses it with a 403."""

    name = "moto-auth"
    free_actions = 3

    def _launch(self) -> None:
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(self.free_actions))
        self._spawn([_venv_executable("moto_server"), "-H", self.host, "-p", str(self.port)], env=env)

    def _is_ready(self) -> bool:
        # moto's own API is not an AWS action: polling it does not use up the unauthenticated requests.
        return http_status(f"{self.endpoint_url}/moto-api/data.json") == 200

    def issue_key(self) -> tuple[str, str]:
        """Create a user allowed everything and return its (access key id, secret); auth is enforced after."""
        iam = boto3.client("iam", endpoint_url=self.endpoint_url, aws_access_key_id="bootstrap",
                           aws_secret_access_key="bootstrap", region_name="us-east-1")
        iam.create_user(UserName="rh-test")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="rh-test", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="rh-test")["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]


# --------------------------------------------------------------------------------------------- the world


@dataclass
class World:
    root: Path                 # local test directory (cwd, GitHub cache and local data live under it)
    ssh_dir: Path              # the test directory on the sshd, as seen on this machine
    ssh_rel: str               # the same, relative to the login user's home (a cluster path)
    cluster: Any               # rh.Cluster for the test sshd (saved)
    s3: Any                    # boto3 client for the suite's moto server
    s3_bucket: str
    gs_endpoint: str
    gs_bucket: str
    auth_s3: Any               # boto3 client (good key) for the authenticating moto server
    auth_endpoint: str
    auth_bucket: str
    auth_key: tuple[str, str]
    git_base: Path
    names: dict[str, str]
    local_folder: Any
    ssh_folder: Any
    s3_folder: Any
    gs_folder: Any
    gh_folder: Any
    table: Any                 # local PandasTable, saved
    s3_table: Any              # S3 PandasTable, saved
    blob: Any                  # local Blob, saved
    df: pd.DataFrame


def frame(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"id": pd.Series(range(start, start + n), dtype="int64"),
                         "text": [f"row {i}" for i in range(start, start + n)]})


@pytest.fixture(scope="module")
def world(tmp_path_factory, s3_server, gcs_server, ssh_server, git_server):
    run = uuid.uuid4().hex[:10]
    root = tmp_path_factory.mktemp("bad-input")
    (root / "cwd").mkdir()
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, aws_access_key_id=s3_server.access_key,
                      aws_secret_access_key=s3_server.secret_key)
    s3_bucket, gs_bucket, auth_bucket = f"rh-bad-{run}", f"rh-bad-{run}", f"rh-bad-auth-{run}"
    ssh_rel = f"rh-test/bad-input-{run}"
    ssh_dir = ssh_server.home / ssh_rel
    s3.create_bucket(Bucket=s3_bucket)
    _gcs_request(gcs_server.endpoint_url, "POST", "/storage/v1/b?project=test", {"name": gs_bucket})
    try:
        yield from _seeded_world(root, run, s3, s3_bucket, gs_bucket, auth_bucket, ssh_rel, ssh_dir, gcs_server,
                                 s3_server, ssh_server, git_server)
    finally:
        _empty_s3_bucket(s3, s3_bucket)
        s3.delete_bucket(Bucket=s3_bucket)
        for obj in _gcs_objects(gcs_server.endpoint_url, gs_bucket):
            _gcs_request(gcs_server.endpoint_url, "DELETE", f"/storage/v1/b/{gs_bucket}/o/{_quote(obj['name'])}")
        _gcs_request(gcs_server.endpoint_url, "DELETE", f"/storage/v1/b/{gs_bucket}")
        shutil.rmtree(ssh_dir, ignore_errors=True)


def _seeded_world(root, run, s3, s3_bucket, gs_bucket, auth_bucket, ssh_rel, ssh_dir, gcs_server, s3_server,
                  ssh_server, git_server):
    names: dict[str, str] = {}
    with AuthMotoS3Server() as auth_server, pytest.MonkeyPatch.context() as mp:
        try:
            key_id, secret = auth_server.issue_key()
            auth_s3 = boto3.client("s3", endpoint_url=auth_server.endpoint_url, aws_access_key_id=key_id,
                                   aws_secret_access_key=secret)
            auth_s3.create_bucket(Bucket=auth_bucket)
            auth_s3.put_object(Bucket=auth_bucket, Key="data/kept.txt", Body=b"kept")
            good = rh.S3Credentials(aws_access_key_id=key_id, aws_secret_access_key=secret,
                                    endpoint_url=auth_server.endpoint_url)

            for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
                        "GOOGLE_APPLICATION_CREDENTIALS", "RH_PREFECT_S3_BUCKET", "RH_PREFECT_GS_BUCKET",
                        "RH_PREFECT_NAMESPACE"):
                mp.delenv(var, raising=False)
            mp.setenv("AWS_CONFIG_FILE", str(root / "no-aws-config"))
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(root / "no-aws-credentials"))
            for name, value in {**s3_server.env(), **gcs_server.env()}.items():
                mp.setenv(name, value)
            mp.setenv("RH_PREFECT_CACHE", str(root / "cache"))
            mp.setenv("RH_PREFECT_GITHUB_URL", git_server.base_url)
            mp.chdir(root / "cwd")  # default places of unnamed-path resources land here: inside the snapshot

            cluster_name = f"bad-cluster-{run}"
            cluster = rh.cluster(name=cluster_name, host=ssh_server.host, port=ssh_server.port, user=ssh_server.user,
                                 ssh_key=str(ssh_server.client_key_path),
                                 known_hosts=str(ssh_server.known_hosts_path)).save()
            names["cluster"] = cluster_name
            names.update({k: f"bad-{k}-{run}" for k in ("folder", "ssh-folder", "s3-folder", "gs-folder", "table",
                                                        "s3-table", "blob")})
            files = {"a.txt": b"alpha", "sub/b.txt": b"beta"}
            local_folder = rh.folder(name=names["folder"], path=root / "folder").save()
            local_folder.put(files)
            ssh_folder = rh.folder(name=names["ssh-folder"], path=f"{ssh_rel}/folder", system=cluster).save()
            ssh_folder.put(files)
            s3_folder = rh.folder(name=names["s3-folder"], path=f"/{s3_bucket}/folder", system="s3").save()
            s3_folder.put(files)
            gs_folder = rh.folder(name=names["gs-folder"], path=f"/{gs_bucket}/folder", system="gs").save()
            gs_folder.put(files)
            gh_folder = rh.folder(path="org/repo@main/data", system="github")
            assert gh_folder.ls(full_paths=False) == ["a.txt", "c.txt", "sub"]  # the checkout is cached now
            df = frame(20)
            table = rh.table(data=df, name=names["table"], path=root / "table").save()
            s3_table = rh.table(data=df, name=names["s3-table"], path=f"/{s3_bucket}/table", system="s3").save()
            blob = rh.blob(data={"step": 1}, name=names["blob"], path=root / "blob.pkl").save()
            rh.table(data=df, system="s3", path=f"/{auth_bucket}/table", credentials=good)

            yield World(
                root=root, ssh_dir=ssh_dir, ssh_rel=ssh_rel, cluster=cluster, s3=s3, s3_bucket=s3_bucket,
                gs_endpoint=gcs_server.endpoint_url, gs_bucket=gs_bucket, auth_s3=auth_s3,
                auth_endpoint=auth_server.endpoint_url, auth_bucket=auth_bucket, auth_key=(key_id, secret),
                git_base=git_server.base, names=names, local_folder=local_folder, ssh_folder=ssh_folder,
                s3_folder=s3_folder, gs_folder=gs_folder, gh_folder=gh_folder, table=table, s3_table=s3_table,
                blob=blob, df=df,
            )
        finally:  # saved names go even when seeding failed half-way
            for name in names.values():
                if rh.exists(name):
                    rh.delete(name)


# --------------------------------------------------------------------------------------------- snapshots


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _quote(name: str) -> str:
    return urllib.request.quote(name, safe="")


def _gcs_request(endpoint: str, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(endpoint + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    if path.endswith("alt=media"):
        return raw
    return json.loads(raw) if raw else None


def _gcs_objects(endpoint: str, bucket: str) -> list[dict]:
    out, token = [], None
    while True:
        query = f"/storage/v1/b/{bucket}/o?maxResults=1000" + (f"&pageToken={token}" if token else "")
        page = _gcs_request(endpoint, "GET", query)
        out += page.get("items", [])
        token = page.get("nextPageToken")
        if not token:
            return out


def _empty_s3_bucket(client: Any, bucket: str) -> None:
    for obj in _s3_objects(client, bucket):
        client.delete_object(Bucket=bucket, Key=obj["Key"])


def _s3_objects(client: Any, bucket: str) -> list[dict]:
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out += page.get("Contents", [])
    return out


def _tree(root: Path) -> dict[str, Any]:
    """Every entry under ``root``: directories, and files with size, sha256 and mtime (a rewrite changes it)."""
    out: dict[str, Any] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = "dir"
        for f in filenames:
            p = Path(dirpath, f)
            if p.is_symlink():
                out[str(p.relative_to(root))] = ("link", os.readlink(p))
                continue
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, _sha(p.read_bytes()), st.st_mtime_ns)
    return out


def _s3_state(client: Any, hashed: set[str]) -> dict[str, Any]:
    state = {}
    for b in client.list_buckets()["Buckets"]:
        objs = {}
        for o in _s3_objects(client, b["Name"]):
            entry = (o["Size"], o["ETag"], str(o["LastModified"]))
            if b["Name"] in hashed:
                entry += (_sha(client.get_object(Bucket=b["Name"], Key=o["Key"])["Body"].read()),)
            objs[o["Key"]] = entry
        state[b["Name"]] = objs
    return state


def _gcs_state(endpoint: str, hashed: set[str]) -> dict[str, Any]:
    state = {}
    for b in _gcs_request(endpoint, "GET", "/storage/v1/b?project=test").get("items", []):
        objs = {}
        for o in _gcs_objects(endpoint, b["name"]):
            entry = (o["size"], o.get("md5Hash"), o.get("generation"), o.get("updated"))
            if b["name"] in hashed:
                media = _gcs_request(endpoint, "GET", f"/storage/v1/b/{b['name']}/o/{_quote(o['name'])}?alt=media")
                entry += (_sha(media),)
            objs[o["name"]] = entry
        state[b["name"]] = objs
    return state


def _registry_state() -> list[dict[str, Any]]:
    """Every block document on the Prefect server (anonymous ones too), with its data and update time."""
    docs: list[dict[str, Any]] = []
    with get_client(sync_client=True) as client:
        while True:
            body = {"block_documents": {"is_anonymous": {"eq_": None}}, "include_secrets": False,
                    "offset": len(docs), "limit": 200}
            page = client.request("POST", "/block_documents/filter", json=body).json()
            docs += page
            if len(page) < 200:
                break
    keep = ("id", "name", "data", "updated", "is_anonymous", "block_schema_id", "block_document_references")
    return sorted(({k: d.get(k) for k in keep} for d in docs), key=lambda d: d["id"])


def snapshot(w: World) -> dict[str, Any]:
    return {
        "local": _tree(w.root),
        "ssh": _tree(w.ssh_dir),
        "s3": _s3_state(w.s3, {w.s3_bucket}),
        "s3-auth": _s3_state(w.auth_s3, {w.auth_bucket}),
        "gs": _gcs_state(w.gs_endpoint, {w.gs_bucket}),
        "git": _tree(w.git_base),
        "registry": _registry_state(),
    }


# --------------------------------------------------------------------------------------------- cases


def _dead_cluster(w: World) -> Any:
    """A cluster at a port where nothing listens (connection refused at once)."""
    return rh.cluster(host="127.0.0.1", port=free_port(), user=w.cluster.user,
                      ssh_key=w.cluster.ssh_key.get_secret_value(), known_hosts=w.cluster.known_hosts)


def _stranger_key() -> str:
    import asyncssh

    return asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()


def _auth_creds(w: World, key_id: str, secret: str) -> Any:
    return rh.S3Credentials(aws_access_key_id=key_id, aws_secret_access_key=secret, endpoint_url=w.auth_endpoint)


def _auth_folder(w: World, key_id: str, secret: str) -> Any:
    return rh.folder(path=f"/{w.auth_bucket}/data", system="s3", credentials=_auth_creds(w, key_id, secret))


def _write_open(folder: Any, key: str) -> None:
    with folder.open(key, "wb") as fh:
        fh.write(b"should never land")


@dataclass(frozen=True)
class Case:
    action: Callable[[World], Any]
    error: type[RhError]
    says: str   # regex the message must match: what to do next


NO_SUCH = "rh-no-such-bucket-7c1e"

CASES = {
    # ---- invalid names: refused before any data is written or any name registered
    "table-name-dotdot": Case(lambda w: rh.table(data=w.df, name="/ds/../etc", path=w.root / "new-table"),
                              InvalidName, r"use path segments of letters.*e\.g\. 'my-folder'"),
    "blob-name-space": Case(lambda w: rh.blob(data={"a": 1}, name="my blob", path=w.root / "new.pkl"),
                            InvalidName, r"e\.g\. 'my-folder'"),
    "folder-save-newline-name": Case(lambda w: rh.folder(path=w.root / "folder").save("bad\nname"),
                                     InvalidName, r"e\.g\. 'my-folder'"),
    "cluster-name-nul": Case(lambda w: rh.cluster(name="rh\x00cpu", host="127.0.0.1", port=22).save(),
                             InvalidName, r"e\.g\. 'my-folder'"),
    "save-empty-name": Case(lambda w: rh.folder(path=w.root / "folder").save(""),
                            InvalidName, r"pass e\.g\. 'my-folder'"),
    "blob-name-too-long": Case(lambda w: rh.blob(data=b"x", name="n" * 300, path=w.root / "long.bin"),
                               InvalidName, r"keep it under about 100 characters"),
    "table-name-not-a-string": Case(lambda w: rh.table(data=w.df, name=42, path=w.root / "new-table"),
                                    InvalidName, r"must be a string.*e\.g\. 'my-folder'"),
    "delete-name-dotdot": Case(lambda w: rh.delete("../x"), InvalidName, r"use path segments"),
    # ---- colliding names: another resource type owns the name, or overwrite=False
    "blob-named-like-a-folder": Case(
        lambda w: rh.blob(data={"x": 1}, name=w.names["folder"], path=w.root / "collide.pkl").save(),
        AlreadyExists, r"already used by a Folder; pick another name or delete it first"),
    "table-named-like-a-blob": Case(
        lambda w: rh.table(data=w.df, name=w.names["blob"], path=w.root / "collide-table").save(),
        AlreadyExists, r"already used by a Blob; pick another name or delete it first"),
    "in-memory-blob-saved-as-a-table-name": Case(
        lambda w: rh.blob(data=[1, 2, 3]).save(w.names["table"]),
        AlreadyExists, r"already used by a Table; pick another name"),
    "folder-saved-as-a-cluster-name": Case(
        lambda w: rh.folder(path=w.root / "folder").save(w.names["cluster"]),
        AlreadyExists, r"already used by a Cluster; pick another name or delete it first"),
    "save-existing-name-without-overwrite": Case(
        lambda w: rh.folder(path=w.root / "other").save(w.names["folder"], overwrite=False),
        AlreadyExists, r"already saved; pass overwrite=True to replace it"),
    # ---- keys with '..', absolute keys, NUL and newline in keys
    "ssh-get-dotdot": Case(lambda w: w.ssh_folder.get("../escape"), InvalidPath, r"keys must stay inside the folder"),
    "local-rm-dotdot": Case(lambda w: w.local_folder.rm(["sub/../../outside"]), InvalidPath,
                            r"keys must stay inside the folder"),
    "local-rm-dot-is-the-folder": Case(lambda w: w.local_folder.rm(["."]), InvalidPath, r"give a file name"),
    "s3-open-write-newline-key": Case(lambda w: _write_open(w.s3_folder, "a\nb.txt"), InvalidPath,
                                      r"NUL or newline character; remove it"),
    "gs-write_path-absolute": Case(lambda w: w.gs_folder.write_path("/etc/passwd", b"x"), InvalidPath,
                                   r"is absolute; give a path relative to the folder"),
    "blob-to-folder-dotdot": Case(lambda w: w.blob.to(w.local_folder, path="../escape.pkl"), InvalidPath,
                                  r"keys must stay inside the folder"),
    "blob-to-folder-absolute": Case(lambda w: w.blob.to(w.ssh_folder, path="/tmp/abs.pkl"), InvalidPath,
                                    r"give a path relative to the folder"),
    # ---- NUL / newline in resource paths
    "local-folder-path-nul": Case(lambda w: rh.folder(path=f"{w.root}/bad\x00dir").put({"a": b"1"}),
                                  InvalidPath, r"NUL or newline"),
    "s3-blob-path-newline": Case(lambda w: rh.blob(data=b"x", system="s3", path=f"/{w.s3_bucket}/a\nb.bin"),
                                 InvalidPath, r"NUL or newline"),
    "table-to-ssh-path-nul": Case(lambda w: w.table.to(w.cluster, path=f"{w.ssh_rel}/x\x00y"), InvalidPath,
                                  r"NUL or newline"),
    # ---- unknown systems
    "table-unknown-system": Case(lambda w: rh.table(data=w.df, system="hdfs", path="/data/t"), UnknownSystem,
                                 r"use one of: file, github, gs, s3, ssh"),
    "folder-to-unknown-system": Case(lambda w: w.local_folder.to("dropbox", path="/x"), UnknownSystem,
                                     r"use one of: file, github, gs, s3, ssh"),
    "blob-system-not-a-name": Case(lambda w: rh.blob(data=b"x", system=3.5, path="/x"), UnknownSystem,
                                   r"system must be a name such as 's3' or a Cluster"),
    "to-via-unknown": Case(lambda w: w.blob.to("file", path=w.root / "copy.pkl", via="teleport"), UnknownSystem,
                           r"'local' in this process"),
    # ---- missing buckets
    "s3-put-missing-bucket": Case(lambda w: rh.folder(system="s3", path=f"/{NO_SUCH}/d").put({"a": b"1"}),
                                  NotFound, r"does not exist.*call folder\.mkdir\(\) to create it"),
    "gs-table-missing-bucket": Case(lambda w: rh.table(data=w.df, system="gs", path=f"/{NO_SUCH}/t"), NotFound,
                                    r"pass mkdir=True to rh\.table\(\)"),
    "s3-blob-missing-bucket": Case(lambda w: rh.blob(data=b"x", system="s3", path=f"/{NO_SUCH}/b.bin"), NotFound,
                                   r"does not exist.*create it"),
    "copy-to-missing-gs-bucket": Case(lambda w: w.local_folder.to("gs", path=f"/{NO_SUCH}/copy"), NotFound,
                                      r"does not exist.*create it"),
    # ---- nonexistent paths and names
    "local-ls-missing-folder": Case(lambda w: rh.folder(path=w.root / "nope").ls(), NotFound,
                                    r"does not exist; write to it first or check the path"),
    "copy-from-missing-folder": Case(lambda w: rh.folder(path=w.root / "nope").to("file", path=w.root / "dst"),
                                     NotFound, r"does not exist; check the path, or write to the folder first"),
    "gs-blob-fetch-missing": Case(lambda w: rh.blob(path=f"/{w.gs_bucket}/nope.pkl", system="gs").fetch(),
                                  NotFound, r"write it first with blob\.write\(data\), or check the path"),
    "table-fetch-missing": Case(lambda w: rh.table(path=w.root / "no-table").fetch(), NotFound,
                                r"write one with rh\.table\(data=\.\.\., path=\.\.\.\) or check the path"),
    "blob-upload-missing-local-file": Case(lambda w: w.blob.upload(w.root / "nope.bin"), NotFound,
                                           r"does not exist.*nothing was uploaded"),
    "load-unknown-blob-name": Case(lambda w: rh.blob(name="no-such-blob-7c1e"), NotFound,
                                   r"check the name with `rh-prefect list`"),
    "load-blob-as-table": Case(lambda w: rh.table(name=w.names["blob"]), NotFound, r"load it with rh\.load"),
    "github-missing-ref": Case(lambda w: rh.folder(path="org/repo@no-such-branch", system="github").ls(),
                               NotFound, r"check the branch, tag or commit"),
    # ---- wrong credentials (servers that check them)
    "ssh-unknown-key": Case(lambda w: rh.folder(path=f"{w.ssh_rel}/folder", system=rh.cluster(
        host=w.cluster.host, port=w.cluster.port, user=w.cluster.user, ssh_key=_stranger_key(),
        known_hosts=w.cluster.known_hosts)).ls(), CredentialsError, r"check user and ssh_key"),
    "ssh-unknown-user": Case(lambda w: rh.folder(path="data", system=rh.cluster(
        host=w.cluster.host, port=w.cluster.port, user="rh-no-such-user", ssh_key=w.cluster.ssh_key
        .get_secret_value(), known_hosts=w.cluster.known_hosts)).put({"a": b"1"}),
        CredentialsError, r"check user and ssh_key"),
    "s3-wrong-secret": Case(lambda w: _auth_folder(w, w.auth_key[0], "wrong-secret").put({"new.txt": b"1"}),
                            CredentialsError, r"check the credentials"),
    "s3-wrong-secret-table": Case(lambda w: rh.table(data=w.df, system="s3", path=f"/{w.auth_bucket}/table",
                                                   credentials=_auth_creds(w, w.auth_key[0], "wrong")),
                                  CredentialsError, r"check the credentials"),
    "s3-wrong-secret-table-fetch": Case(lambda w: rh.table(path=f"/{w.auth_bucket}/table", system="s3",
                                                         credentials=_auth_creds(w, w.auth_key[0], "wrong")).fetch(),
                                        CredentialsError, r"check the credentials"),
    "s3-wrong-secret-blob-fetch": Case(lambda w: rh.blob(path=f"/{w.auth_bucket}/data/kept.txt", system="s3",
                                                         serializer="bytes",
                                                         credentials=_auth_creds(w, w.auth_key[0], "wrong")).fetch(),
                                       CredentialsError, r"check the credentials"),
    "s3-unknown-key-id": Case(lambda w: _auth_folder(w, "AKIANOSUCHKEY0000000", "x").ls(), CredentialsError,
                              r"check the credentials"),
    # ---- unreachable hosts: fail at once
    "cluster-closed-port-blob": Case(lambda w: rh.blob(data=b"x", system=_dead_cluster(w), path="x.bin"),
                                     SystemUnavailable, r"Is the host up and the port right\?"),
    "cluster-closed-port-copy-to": Case(lambda w: w.local_folder.to(_dead_cluster(w), path="copy"),
                                        SystemUnavailable, r"Is the host up and the port right\?"),
    "cluster-closed-port-table": Case(lambda w: rh.table(data=w.df, system=_dead_cluster(w), path=f"{w.root}/t"),
                                      SystemUnavailable, r"Is the host up and the port right\?"),
    # ---- wrong data types
    "put-an-int": Case(lambda w: w.local_folder.put(123), InvalidArgument,
                       r"dict of name -> bytes/str, a local path or a Folder"),
    "put-int-value": Case(lambda w: w.s3_folder.put({"new.txt": 5}), InvalidArgument, r"must be bytes or str"),
    "table-from-a-list": Case(lambda w: rh.table(data=[1, 2, 3], path=w.root / "new-table"), InvalidArgument,
                              r"pass one of"),
    "blob-json-of-a-set": Case(lambda w: rh.blob(data={1, 2}, serializer="json", path=w.root / "set.json"),
                               SerializationError, r"Nothing was written"),
    "blob-unknown-serializer": Case(lambda w: rh.blob(data=b"x", serializer="yaml", path=w.root / "x.yaml"),
                                    SerializationError, r"use one of: "),
    "cluster-port-not-a-number": Case(lambda w: rh.cluster(host="127.0.0.1", port="ssh"), InvalidArgument,
                                      r"port: Input should be a valid integer.*Example: rh\.cluster\("),
    "cluster-host-with-space": Case(lambda w: rh.cluster(host="bad host"), InvalidArgument,
                                    r"not a valid host name or address; pass a name such as"),
    "blob-write-without-data": Case(lambda w: rh.blob(path=w.root / "empty.pkl").write(), InvalidArgument,
                                    r"e\.g\. blob\.write\(obj\)"),
    "stream-batch-size-a-string": Case(lambda w: w.table.stream(batch_size="100"), InvalidArgument,
                                       r"batch_size must be a positive int"),
    "table-write-unknown-mode": Case(lambda w: w.table.write(w.df, mode="upsert"), InvalidArgument,
                                     r"must be 'overwrite' or 'append'"),
    "fetch-unknown-column": Case(lambda w: w.s3_table.fetch(columns=["nope"]), InvalidArgument,
                                 r"Unknown column\(s\) \['nope'\]; the table has \['id', 'text'\]"),
    # ---- schema mismatch on append
    "append-other-columns": Case(lambda w: w.table.write(pd.DataFrame({"id": [1], "score": [0.5]}), mode="append"),
                                 SchemaMismatch, r"column 'text' \(large_string\) is missing; column 'score' "
                                 r"\(double\) is not in the table\. Nothing was written; convert the data"),
    "append-other-types-s3": Case(
        lambda w: w.s3_table.write(pa.table({"id": ["1"], "text": ["x"]}), mode="append"),
        SchemaMismatch, r"column 'id' is string but the table has int64\. Nothing was written; convert"),
    # ---- batch_size <= 0
    "stream-batch-size-zero": Case(lambda w: w.table.stream(batch_size=0), InvalidArgument,
                                   r"batch_size must be a positive int, got 0"),
    "stream-batch-size-negative-s3": Case(lambda w: w.s3_table.stream(batch_size=-5), InvalidArgument,
                                          r"batch_size must be a positive int, got -5"),
    # ---- a read-only system written to
    "github-put": Case(lambda w: w.gh_folder.put({"x.txt": b"1"}), ReadOnlySystem,
                       r"copy the data to a writable system first"),
    "github-rm": Case(lambda w: w.gh_folder.rm(["a.txt"]), ReadOnlySystem, r"copy the data to a writable system"),
    "github-mkdir": Case(lambda w: rh.folder(path="org/repo@main/new", system="github").mkdir(), ReadOnlySystem,
                         r"copy the data to a writable system"),
    "copy-to-github": Case(lambda w: w.local_folder.to("github", path="org/repo@main/copy"), ReadOnlySystem,
                           r"copy the data to a writable system"),
    "table-on-github": Case(lambda w: rh.table(data=w.df, system="github", path="org/repo@main/t"),
                            ReadOnlySystem, r"copy the data to a writable system"),
    "blob-to-github": Case(lambda w: w.blob.to("github", path="org/repo@main/b.pkl"), ReadOnlySystem,
                           r"copy the data to a writable system"),
}


@pytest.mark.parametrize("case", [pytest.param(c, id=k) for k, c in CASES.items()])
def test_bad_input_is_refused_and_changes_nothing(world, case):
    before = snapshot(world)
    with pytest.raises(RhError) as info:
        case.action(world)
    assert type(info.value) is case.error, f"raised {type(info.value).__name__}: {info.value}"
    assert re.search(case.says, str(info.value), re.S), str(info.value)
    after = snapshot(world)
    for part in before:
        assert after[part] == before[part], f"{part} changed"


def test_the_table_is_big_enough():
    assert len(CASES) >= 30


def test_the_snapshot_sees_every_change(world):
    """The comparison above can fail: one small change in each place (a rewrite of the same bytes, an anonymous
    block document) shows up in that place of the snapshot, and only there."""
    w = world
    kept = w.root / "folder" / "a.txt"
    mtime = kept.stat().st_mtime_ns
    name = f"bad-meta-{uuid.uuid4().hex[:8]}"
    anonymous: list[str] = []

    def save_named_and_anonymous() -> None:
        rh.folder(name=name, path=f"/{w.s3_bucket}/meta", system="s3").save()
        creds = rh.S3Credentials(endpoint_url="http://127.0.0.1:1")
        run_coro_as_sync(creds._save(is_anonymous=True))  # what Prefect does for blocks passed by value

    def drop_saved() -> None:
        rh.delete(name)
        with get_client(sync_client=True) as client:
            for doc_id in anonymous:
                client.delete_block_document(doc_id)

    changes = {
        "local": (lambda: os.utime(kept, ns=(mtime, mtime + 10**9)), lambda: os.utime(kept, ns=(mtime, mtime))),
        "ssh": (lambda: (w.ssh_dir / "meta.txt").write_bytes(b"m"), lambda: (w.ssh_dir / "meta.txt").unlink()),
        "s3": (lambda: w.s3.put_object(Bucket=w.s3_bucket, Key="meta.txt", Body=b"m"),
               lambda: w.s3.delete_object(Bucket=w.s3_bucket, Key="meta.txt")),
        "s3-auth": (lambda: w.auth_s3.put_object(Bucket=w.auth_bucket, Key="meta.txt", Body=b"m"),
                    lambda: w.auth_s3.delete_object(Bucket=w.auth_bucket, Key="meta.txt")),
        "gs": (lambda: _gcs_upload(w.gs_endpoint, w.gs_bucket, "meta.txt", b"m"),
               lambda: _gcs_request(w.gs_endpoint, "DELETE", f"/storage/v1/b/{w.gs_bucket}/o/meta.txt")),
        "git": (lambda: (w.git_base / "meta.txt").write_bytes(b"m"), lambda: (w.git_base / "meta.txt").unlink()),
        "registry": (save_named_and_anonymous, drop_saved),
    }
    base = snapshot(w)
    for part, (change, undo) in changes.items():
        before = snapshot(w)
        change()
        try:
            now = snapshot(w)
            assert {k for k in now if now[k] != before[k]} == {part}, part
            if part == "registry":
                known = {d["id"] for d in before["registry"]}
                new = [d for d in now["registry"] if d["id"] not in known]
                anonymous += [d["id"] for d in new if d["is_anonymous"]]
                assert len(new) == 2 and len(anonymous) == 1, new
        finally:
            undo()
    assert snapshot(w) == base  # every change was undone: the world is as the other cases found it


def _gcs_upload(endpoint: str, bucket: str, name: str, data: bytes) -> None:
    req = urllib.request.Request(f"{endpoint}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={_quote(name)}",
                                 data=data, method="POST", headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=10):
        pass
