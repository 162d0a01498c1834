"""Shared pytest fixtures: real servers on 127.0.0.1, started and stopped by the suite.

Sections:
  1. Environment that must be set before anything imports gcsfs or prefect.
  2. The Prefect server (started in pytest_configure, before test modules import prefect).
  3. Session-scoped servers (started lazily, on first use): S3, GCS, SSH, git.
  4. Function-scoped helpers: fresh buckets and credential environments.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid

# --------------------------------------------------------------------------- 1. early environment
# gcsfs reads this at import time; without it every bucket operation spends ~60 s in failing gRPC
# retries against the emulator.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# Tasks called outside a flow would otherwise warn about logs they cannot send to the API.
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

import pytest  # noqa: E402

from infra import (  # noqa: E402  (tests/ is on sys.path: pytest's rootdir conftest import)
    FakeGCSServer,
    GitDaemon,
    MotoS3Server,
    PrefectServer,
    SSHServer,
)

# --------------------------------------------------------------------------- 2. Prefect server
# Started in pytest_configure, not in a fixture: PREFECT_API_URL must be in os.environ before any
# test module imports prefect, or Prefect would spawn a temporary server in every process.
_prefect_server_key = pytest.StashKey[PrefectServer]()
_prefect_client_home_key = pytest.StashKey[str]()
_prefect_saved_env_key = pytest.StashKey[dict]()


def pytest_configure(config: pytest.Config) -> None:
    if config.option.help:
        return
    # RH_TEST_PREFECT_DATABASE_URL: run the suite against a Prefect server on that database (PostgreSQL).
    server = PrefectServer(database_url=os.environ.get("RH_TEST_PREFECT_DATABASE_URL") or None).start()
    config.stash[_prefect_server_key] = server
    # The test process gets its own PREFECT_HOME too, so a developer's ~/.prefect profile
    # (or results written by flows under test) never mixes with the suite's.
    client_home = tempfile.mkdtemp(prefix="rh-test-prefect-client-")
    config.stash[_prefect_client_home_key] = client_home
    client_env = {"PREFECT_API_URL": server.api_url, "PREFECT_HOME": client_home}
    config.stash[_prefect_saved_env_key] = {name: os.environ.get(name) for name in client_env}
    os.environ.update(client_env)


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_prefect_server_key, None)
    if server is None:
        return
    for name, value in config.stash[_prefect_saved_env_key].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _drain_prefect_services()
    server.stop()
    shutil.rmtree(config.stash[_prefect_client_home_key])


def _drain_prefect_services() -> None:
    """Send the logs and events Prefect still has queued while the server is up: once it is stopped, each
    pending batch is retried for about a minute at interpreter exit."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=10)


@pytest.fixture(scope="session")
def prefect_server(pytestconfig: pytest.Config) -> PrefectServer:
    """The suite's Prefect server: .api_url, .ui_url, .port, .home, .log_path."""
    return pytestconfig.stash[_prefect_server_key]


# --------------------------------------------------------------------------- 3. session servers


@pytest.fixture(scope="session")
def s3_server():
    """moto S3 server: .endpoint_url, .env(), .reset(), .access_key, .secret_key."""
    with MotoS3Server() as server:
        yield server


@pytest.fixture(scope="session")
def gcs_server():
    """fake-gcs-server (memory backend): .endpoint_url, .env()."""
    with FakeGCSServer() as server:
        yield server


@pytest.fixture(scope="session")
def ssh_server():
    """Private sshd: .host, .port, .user, .client_key_path, .client_key_text,
    .known_hosts_path, .host_public_key, .kill_sessions()."""
    with SSHServer() as server:
        yield server


@pytest.fixture(scope="session")
def git_server():
    """git daemon with org/repo.git: .base_url, .repo_url, .commits, .expected_files(ref)."""
    with GitDaemon() as server:
        yield server


# --------------------------------------------------------------------------- 4. buckets and env


def _unique_bucket_name() -> str:
    # 3-63 lowercase characters for both S3 and GCS.
    return f"rh-test-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty S3 bucket on the moto server; yields its name, deletes it afterwards."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key=s3_server.access_key,
        secret=s3_server.secret_key,
        endpoint_url=s3_server.endpoint_url,
        skip_instance_cache=True,
    )
    name = _unique_bucket_name()
    fs.mkdir(name)
    yield name
    fs.invalidate_cache()
    if fs.exists(name):  # the test may have removed it itself
        fs.rm(name, recursive=True)


@pytest.fixture
def gs_bucket(gcs_server):
    """A fresh, empty GCS bucket on fake-gcs-server; yields its name, deletes it afterwards."""
    import gcsfs

    fs = gcsfs.GCSFileSystem(
        endpoint_url=gcs_server.endpoint_url, token="anon", project="test", skip_instance_cache=True
    )
    name = _unique_bucket_name()
    fs.mkdir(name)
    # gcsfs caches the bucket listing; drop it so the new bucket is visible.
    fs.invalidate_cache()
    yield name
    fs.invalidate_cache()
    if fs.exists(name):
        fs.rm(name, recursive=True)


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):
    """Point the default AWS credential chain at the moto server (and nothing else)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    # Ignore any ~/.aws files: a configured region or profile would change the requests.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    env = s3_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def gcs_env(gcs_server, monkeypatch):
    """Point gcsfs / google-cloud-storage defaults at fake-gcs-server."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    env = gcs_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


# --------------------------------------------------------------------------- 5. rh_prefect fixtures


@pytest.fixture
def rh_cluster(ssh_server):
    """An (unsaved) rh.Cluster pointing at the test sshd, with its host key verified from known_hosts."""
    import rh_prefect as rh

    return rh.cluster(
        host=ssh_server.host,
        port=ssh_server.port,
        user=ssh_server.user,
        ssh_key=str(ssh_server.client_key_path),
        known_hosts=str(ssh_server.known_hosts_path),
    )


@pytest.fixture
def unique_name():
    """A fresh resource name per call, so tests never see each other's registry entries."""
    return lambda prefix="t": f"{prefix}-{uuid.uuid4().hex[:10]}"


SYSTEMS = ["file", "ssh", "s3", "gs"]


@pytest.fixture
def places(tmp_path, rh_cluster, s3_bucket, gs_bucket, s3_env, gcs_env):
    """``{system key: (system argument, fresh base path)}`` for each writable system.

    The ssh place is a relative path under the login user's home on the test sshd.
    """
    run = uuid.uuid4().hex[:10]
    return {
        "file": ("file", str(tmp_path / "data")),
        "ssh": (rh_cluster, f"rh-test/{run}"),
        "s3": ("s3", f"/{s3_bucket}/data"),
        "gs": ("gs", f"/{gs_bucket}/data"),
    }


# --------------------------------------------------------------------------- 6. the seed's names (issue 20)
# The seed (Runhouse's "Data" page) and the README address the cluster as "rh-cpu". These fixtures make the test
# servers stand in for it; they are kept apart from the shared helpers above.


@pytest.fixture
def rh_cpu(ssh_server):
    """The test sshd saved as the cluster ``rh-cpu``, its default root a fresh directory under the login home
    (so the seed's default paths never meet another test's). Yields the Cluster; afterwards the registry entry
    and the directory are removed, so later tests (the quickstart looks for ``rh-cpu``) see no cluster."""
    import rh_prefect as rh

    root = f"rh-test/seed-{uuid.uuid4().hex[:10]}"
    saved = rh.cluster(
        name="rh-cpu", host=ssh_server.host, port=ssh_server.port, user=ssh_server.user,
        ssh_key=str(ssh_server.client_key_path), known_hosts=str(ssh_server.known_hosts_path), default_root=root,
    ).save()
    try:
        yield saved
    finally:
        if rh.exists("rh-cpu"):
            rh.delete("rh-cpu")
        shutil.rmtree(ssh_server.home / root, ignore_errors=True)
