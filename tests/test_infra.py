"""Self-tests of the test servers, using only the raw client libraries (not rh_prefect)."""

from __future__ import annotations

import os
import random
import subprocess

import asyncssh
import gcsfs
import pytest
import s3fs
import sshfs

from helpers import prefect_client, read_tree
from infra import GitDaemon, http_status

PAYLOAD = random.Random(7).randbytes(300_000)  # several SFTP/HTTP chunks, not a toy string


# --------------------------------------------------------------------------- S3


def test_s3_roundtrip(s3_server, s3_bucket, tmp_path):
    fs = s3fs.S3FileSystem(key=s3_server.access_key, secret=s3_server.secret_key,
                           endpoint_url=s3_server.endpoint_url, skip_instance_cache=True)
    fs.pipe(f"{s3_bucket}/dir/blob.bin", PAYLOAD)
    local = tmp_path / "local.bin"
    local.write_bytes(PAYLOAD[::-1])
    fs.put(str(local), f"{s3_bucket}/dir/put.bin")

    assert fs.cat(f"{s3_bucket}/dir/blob.bin") == PAYLOAD
    fs.get(f"{s3_bucket}/dir/put.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == PAYLOAD[::-1]
    assert sorted(fs.ls(f"{s3_bucket}/dir")) == [f"{s3_bucket}/dir/blob.bin", f"{s3_bucket}/dir/put.bin"]


def test_s3_env_drives_default_credential_chain(s3_env, s3_bucket):
    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # no key, secret or endpoint given
    fs.pipe(f"{s3_bucket}/x", b"from env")
    assert fs.cat(f"{s3_bucket}/x") == b"from env"


def test_s3_reset_wipes_buckets(s3_server):
    fs = s3fs.S3FileSystem(key=s3_server.access_key, secret=s3_server.secret_key,
                           endpoint_url=s3_server.endpoint_url, skip_instance_cache=True)
    fs.mkdir("rh-reset-check")
    assert "rh-reset-check" in fs.ls("", refresh=True)
    s3_server.reset()
    assert "rh-reset-check" not in fs.ls("", refresh=True)


# --------------------------------------------------------------------------- GCS


def test_gcs_roundtrip(gcs_server, gs_bucket):
    fs = gcsfs.GCSFileSystem(endpoint_url=gcs_server.endpoint_url, token="anon", project="test",
                             skip_instance_cache=True)
    fs.pipe(f"{gs_bucket}/dir/blob.bin", PAYLOAD)
    assert fs.cat(f"{gs_bucket}/dir/blob.bin") == PAYLOAD
    assert fs.ls(f"{gs_bucket}/dir") == [f"{gs_bucket}/dir/blob.bin"]


def test_gcs_env_drives_default_client(gcs_env, gs_bucket):
    fs = gcsfs.GCSFileSystem(skip_instance_cache=True)  # finds STORAGE_EMULATOR_HOST itself
    fs.pipe(f"{gs_bucket}/x", b"from env")
    assert fs.cat(f"{gs_bucket}/x") == b"from env"


# --------------------------------------------------------------------------- SSH / SFTP


def _sshfs(server, known_hosts) -> sshfs.SSHFileSystem:
    return sshfs.SSHFileSystem(
        server.host, port=server.port, username=server.user,
        client_keys=[str(server.client_key_path)], known_hosts=str(known_hosts),
        skip_instance_cache=True,
    )


def test_sshfs_roundtrip(ssh_server, tmp_path):
    fs = _sshfs(ssh_server, ssh_server.known_hosts_path)
    remote = tmp_path / "remote" / "blob.bin"  # same machine: the server's file is checkable locally
    fs.makedirs(str(remote.parent), exist_ok=True)
    fs.pipe(str(remote), PAYLOAD)

    assert remote.read_bytes() == PAYLOAD
    assert fs.cat(str(remote)) == PAYLOAD


def test_ssh_wrong_host_key_is_refused(ssh_server, tmp_path):
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-t", "ed25519", "-N", "", "-q", "-f", str(other)], check=True)
    other_public = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    assert other_public != ssh_server.host_public_key
    wrong_known_hosts = tmp_path / "known_hosts"
    wrong_known_hosts.write_text(f"[{ssh_server.host}]:{ssh_server.port} {other_public}\n")

    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        _sshfs(ssh_server, wrong_known_hosts)
    # The OpenSSH client refuses too (BatchMode: no prompt to accept the key).
    argv = [a if not a.startswith("UserKnownHostsFile=") else f"UserKnownHostsFile={wrong_known_hosts}"
            for a in ssh_server.ssh_command("true")]
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr


def test_ssh_kill_sessions_drops_connections(ssh_server, tmp_path):
    fs = _sshfs(ssh_server, ssh_server.known_hosts_path)
    (tmp_path / "f").write_bytes(b"before")
    assert fs.cat(str(tmp_path / "f")) == b"before"

    assert ssh_server.kill_sessions()  # at least this connection's processes
    with pytest.raises((asyncssh.Error, OSError)):
        fs.cat(str(tmp_path / "f"))
    # The listener survives: a new connection works.
    assert _sshfs(ssh_server, ssh_server.known_hosts_path).cat(str(tmp_path / "f")) == b"before"


# --------------------------------------------------------------------------- git


def test_git_clone_tag_gives_v1_files(git_server, tmp_path):
    dest = tmp_path / "clone"
    subprocess.run(["git", "-c", "advice.detachedHead=false", "clone", "-q", "--depth", "1", "--branch", "v1", git_server.repo_url, str(dest)],
                   check=True, env=GitDaemon.git_env())
    head = subprocess.run(["git", "-C", str(dest), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()

    assert head == git_server.commits["v1"]
    checkout = read_tree(dest, skip=[".git"])
    assert checkout == git_server.expected_files("v1")
    assert checkout["README.md"] == b"hello v1\n"
    assert len(checkout["data/sub/b.bin"]) == 1000


def test_git_refs_match_commits(git_server):
    out = subprocess.run(["git", "ls-remote", git_server.repo_url], check=True, capture_output=True,
                         text=True, env=GitDaemon.git_env()).stdout
    refs = {ref: sha for sha, ref in (line.split("\t") for line in out.splitlines())}

    assert refs["refs/heads/main"] == git_server.commits["main"]
    assert refs["refs/tags/v1^{}"] == git_server.commits["v1"]  # annotated tag, peeled
    assert git_server.expected_files("main")["README.md"] == b"hello v2\n"
    assert git_server.expected_files(git_server.commits["main"])["data/c.txt"] == b"gamma\n"


# --------------------------------------------------------------------------- Prefect


def test_prefect_server_is_the_configured_api(prefect_server):
    assert os.environ["PREFECT_API_URL"] == prefect_server.api_url
    assert http_status(f"{prefect_server.api_url}/health") == 200
    with prefect_client() as client:
        assert str(client.api_url).rstrip("/") == prefect_server.api_url  # not a temporary server
        response = client.hello()
    assert response.status_code == 200
    # The UI is enabled and served from the same port (pages only go to clients accepting HTML).
    assert http_status(f"{prefect_server.ui_url}/dashboard", headers={"Accept": "text/html"}) == 200
