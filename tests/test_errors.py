"""One exception hierarchy, messages that say what to do, and no secret in any error, repr or log line."""

from __future__ import annotations

import json
import logging

import pytest
from prefect.client.orchestration import get_client

import rh_prefect as rh
from rh_prefect import names
from infra import free_port

SECRET = "sEcReT-7f3a9c-do-not-leak"
KEY_ID = "AKIDRHTESTLEAKCHECK"


def test_every_error_is_an_rh_error():
    for cls in (rh.InvalidName, rh.InvalidPath, rh.UnknownSystem, rh.NotFound, rh.AlreadyExists, rh.ReadOnlySystem,
                rh.SystemUnavailable, rh.CredentialsError, rh.HostKeyMismatch, rh.IntegrityError, rh.TransferError):
        assert issubclass(cls, rh.RhError)


def test_unknown_system(tmp_path):
    with pytest.raises(rh.UnknownSystem) as info:
        rh.folder(path=tmp_path, system="dropbox")
    assert str(info.value) == (
        "Unknown system 'dropbox'; use one of: file, github, gs, s3, ssh, or pass a Cluster object."
    )
    with pytest.raises(rh.UnknownSystem, match="got int"):
        rh.folder(path=tmp_path, system=3)  # type: ignore[arg-type]


def test_bad_name_fails_before_anything_is_written(tmp_path):
    with pytest.raises(rh.InvalidName, match="e.g. 'my-folder'"):
        rh.folder(name="my folder", path=tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(rh.InvalidName):
        rh.folder(path=tmp_path).save("bad/../name")


def test_missing_bucket_on_gcs(gcs_env):
    f = rh.folder(path="/rh-no-such-gcs-bucket/data", system="gs")
    with pytest.raises(rh.NotFound) as info:
        f.put({"a": b"1"})
    assert "Bucket 'rh-no-such-gcs-bucket' does not exist" in str(info.value)
    assert "folder.mkdir()" in str(info.value)


def test_bucket_path_without_bucket(s3_env):
    f = rh.folder(path="/", system="s3")
    with pytest.raises(rh.NotFound, match="No bucket in path"):
        f.put({"a": b"1"})


def test_unreachable_cluster_folder(tmp_path):
    port = free_port()
    pinned = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    c = rh.cluster(host="127.0.0.1", port=port, user="nobody", host_key=pinned)
    f = rh.folder(path="data", system=c)
    with pytest.raises(rh.SystemUnavailable) as info:
        f.ls()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "Is the host up and the port right?" in str(info.value)


def test_missing_credentials_messages(tmp_path, ssh_server):
    with pytest.raises(rh.CredentialsError, match="needs a cluster: pass system=rh.cluster"):
        rh.folder(path="x", system="sftp")
    half = rh.S3Credentials(aws_access_key_id=KEY_ID)
    with pytest.raises(rh.CredentialsError, match="needs both aws_access_key_id and aws_secret_access_key"):
        rh.folder(path="/b/x", system="s3", credentials=half).put({"a": b"1"})
    bad_json = rh.GCSCredentials(service_account_info="{" + SECRET)
    with pytest.raises(rh.CredentialsError) as info:
        rh.folder(path="/b/x", system="gs", credentials=bad_json).put({"a": b"1"})
    assert "not valid JSON; paste the whole key file" in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value.__cause__)


def _all_log_text(caplog) -> str:
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


def _chain_text(exc: BaseException) -> str:
    parts = []
    seen = 0
    while exc is not None and seen < 10:
        parts += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return "\n".join(parts)


def test_no_secret_in_reprs_errors_logs_or_registry(s3_server, s3_bucket, tmp_path, caplog, unique_name,
                                                    monkeypatch):
    caplog.set_level(logging.DEBUG)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("RH_PREFECT_CACHE", str(tmp_path / "cache"))
    texts: list[str] = []

    # moto accepts any secret: the distinctive one is really used for signing here.
    good = rh.S3Credentials(aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET, endpoint_url=s3_server.endpoint_url)
    name = unique_name("leak")
    f = rh.folder(name=name, path=f"/{s3_bucket}/leak", system="s3", credentials=good).save()
    f.put({"a.txt": b"a"})
    texts += [repr(good), str(good), repr(f), str(f), json.dumps(f.model_dump(mode="json")), repr(f.sys),
              f.url, repr(rh.folder(name=name))]

    # Writes, reads and a copy against an endpoint that does not answer.
    dead = rh.S3Credentials(aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                            endpoint_url=f"http://127.0.0.1:{free_port()}")
    dead_folder = rh.folder(path=f"/{s3_bucket}/x", system="s3", credentials=dead)
    source = rh.folder(path=tmp_path / "src").put({"z": b"z"})
    for call in (
        lambda: dead_folder.put({"a": b"1"}),
        lambda: dead_folder.ls(),
        lambda: dead_folder.get("a"),
        lambda: source.to(dead_folder.sys, path=f"/{s3_bucket}/y"),
    ):
        with pytest.raises(rh.RhError) as info:
            call()
        texts.append(_chain_text(info.value))

    # A GitHub token must not leak through git's error output either.
    gh = rh.GitHubCredentials(token=SECRET, base_url=f"git://127.0.0.1:{free_port()}")
    with pytest.raises(rh.SystemUnavailable) as info:
        rh.folder(path="org/repo@main", system="github", credentials=gh).ls()
    texts += [_chain_text(info.value), repr(gh)]

    with get_client(sync_client=True) as client:
        doc = client.read_block_document_by_name(names.encode(f"@/{name}"), "rh-folder", include_secrets=False)
    texts.append(json.dumps(doc.data, default=str))

    texts.append(_all_log_text(caplog))
    blob = "\n".join(texts)
    assert SECRET not in blob
    assert KEY_ID in blob  # the access key id is not secret: the check above really saw these texts


def test_no_ssh_key_in_errors_or_logs(ssh_server, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    key_text = ssh_server.client_key_text
    secret_line = key_text.splitlines()[1]
    texts = []
    c = rh.cluster(host=ssh_server.host, port=free_port(), user=ssh_server.user, ssh_key=key_text,
                   known_hosts=str(ssh_server.known_hosts_path))
    with pytest.raises(rh.SystemUnavailable) as info:
        c.up_if_not()
    texts.append(_chain_text(info.value))
    broken_key = key_text.replace("KEY-----\n", "KEY-----\nxx", 1)  # still looks like a key, does not parse
    broken = rh.cluster(host=ssh_server.host, port=ssh_server.port, ssh_key=broken_key,
                        known_hosts=str(ssh_server.known_hosts_path))
    with pytest.raises(rh.CredentialsError) as info:
        rh.folder(path="x", system=broken).ls()
    texts.append(_chain_text(info.value))
    texts += [repr(c), str(c), json.dumps(c.model_dump(mode="json")), _all_log_text(caplog)]
    blob = "\n".join(texts)
    assert secret_line not in blob and "PRIVATE KEY" not in blob
