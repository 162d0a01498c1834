"""One exception hierarchy, messages that say what to do, and no secret in any error, repr or log line."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

import rh_prefect as rh
from rh_prefect import names, settings
from helpers import chain_text, log_text
from infra import free_port

RH_PREFECT = str(Path(sys.executable).parent / "rh-prefect")

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
        texts.append(chain_text(info.value))

    # A GitHub token must not leak through git's error output either.
    gh = rh.GitHubCredentials(token=SECRET, base_url=f"git://127.0.0.1:{free_port()}")
    with pytest.raises(rh.SystemUnavailable) as info:
        rh.folder(path="org/repo@main", system="github", credentials=gh).ls()
    texts += [chain_text(info.value), repr(gh)]

    with get_client(sync_client=True) as client:
        doc = client.read_block_document_by_name(names.encode(f"@/{name}"), "rh-folder", include_secrets=False)
    texts.append(json.dumps(doc.data, default=str))

    texts.append(log_text(caplog))
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
    texts.append(chain_text(info.value))
    broken_key = key_text.replace("KEY-----\n", "KEY-----\nxx", 1)  # still looks like a key, does not parse
    broken = rh.cluster(host=ssh_server.host, port=ssh_server.port, ssh_key=broken_key,
                        known_hosts=str(ssh_server.known_hosts_path))
    with pytest.raises(rh.CredentialsError) as info:
        rh.folder(path="x", system=broken).ls()
    texts.append(chain_text(info.value))
    texts += [repr(c), str(c), json.dumps(c.model_dump(mode="json")), log_text(caplog)]
    blob = "\n".join(texts)
    assert secret_line not in blob and "PRIVATE KEY" not in blob


# --------------------------------------------------------------------------- endpoints that cannot be reached


@pytest.fixture
def silent_port():
    """A port on which a connection is never answered: a listening socket whose one-slot queue is already full, so
    the kernel drops further connection attempts (SYNs) without a word, as a firewall or a dead route does."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    filler = socket.create_connection(server.getsockname(), timeout=5)
    try:
        yield server.getsockname()[1]
    finally:
        filler.close()
        server.close()


def _dead_folder(system: str, port: int, monkeypatch) -> rh.Folder:
    """A folder on ``system`` whose endpoint is 127.0.0.1:``port``."""
    endpoint = f"http://127.0.0.1:{port}"
    if system == "s3":
        creds = rh.S3Credentials(aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET, endpoint_url=endpoint)
        return rh.folder(path="/rh-dead-bucket/data", system="s3", credentials=creds)
    if system == "gs":
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
        return rh.folder(path="/rh-dead-bucket/data", system="gs")
    pinned = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    # an absolute path: a relative one is resolved against the login's home directory, which connects at once
    return rh.folder(path="/srv/rh-dead/data", system=rh.cluster(host="127.0.0.1", port=port, user="nobody",
                                                                 host_key=pinned))


_WHAT_TO_CHECK = {
    "s3": "Check the endpoint (endpoint_url of the S3Credentials block, or AWS_ENDPOINT_URL_S3",
    "gs": "Check the endpoint (endpoint_url of the GCSCredentials block, or STORAGE_EMULATOR_HOST)",
    "ssh": "Is the host up and the port right? Try `cluster.up_if_not()`.",
}


@pytest.fixture
def retry_decisions():
    """The retry policy's decisions logged during the test, e.g. ``["rh-copy-tree failed with X: not retrying"]``
    (a handler of its own logger: the package's loggers may not propagate to pytest's)."""
    logger = logging.getLogger("rh_prefect.runtime.tasks")
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.servers  # runs tasks against the Prefect API
@pytest.mark.timeout(120)  # a backstop: each call below must fail within connect_timeout, not hang
@pytest.mark.parametrize("kind", ["refused", "silent"])
@pytest.mark.parametrize("system", ["s3", "gs", "ssh"])
def test_unreachable_endpoint_fails_at_once_naming_it(system, kind, silent_port, monkeypatch, retry_decisions,
                                                     tmp_path):
    """Nothing listens on the port (refused), or nothing answers there (silent): listing, writing and reading (a
    copy task) each fail with SystemUnavailable naming the endpoint and what to check, within the connect_timeout
    setting (2 s here), and the copy task is not retried: an endpoint that never answered is not transient."""
    port = free_port() if kind == "refused" else silent_port
    with settings.override(connect_timeout=2):
        calls = {"ls": lambda f: f.ls(), "put": lambda f: f.put({"a.txt": b"a"}),
                 "read in a task": lambda f: f.to("file", str(tmp_path / "copy"))}
        times = {}
        for what, call in calls.items():
            folder = _dead_folder(system, port, monkeypatch)  # a fresh one each time: no connection reused
            started = time.monotonic()
            with pytest.raises(rh.SystemUnavailable) as info:
                call(folder)
            times[what] = time.monotonic() - started
            message = str(info.value)
            assert f"127.0.0.1:{port}" in message and "could not be reached" in message, message
            assert ("connection refused" if kind == "refused" else "no answer within 2 s") in message
            assert _WHAT_TO_CHECK[system] in message
            assert info.value.transient is False
    assert retry_decisions == ["rh-copy-tree failed with SystemUnavailable: not retrying"]
    print(f"\n{system} {kind}: " + ", ".join(f"{what} {seconds:.2f} s" for what, seconds in times.items()))


def test_cli_prints_one_error_line_for_an_unreachable_endpoint(tmp_path):
    """``rh-prefect ls gs://...`` against a GCS endpoint where nothing listens: one error line naming it, no
    traceback (gcsfs logs one per request it gives up on), exit code 1."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    done = subprocess.run([RH_PREFECT, "ls", "gs://rh-dead-bucket/data"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [(
        f"rh-prefect: error: GCS endpoint http://127.0.0.1:{port} could not be reached (connection refused: nothing "
        "listens on that port). Check the endpoint (endpoint_url of the GCSCredentials block, or "
        "STORAGE_EMULATOR_HOST) and that the server is up."
    )]


# --------------------------------------------------------------------------- transient or not, by type


def _s3_error(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


def _s3_cases():
    import aiohttp
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ParamValidationError,
        ReadTimeoutError,
        SSLError,
    )

    return [
        (_s3_error("SlowDown", 503), True),
        (_s3_error("InternalError", 500), True),
        (_s3_error("RequestTimeout", 400), True),  # S3 answers a stalled upload body with a 400 of this code
        (_s3_error("ThrottlingException", 400), True),
        (_s3_error("SomethingNew", 502), True),  # unknown code: the status says
        (_s3_error("AccessDenied", 403), False),
        (_s3_error("NoSuchBucket", 404), False),
        (_s3_error("InvalidArgument", 400), False),
        (EndpointConnectionError(endpoint_url="http://s3"), True),
        (ConnectTimeoutError(endpoint_url="http://s3"), True),
        (ReadTimeoutError(endpoint_url="http://s3"), True),
        (SSLError(endpoint_url="https://s3", error="certificate verify failed"), False),
        (NoCredentialsError(), False),
        (ParamValidationError(report="Bucket must be a string"), False),
        (aiohttp.ClientPayloadError("body cut short"), True),
        (aiohttp.ServerDisconnectedError(), True),
    ]


def _gs_cases():
    import aiohttp
    import google.auth.exceptions
    import requests.exceptions
    from gcsfs.retry import ChecksumError, HttpError, NonRetryableError

    return [
        (HttpError({"code": 503, "message": "backend error"}), True),
        (HttpError({"code": 429, "message": "rate limit"}), True),
        (HttpError({"code": "500", "message": "internal"}), True),  # gcsfs keeps the status as the answer had it
        (HttpError({"code": 404, "message": "No such object"}), False),
        (HttpError({"code": 403, "message": "forbidden"}), False),
        (ChecksumError("md5 mismatch"), True),
        (NonRetryableError("gave up"), False),
        (requests.exceptions.ProxyError(), True),  # gcsfs's answer to a 502
        (google.auth.exceptions.TransportError("token server unreachable"), True),
        (google.auth.exceptions.RefreshError("invalid_grant"), False),
        (google.auth.exceptions.DefaultCredentialsError("no credentials"), False),
        (aiohttp.ClientResponseError(None, (), status=502), True),  # type: ignore[arg-type]
        (aiohttp.ClientResponseError(None, (), status=404), False),  # type: ignore[arg-type]
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientPayloadError("body cut short"), True),
        (aiohttp.InvalidURL("gs://"), False),
    ]


def _ssh_cases():
    import asyncssh

    return [
        (asyncssh.ConnectionLost("Connection lost"), True),
        (asyncssh.DisconnectError(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many"), True),
        (asyncssh.DisconnectError(asyncssh.DISC_PROTOCOL_ERROR, "bad packet"), False),
        (asyncssh.PermissionDenied("refused"), False),
        (asyncssh.HostKeyNotVerifiable("unknown key"), False),
        (asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "open failed"), True),  # sshd out of sessions
        (asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE, "short"), True),
        (asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "no"), False),
        (asyncssh.SFTPNoConnection("Connection not open"), True),
        (asyncssh.SFTPConnectionLost("Connection lost"), True),
        (asyncssh.SFTPFailure("failure"), False),
        (asyncssh.SFTPNoSpaceOnFilesystem("full"), False),
        (asyncssh.ProcessError(None, "rm -rf x", None, 1, None, 1, "", "rm: denied"), False),
        # the channel closed without an exit status: the connection dropped under the command
        (asyncssh.ProcessError(None, "tar x", None, None, None, None, "", ""), True),
    ]


def _local_cases():
    return [
        (OSError(errno.ENOSPC, "No space left on device", "/data/x"), False),
        # a path's digits never count: a CI run's tmp dir was /tmp/pytest-of-root/pytest-503/...
        (OSError(errno.ENAMETOOLONG, "File name too long", "/tmp/pytest-503/d0/.n.rh-tmp-5004ab"), False),
        (OSError(errno.ESTALE, "Stale file handle", "/nfs/x"), True),
        (OSError(errno.EAGAIN, "Resource temporarily unavailable", "/data/x"), True),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/x"), False),
        (PermissionError(errno.EACCES, "Permission denied", "/data/x"), False),
    ]


def _generic_cases():
    return [
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (OSError(errno.EHOSTUNREACH, "No route to host"), True),
        (rh.SystemUnavailable("lost the connection"), True),
        (rh.SystemUnavailable("never answered", transient=False), False),
        (rh.NotFound("no folder"), False),
        (rh.InvalidName("bad name"), False),
        (rh.TransferError("x", {"a": ConnectionResetError(), "b": PermissionError()}), False),
        (rh.TransferError("x", {"a": ConnectionResetError(), "b": TimeoutError()}), True),
        (rh.TransferError("x", {}), False),
        (ValueError("bad"), False),
        (KeyError("k"), False),
        # words and numbers in a message decide nothing
        (RuntimeError("HTTP 503 Service Unavailable: SlowDown, connection reset, timed out"), False),
        (OSError("upload of /data/run-500.bin failed: eof"), False),
    ]


def _caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize("system, cases", [("s3", _s3_cases), ("gs", _gs_cases), ("ssh", _ssh_cases),
                                           ("file", _local_cases)])
def test_each_system_judges_its_own_errors_by_type(system, cases):
    """A table per system, no server: the system class claims its client's exceptions (True/False), the retry
    policy agrees, and no system claims another's."""
    from rh_prefect.runtime import tasks
    from rh_prefect.systems.base import system_class, system_classes

    klass = system_class(system)
    for exc, transient in cases():
        assert klass.is_transient(exc) is transient, (system, exc)
        assert tasks.is_transient(exc) is transient, (system, exc)
        others = {other.name: other.is_transient(exc) for other in system_classes()
                  if not issubclass(klass, other) and not issubclass(other, klass)}
        assert {name: v for name, v in others.items() if v is not None and v is not transient} == {}, (exc, others)


@pytest.mark.parametrize("exc, transient", _generic_cases())
def test_retry_policy_generic_rules(exc, transient):
    from rh_prefect.runtime import tasks

    assert tasks.is_transient(exc) is transient


def test_retry_policy_follows_the_cause():
    """A wrapper without a verdict of its own (a library's or the engine's) is judged by what it was raised from;
    our own errors and translated ones decide first."""
    import asyncssh
    from botocore.exceptions import ClientError

    from rh_prefect.runtime import tasks

    assert tasks.is_transient(_caused(RuntimeError("stream broke"), asyncssh.ConnectionLost("lost"))) is True
    assert tasks.is_transient(_caused(RuntimeError("stream broke"), asyncssh.PermissionDenied("no"))) is False
    # s3fs turns SlowDown into OSError(EBUSY, ..., path): the ClientError it was raised from says
    slow = _caused(OSError(errno.EBUSY, "Please reduce your request rate.", "bkt/key"), _s3_error("SlowDown", 503))
    assert tasks.is_transient(slow) is True
    assert isinstance(slow.__cause__, ClientError)
    never = _caused(rh.SystemUnavailable("never answered", transient=False), ConnectionRefusedError())
    assert tasks.is_transient(never) is False
