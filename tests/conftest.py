"""Shared pytest fixtures: real servers on 127.0.0.1, started and stopped by the suite.

Sections:
  1. Environment that must be set before anything imports gcsfs or prefect.
  2. The Prefect server: its URL set in pytest_configure, the server started after collection when a selected
     test is marked ``servers`` (2b: which tests are).
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
# PREFECT_API_URL must be in os.environ before any test module imports prefect (Prefect reads its settings once,
# at import; without an API URL it would spawn a temporary server in every process). Test modules import prefect
# while they are collected, but only the collected items tell whether the run needs the server at all. So
# pytest_configure reserves the server's port and sets the URL, and the server itself starts once collection is
# over, when a selected test is marked ``servers`` (section 2b): ``pytest -m "not servers"`` starts none. A test of that fast tier that
# reaches the Prefect API anyway fails at once ("Failed to reach API"), with a hint to mark it.
_prefect_server_key = pytest.StashKey[PrefectServer]()
_prefect_client_home_key = pytest.StashKey[str]()
_prefect_saved_env_key = pytest.StashKey[dict]()


def pytest_configure(config: pytest.Config) -> None:
    if config.option.help:
        return
    # RH_TEST_PREFECT_DATABASE_URL: run the suite against a Prefect server on that database (PostgreSQL).
    server = PrefectServer(database_url=os.environ.get("RH_TEST_PREFECT_DATABASE_URL") or None)
    config.stash[_prefect_server_key] = server
    # The test process gets its own PREFECT_HOME too, so a developer's ~/.prefect profile
    # (or results written by flows under test) never mixes with the suite's.
    client_home = tempfile.mkdtemp(prefix="rh-test-prefect-client-")
    config.stash[_prefect_client_home_key] = client_home
    client_env = {"PREFECT_API_URL": server.reserve_port(), "PREFECT_HOME": client_home}
    config.stash[_prefect_saved_env_key] = {name: os.environ.get(name) for name in client_env}
    os.environ.update(client_env)


def _started_prefect_server(config: pytest.Config) -> PrefectServer:
    server = config.stash[_prefect_server_key]
    if server.process is None:
        server.start()
    return server


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_prefect_server_key, None)
    if server is None:
        return
    for name, value in config.stash[_prefect_saved_env_key].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if server.process is not None:
        _drain_prefect_services()
    server.stop()  # also gives back a port that was reserved and never used
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
    return _started_prefect_server(pytestconfig)


# --------------------------------------------------------------------------- 2b. the servers marker
# Fixtures that start a server. A test needs a server when it requests one of them, directly or through other
# fixtures (item.fixturenames is the whole closure): s3_bucket, places, rh_cluster ... all lead here.
SERVER_FIXTURES = frozenset({
    "prefect_server", "s3_server", "gcs_server", "ssh_server", "git_server",
    "gcs_fs_server",  # test_faults.py: a fake-gcs-server of its own
})
# Tests that need a server without requesting one of those fixtures (they save or load names, run a flow or a
# task, or start a server in their body) carry the mark in their module: ``pytestmark = pytest.mark.servers``,
# or ``@pytest.mark.servers`` on the test. A fast-tier test that reaches the API anyway fails with a hint.


def _needs_servers(item: pytest.Item) -> bool:
    return bool(SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())))


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _needs_servers(item):
            item.add_marker(pytest.mark.servers)


def pytest_collection_finish(session: pytest.Session) -> None:
    # After -m / -k selection. Started for the whole session (not at the first such test): a test that needs the
    # server but lacks the mark still finds it whenever the run has any server test.
    if session.config.option.collectonly or session.testsfailed:  # collection errors: nothing will run
        return
    if any(item.get_closest_marker("servers") for item in session.items):
        _started_prefect_server(session.config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    server = item.config.stash.get(_prefect_server_key, None)
    if not report.failed or server is None or server.process is not None:
        return
    text = str(report.longrepr)
    if server.api_url in text or ("ConnectError" in text and "prefect/client/" in text):
        report.sections.append(("servers", (
            f"{item.nodeid} reached the Prefect API ({server.api_url}), which this run did not start because no "
            "selected test is marked `servers`: mark the test (or its module) with pytest.mark.servers.")))


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """A copy sent to a worker deletes its block snapshots in the background after returning: let that end before
    the next test, which may compare the server's block documents."""
    dispatch = sys.modules.get("rh_prefect.runtime.dispatch")
    if dispatch is not None:
        dispatch.settle_cleanups()


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


@pytest.fixture
def small_groups():
    """Tables written in row groups of 100 rows and files of 3 groups, so small tables span many files and row
    groups (other sizes: helpers.small_row_groups)."""
    from helpers import small_row_groups

    with small_row_groups(rows=100, groups_per_file=3):
        yield


@pytest.fixture
def cli(monkeypatch):
    """``cli(*args, input=None)`` runs the ``rh-prefect`` command line in this process (typer's CliRunner) and
    returns its Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from rh_prefect.cli import app

    # The CLI would set this default in os.environ itself; keep it from leaking into other tests.
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
    runner = CliRunner()

    def run(*args: str, input: str | None = None):
        return runner.invoke(app, list(args), input=input, env={"COLUMNS": "200"}, catch_exceptions=False)

    return run


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
