"""Security promises (issue 8, point 5): secrets stay secret, host keys are verified, remote commands are not
injectable, local files follow the user's umask.

Sections:
  1. Secrets: credential fields are SecretStr; copies that succeed and copies that fail, inside a Prefect flow
     and through the cluster-worker dispatch path, leave no secret value in any log line, repr, exception,
     flow-run parameter, state message, artifact, event or file the client or server writes.
  2. SSH host keys: verified by default, a changed key is refused with HostKeyMismatch and advice, and a
     pooled connection is never reused by a cluster that trusts a different key.
  3. Shell injection: names with spaces, quotes, ``;``, ``$()``, backticks, newlines, leading dashes and tar
     options go through every remote command (SFTP, tar streams over exec, server-side ``cp``, worker start)
     byte-exact, and a canary file that an injected command would create never appears; a git ref cannot
     smuggle options into git.
  4. umask: files and directories written locally (put, open, copies from ssh and s3, Blob, Table, GitHub
     checkout cache) get the mode the user's umask gives, never world-writable.

(Existing coverage not repeated here: tests/test_errors.py checks reprs/errors/logs outside flows;
tests/test_systems.py checks a wrong pinned/known_hosts key and an explicit missing known_hosts path.)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import typing
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

import infra
import rh_prefect as rh
from rh_prefect import names
from rh_prefect.errors import InvalidArgument
from rh_prefect.resources.folder import Folder
from rh_prefect.resources.cluster import Cluster
from rh_prefect.systems import GitHubCredentials, S3Credentials, get_system

from helpers import chain_text, log_text, prefect_client, read_tree, wait_for

REPO = Path(__file__).resolve().parents[1]
VENV_PREFECT = str(Path(sys.executable).parent / "prefect")


def _key_secret_lines(key_text: str) -> list[str]:
    """The base64 body lines of a private key: any of them in a text means the key leaked."""
    return [line for line in key_text.splitlines() if line and "PRIVATE KEY" not in line]


def _new_private_key(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-t", "ed25519", "-N", "", "-q", "-f", str(path)], check=True)
    return path.read_text()


def _assert_no_secret(texts: dict[str, str], secrets: list[str]) -> None:
    leaks = [(where, secret[:12] + "...") for where, text in texts.items() for secret in secrets if secret in text]
    assert leaks == [], f"secret values found in: {leaks}"


def _files_text(root: Path) -> str:
    """Everything under a directory as text (binary files decoded loosely): where secrets must not be."""
    parts = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                parts.append(path.read_bytes().decode("utf-8", errors="replace"))
            except OSError:
                continue
    return "\n".join(parts)


# =========================================================================== 1. secrets


def _secret_fields(model: type) -> set[str]:
    found = set()
    for field_name, info in model.model_fields.items():
        if SecretStr in typing.get_args(info.annotation) or info.annotation is SecretStr:
            found.add(field_name)
    return found


def test_credential_fields_are_secretstr_and_marked_secret_for_the_ui():
    expected = {
        rh.S3Credentials: {"aws_secret_access_key", "aws_session_token"},
        rh.GCSCredentials: {"service_account_info"},
        rh.GitHubCredentials: {"token"},
        rh.Cluster: {"ssh_key"},
    }
    for model, fields in expected.items():
        assert _secret_fields(model) == fields, model.__name__
        schema = model._to_block_schema(block_type_id=uuid.uuid4())
        assert set(schema.fields["secret_fields"]) == fields, model.__name__  # the server and UI mask these
    # Resources mask the secrets of the blocks nested in them (a Folder's cluster and credentials).
    nested = {"cluster.ssh_key", "credentials.aws_secret_access_key", "credentials.aws_session_token",
              "credentials.service_account_info", "credentials.token"}
    for model in (rh.Folder, rh.Blob, rh.Table):
        assert set(model._to_block_schema(block_type_id=uuid.uuid4()).fields["secret_fields"]) == nested
    # No other block of the package has a field that looks like a credential but is a plain string.
    suspicious = ("secret", "token", "password", "passwd", "private", "ssh_key", "service_account", "api_key")
    from rh_prefect.blocks import BLOCK_TYPES

    blocks = set(BLOCK_TYPES) | {rh.PandasTable, rh.DaskTable, rh.RayTable, rh.HuggingFaceTable, rh.PolarsTable}
    assert set(expected) <= blocks and {rh.Folder, rh.Blob, rh.Table} <= blocks
    for model in blocks:
        for field_name in model.model_fields:
            if any(word in field_name.lower() for word in suspicious):
                assert field_name in _secret_fields(model), f"{model.__name__}.{field_name} is not a SecretStr"


@pytest.fixture(scope="module")
def secret_world(s3_server, ssh_server, git_server, tmp_path_factory):
    """Saved credential blocks holding unique secret values, and saved resources that use them (one set for the
    module's secret tests; each test writes to its own paths).

    The S3 secret really signs every request (moto accepts any secret) and the SSH key really logs in; the
    GitHub token is handed to git (the test's git:// daemon has no use for it)."""
    import s3fs

    tmp_path = tmp_path_factory.mktemp("secret-world")
    run = uuid.uuid4().hex
    bucket = f"rh-sec-{run[:16]}"
    admin = s3fs.S3FileSystem(key=s3_server.access_key, secret=s3_server.secret_key,
                              endpoint_url=s3_server.endpoint_url, skip_instance_cache=True)
    admin.mkdir(bucket)
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
                    "AWS_ENDPOINT_URL", "AWS_PROFILE"):
            mp.delenv(var, raising=False)  # only the credential blocks may be used
        mp.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
        mp.setenv("RH_PREFECT_CACHE", str(tmp_path / "cache"))
        s3_secret = f"rhS3Secret{run}"
        s3_token = f"rhS3Token{run}"
        gh_token = f"ghp_rhTestToken{run}"
        key_text = ssh_server.client_key_text
        stranger_key = _new_private_key(tmp_path, "stranger")  # a valid key the server does not authorize
        creds = rh.S3Credentials(aws_access_key_id="AKIDRHSECURITYTEST", aws_secret_access_key=s3_secret,
                                 aws_session_token=s3_token, endpoint_url=s3_server.endpoint_url)
        creds_name = f"sec-s3-{run[:10]}"
        creds.save(creds_name)
        gh = rh.GitHubCredentials(token=gh_token, base_url=git_server.base_url)
        gh_name = f"sec-gh-{run[:10]}"
        gh.save(gh_name)
        cluster = rh.cluster(name=f"sec-cluster-{run[:10]}", host=ssh_server.host, port=ssh_server.port,
                             user=ssh_server.user, ssh_key=key_text,
                             known_hosts=str(ssh_server.known_hosts_path)).save()
        stranger = rh.cluster(name=f"sec-stranger-{run[:10]}", host=ssh_server.host, port=ssh_server.port,
                              user=ssh_server.user, ssh_key=stranger_key,
                              known_hosts=str(ssh_server.known_hosts_path)).save()
        src_dir = tmp_path / "src"
        files = {f"f{i}.bin": os.urandom(2000 + i) for i in range(10)}  # 10 files: the tar bulk path to ssh
        src_dir.mkdir()
        for key, data in files.items():
            (src_dir / key).write_bytes(data)
        s3_folder = rh.folder(name=f"sec-s3f-{run[:10]}", path=f"/{bucket}/sec", system="s3",
                              credentials=rh.S3Credentials.load(creds_name)).save()
        ssh_folder = rh.folder(name=f"sec-sshf-{run[:10]}", path=f"rh-test/sec-{run[:10]}",
                               system=rh.cluster(cluster.name)).save()
        yield {
            "secrets": [s3_secret, s3_token, gh_token, *_key_secret_lines(key_text),
                        *_key_secret_lines(stranger_key)],
            "creds": creds, "creds_name": creds_name, "gh": gh, "gh_name": gh_name, "cluster": cluster,
            "stranger": stranger, "src_dir": src_dir, "files": files, "s3_folder": s3_folder,
            "ssh_folder": ssh_folder, "bucket": bucket, "run": run,
        }
        ssh_folder.rm()
        for name in (s3_folder.name, ssh_folder.name, cluster.name, stranger.name):
            rh.delete(name)
        with prefect_client() as client:
            for block_name, slug in ((creds_name, "rh-s3-credentials"), (gh_name, "rh-github-credentials")):
                client.delete_block_document(client.read_block_document_by_name(block_name, slug).id)
    admin.rm(bucket, recursive=True)


def _flow_run_texts(flow_run_id) -> dict[str, str]:
    """Everything the Prefect server keeps about a flow run: parameters, state messages, logs, task runs,
    artifacts and events."""
    from prefect.client.schemas.filters import (
        ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId,
    )
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    texts: dict[str, str] = {}
    with prefect_client() as client:
        run = client.read_flow_run(flow_run_id)
        texts["flow-run parameters"] = json.dumps(run.parameters, default=str)
        texts["flow-run record"] = run.model_dump_json()
        states = client.read_flow_run_states(flow_run_id)
        texts["flow-run states"] = "\n".join(s.model_dump_json() for s in states)
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        texts["flow-run logs"] = "\n".join(log.message for log in logs)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        texts["task runs"] = "\n".join(t.model_dump_json() for t in task_runs)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        texts["artifacts"] = "\n".join(a.model_dump_json() for a in artifacts)
        page = client.request("POST", "/events/filter", json={
            "filter": {"any_resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}, "order": "ASC"}, "limit": 50,
        }).json()
        events = list(page["events"])
        while page.get("next_page"):
            page = httpx.get(page["next_page"], timeout=30).json()
            events += page["events"]
        texts["events"] = json.dumps(events, default=str)
    texts["_counts"] = f"logs={len(logs)} task_runs={len(task_runs)} artifacts={len(artifacts)} events={len(events)}"
    return texts


def _log_lines(flow_run_id) -> list[str]:
    """The messages of a flow run's log lines, as the server has them so far."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with prefect_client() as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def test_secrets_stay_out_of_a_flow_that_copies_and_one_that_fails(secret_world, tmp_path, caplog, prefect_server):
    """Copies local->s3, s3->ssh (the SSH key), github->local (the token) and their failures run inside Prefect
    flows whose parameters are the credential-bearing blocks; the server then holds no secret anywhere."""
    from prefect import flow
    from prefect.logging import get_run_logger
    from prefect.runtime import flow_run

    caplog.set_level(logging.DEBUG)
    w = secret_world
    out_dir = tmp_path / "out"
    errors: list[BaseException] = []  # what the failing flow caught

    @flow(name=f"rh-sec-good-{w['run'][:6]}")
    def good(src: Folder, s3_dst: Folder, ssh_dst: Folder, cluster: Cluster, gh: GitHubCredentials) -> str:
        log = get_run_logger()
        log.info("copying %r to %r and %r on %r", src, s3_dst, ssh_dst, cluster)  # reprs in the run's logs
        s3_dst.put(src)                                     # local -> s3, signed with the secret
        ssh_dst.put(s3_dst)                                 # s3 -> ssh, logged in with the key
        ssh_dst.to("file", str(out_dir / "from-ssh"))       # ssh -> local, tar stream over the key's session
        rh.folder(path="org/repo@main/data", system="github", credentials=gh).to("file", str(out_dir / "gh"))
        log.info("credentials: %s / %s", gh, s3_dst.credentials)
        return str(flow_run.id)

    @flow(name=f"rh-sec-bad-{w['run'][:6]}")
    def bad(src: Folder, creds: S3Credentials, stranger: Cluster, gh: GitHubCredentials) -> None:
        log = get_run_logger()
        attempts = [
            lambda: src.to(get_system("s3", credentials=creds), "/rh-no-such-bucket-sec/x"),   # NotFound
            lambda: src.to(stranger, "rh-test/never"),                                        # CredentialsError
            lambda: rh.folder(path="org/repo@no-such-ref", system="github", credentials=gh).ls(),  # NotFound
        ]
        for attempt in attempts:
            try:
                attempt()
            except rh.RhError as exc:
                log.exception("copy failed as expected")  # the traceback goes to the API logs
                errors.append(exc)
        raise errors[0]

    ssh_dst = rh.folder(name=w["ssh_folder"].name)
    good_id = good(rh.folder(path=str(w["src_dir"])), rh.folder(name=w["s3_folder"].name), ssh_dst,
                   rh.cluster(w["cluster"].name), GitHubCredentials.load(w["gh_name"]))
    # The copies really happened, with the secrets in use.
    assert {k: ssh_dst.get(k) for k in ssh_dst.ls(full_paths=False, recursive=True)} == w["files"]
    assert {p.name: p.read_bytes() for p in (out_dir / "from-ssh").iterdir()} == w["files"]
    assert (out_dir / "gh" / "c.txt").read_bytes() == b"gamma\n"

    bad_state = bad(rh.folder(path=str(w["src_dir"])), S3Credentials.load(w["creds_name"]), w["stranger"],
                    GitHubCredentials.load(w["gh_name"]), return_state=True)
    assert bad_state.is_failed()
    failures = errors
    assert [type(e).__name__ for e in failures] == ["NotFound", "CredentialsError", "NotFound"]
    assert "does not exist" in str(failures[0]) and "refused the login" in str(failures[1])
    bad_id = bad_state.state_details.flow_run_id

    texts: dict[str, str] = {}
    for label, run_id in (("good", good_id), ("bad", bad_id)):
        for where, text in _flow_run_texts(run_id).items():
            texts[f"{label} {where}"] = text
    # The checks above really saw the runs: parameters, logs (with the reprs and tracebacks) and task runs.
    assert "rh-copy-tree" in texts["good task runs"] and "copying Folder" in texts["good flow-run logs"]
    assert "copy failed as expected" in texts["bad flow-run logs"] and "Traceback" in texts["bad flow-run logs"]
    assert "AKIDRHSECURITYTEST" in texts["bad flow-run parameters"]  # the (non-secret) key id is there
    assert "does not exist" in texts["bad flow-run states"]
    texts["failures"] = "\n".join(chain_text(e) for e in failures)
    texts["bad state"] = repr(bad_state) + str(bad_state.message)
    objects = [w["creds"], w["gh"], w["cluster"], w["stranger"], w["s3_folder"], w["ssh_folder"], ssh_dst,
               rh.folder(name=w["s3_folder"].name), rh.cluster(w["cluster"].name), rh.folder(name=w["s3_folder"].name).sys,
               rh.cluster(w["cluster"].name).system(), S3Credentials.load(w["creds_name"])]
    texts["reprs"] = "\n".join(f"{o!r}\n{o}" for o in objects)
    texts["model dumps"] = "\n".join(json.dumps(o.model_dump(mode="json"), default=str) for o in objects
                                     if hasattr(o, "model_dump"))
    with prefect_client() as client:
        docs = [client.read_block_document_by_name(n, slug, include_secrets=False) for n, slug in (
            (w["creds_name"], "rh-s3-credentials"), (w["gh_name"], "rh-github-credentials"),
            (names.encode(rh.cluster(w["cluster"].name).full_name), "rh-cluster"),
            (names.encode(w["s3_folder"].full_name), "rh-folder"))]
    texts["registry (as the UI reads it)"] = "\n".join(json.dumps(d.data, default=str) for d in docs)
    texts["caplog"] = log_text(caplog)
    # Debug logging was really on: botocore printed the requests it signed, with the token's header name.
    assert "CanonicalRequest" in texts["caplog"] and "x-amz-security-token:" in texts["caplog"]
    texts["client PREFECT_HOME"] = _files_text(Path(os.environ["PREFECT_HOME"]))
    texts["server log"] = prefect_server.log_path.read_text(errors="replace") if prefect_server.log_path else ""
    _assert_no_secret(texts, w["secrets"])


_DEBUG_SCRIPT = textwrap.dedent('''
    import logging, sys
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)  # every library's debug lines, on stderr
    import rh_prefect as rh
    from prefect import flow
    from rh_prefect.systems import S3Credentials, get_system

    creds_name, src_dir, bucket, ssh_folder, stranger = sys.argv[1:6]
    s3 = get_system("s3", credentials=S3Credentials.load(creds_name))

    @flow(name="rh-sec-debug-script")
    def copy():
        print("s3:", rh.folder(path=src_dir).to(s3, f"/{bucket}/script").ls(full_paths=False))
        print("ssh:", rh.folder(name=ssh_folder).put(src_dir, overwrite=True).ls(full_paths=False))

    copy()
    try:
        rh.folder(path=src_dir).to(rh.cluster(stranger), "rh-test/never")
    except rh.CredentialsError:
        logging.getLogger("user-script").exception("expected refusal")
    rh.folder(path=src_dir).to(s3, "/rh-no-such-bucket-sec/x")  # uncaught: a traceback on stderr, exit 1
''')


def test_no_secret_on_stdout_or_stderr_of_a_script_at_debug_level(secret_world, prefect_server, tmp_path):
    """A user's script with DEBUG logging on for everything (Prefect's too), a copy in a flow, a refused login
    and an uncaught error: nothing it prints contains a secret."""
    w = secret_world
    env = dict(os.environ, PREFECT_LOGGING_LEVEL="DEBUG", PREFECT_HOME=str(tmp_path / "script-prefect-home"))
    done = subprocess.run(
        [sys.executable, "-c", _DEBUG_SCRIPT, w["creds_name"], str(w["src_dir"]), w["bucket"],
         w["ssh_folder"].name, w["stranger"].name],
        capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path,
    )
    output = done.stdout + "\n" + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "s3: ['f0.bin'," in done.stdout and "ssh: ['f0.bin'," in done.stdout  # the copies ran
    assert "rh_prefect.errors.NotFound: Bucket 'rh-no-such-bucket-sec' does not exist" in done.stderr
    assert "rh_prefect.errors.CredentialsError" in done.stderr and "expected refusal" in done.stderr
    assert "CanonicalRequest" in done.stderr and "x-amz-security-token:" in done.stderr  # debug really on
    assert "DEBUG" in done.stderr and "prefect" in done.stderr
    _assert_no_secret({"stdout/stderr": output, "script PREFECT_HOME": _files_text(tmp_path / "script-prefect-home")},
                      w["secrets"])


def test_secrets_stay_out_of_copies_dispatched_to_a_cluster_worker(secret_world, ssh_server, prefect_server,
                                                                    tmp_path, unique_name):
    """The dispatch path: data on a cluster with a worker; .to(s3, via="worker") runs a flow run of the transfer
    deployment there, blocks passed by $ref. A copy and a failing copy leave no secret in the runs' parameters,
    logs, states, task runs, artifacts, events, the worker's log or its PREFECT_HOME."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterWorkQueueName

    w = secret_world
    queue = f"rh-sec-{w['run'][:10]}"
    cluster = rh.cluster(name=unique_name("sec-worker"), host=ssh_server.host, port=ssh_server.port,
                         user=ssh_server.user, ssh_key=ssh_server.client_key_text,
                         known_hosts=str(ssh_server.known_hosts_path), work_queue=queue, prefect_bin=VENV_PREFECT,
                         python=sys.executable, project_dir=str(REPO), api_url=prefect_server.api_url).save()
    worker_home = tmp_path / "worker-home"
    info = None
    src = rh.folder(path=f"rh-test/sec-colo-{w['run'][:10]}", system=rh.cluster(cluster.name))
    try:
        info = cluster.start_worker(env={"PREFECT_HOME": str(worker_home), "PREFECT_WORKER_QUERY_SECONDS": "1",
                                         "PREFECT_WORKER_PREFETCH_SECONDS": "5"})
        src.put(w["files"])
        s3 = get_system("s3", credentials=S3Credentials.load(w["creds_name"]))
        with ThreadPoolExecutor(2) as pool:  # two flow runs on the worker at once: a copy and a failing copy
            good = pool.submit(src.to, s3, f"/{w['bucket']}/colo", via="worker")
            bad = pool.submit(src.to, s3, "/rh-no-such-bucket-sec/colo", via="worker")
            new = good.result()
            failure = bad.exception()
        assert new.flow_run.work_queue_name == queue
        assert {k: new.get(k) for k in new.ls(full_paths=False)} == w["files"]
        assert isinstance(failure, rh.NotFound), repr(failure)
        assert "Bucket 'rh-no-such-bucket-sec' does not exist" in str(failure)
        with prefect_client() as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                work_queue_name=FlowRunFilterWorkQueueName(any_=[queue])))
        assert sorted(r.state.type.value for r in runs) == ["COMPLETED", "FAILED"]
        # A run's state turns final before its process on the worker has shipped its last log lines (they go
        # out in batches and when that process exits), so wait for the copy's closing line before reading.
        done = next(r for r in runs if r.state.type.value == "COMPLETED")
        wait_for(lambda: any("copied " in line for line in _log_lines(done.id)), 60,
                 f"a log line with 'copied ' from flow run {done.id}", interval=0.5)
        texts: dict[str, str] = {}
        for run in runs:
            # Blocks travelled by reference only: no block field at all in the stored parameters.
            assert set(run.parameters["source"]) == {"$ref"} and set(run.parameters["credentials"]) == {"$ref"}
            for where, text in _flow_run_texts(run.id).items():
                texts[f"{run.state.type.value} {where}"] = text
        assert "copied " in texts["COMPLETED flow-run logs"] and "rh-copy-tree" in texts["COMPLETED task runs"]
        assert "does not exist" in texts["FAILED flow-run states"]
        texts["caller exception"] = chain_text(failure)
        texts["new resource"] = repr(new) + str(new) + json.dumps(new.model_dump(mode="json"), default=str)
    finally:
        if info is not None:
            cluster.stop_worker()
            worker_log = Path(info.log_path).read_text(errors="replace")
            Path(info.log_path).unlink(missing_ok=True)
        src.rm()
        rh.delete(cluster.name)
    texts["worker log"] = worker_log
    # The worker's log holds both runs' output, the failure's traceback included. (A run may be announced twice: the
    # worker is woken by the run's event and may find it in a poll at the same moment; one of the two claims it.)
    assert all(f"submitting flow run '{run.id}'" in texts["worker log"] for run in runs), texts["worker log"]
    assert "Encountered exception" in texts["worker log"]
    texts["worker PREFECT_HOME"] = _files_text(worker_home)
    _assert_no_secret(texts, w["secrets"])


# =========================================================================== 2. SSH host keys


class _SSHServerOnPort(infra.SSHServer):
    """An sshd on a given port: the same host:port coming back with a new host key (a reinstalled host)."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self._wanted_port = port

    def _pick_port(self) -> int:
        return self._wanted_port


@pytest.mark.servers  # an sshd of its own, and a cluster saved in the registry
def test_a_changed_host_key_is_refused_for_every_operation(tmp_path, unique_name):
    """A cluster saved while its host had one key; the host is reinstalled (same address, new key): every
    operation of the saved cluster, including those over a previously pooled connection, is refused."""
    first = infra.SSHServer().start()
    try:
        known = tmp_path / "known_hosts"
        known.write_text(first.known_hosts_path.read_text())
        name = unique_name("reinstalled")
        rh.cluster(name=name, host=first.host, port=first.port, user=first.user, ssh_key=first.client_key_text,
                   known_hosts=str(known), work_queue=f"rh-hk-{uuid.uuid4().hex[:8]}").save()
        base = f"rh-test/{unique_name('hk')}"
        rh.folder(path=base, system=rh.cluster(name)).put({"before.txt": b"trusted"})  # connection pooled
        port = first.port
    finally:
        first.stop()
    second = _SSHServerOnPort(port).start()
    try:
        assert second.host_public_key != first.host_public_key
        c = rh.cluster(name)
        local = tmp_path / "local"
        local.mkdir()
        for i in range(10):  # enough files for the tar stream path
            (local / f"f{i}.txt").write_bytes(b"x" * i)
        remote = rh.folder(path=base, system=c)
        attempts = {
            "up_if_not": c.up_if_not,
            "ls": remote.ls,
            "get": lambda: remote.get("before.txt"),
            "put": lambda: remote.put({"after.txt": b"never"}),
            "mkdir": lambda: rh.folder(path=f"{base}-new", system=c).mkdir(),
            "copy local->ssh (tar stream)": lambda: rh.folder(path=str(local)).to(c, f"{base}-copy"),
            "copy ssh->local": lambda: remote.to("file", str(tmp_path / "back")),
            "blob write": lambda: rh.blob(b"never", path=f"{base}/b.bin", system=c),
            "start_worker": lambda: c.start_worker(wait=False),
        }
        for what, call in attempts.items():
            with pytest.raises(rh.HostKeyMismatch) as info:
                call()
            message = str(info.value)
            assert f"{second.host}:{port}" in message, what
            assert "is not the trusted one" in message, what
            assert "verify its new key and update known_hosts/host_key; otherwise do not connect" in message, what
        # Nothing reached the new host (both "hosts" share this machine's disk), nothing came back.
        assert sorted(p.name for p in (second.home / base).iterdir()) == ["before.txt"]
        assert not (second.home / f"{base}-copy").exists()
        assert not (second.home / f"{base}-new").exists() and not (tmp_path / "back").exists()
        # Once the user verified and recorded the new key, the same saved cluster works again.
        known.write_text(second.known_hosts_path.read_text())
        c2 = rh.cluster(name=unique_name("reinstalled-ok"), host=second.host, port=port, user=second.user,
                        ssh_key=second.client_key_text, known_hosts=str(known))
        assert rh.folder(path=f"{base}-ok", system=c2).put({"ok.txt": b"ok"}).get("ok.txt") == b"ok"
        rh.folder(path=f"{base}-ok", system=c2).rm()
    finally:
        second.stop()
        rh.delete(name)
        shutil.rmtree(Path(first.home) / base, ignore_errors=True)


def test_a_pooled_connection_is_not_reused_by_a_cluster_trusting_another_key(ssh_server, tmp_path, unique_name):
    """A connection opened with the right known_hosts is pooled; a Cluster for the same host, user and key that
    trusts a different host key must not borrow it."""
    right = rh.cluster(host=ssh_server.host, port=ssh_server.port, user=ssh_server.user,
                       ssh_key=str(ssh_server.client_key_path), known_hosts=str(ssh_server.known_hosts_path))
    base = f"rh-test/{unique_name('pool')}"
    rh.folder(path=base, system=right).put({"a.txt": b"a"})
    _new_private_key(tmp_path, "other_host")
    other_pub = " ".join((tmp_path / "other_host.pub").read_text().split()[:2])
    wrong_known = tmp_path / "wrong_known_hosts"
    wrong_known.write_text(f"[{ssh_server.host}]:{ssh_server.port} {other_pub}\n")
    for trust in ({"known_hosts": str(wrong_known)}, {"host_key": other_pub}):
        wrong = rh.cluster(host=ssh_server.host, port=ssh_server.port, user=ssh_server.user,
                           ssh_key=str(ssh_server.client_key_path), **trust)
        with pytest.raises(rh.HostKeyMismatch, match="is not the trusted one"):
            rh.folder(path=base, system=wrong).ls()
    assert rh.folder(path=base, system=right).get("a.txt") == b"a"  # the right one still works
    rh.folder(path=base, system=right).rm()


def test_host_keys_are_verified_by_default_against_the_users_known_hosts(ssh_server, tmp_path, monkeypatch):
    """No known_hosts argument: ~/.ssh/known_hosts is used; missing, or without this host, the host is refused
    (never trusted on first use); with the host's line it works."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    c = rh.cluster(host=ssh_server.host, port=ssh_server.port, user=ssh_server.user,
                   ssh_key=str(ssh_server.client_key_path))
    assert c.verify_host_key is True and c.known_hosts is None and c.host_key is None
    base = f"rh-test/default-verify-{uuid.uuid4().hex[:8]}"
    with pytest.raises(rh.HostKeyMismatch) as info:
        rh.folder(path=base, system=c).put({"a.txt": b"a"})
    assert f"No known_hosts file at {home}/.ssh/known_hosts" in str(info.value)
    assert f"ssh-keyscan -p {ssh_server.port} {ssh_server.host} >> {home}/.ssh/known_hosts" in str(info.value)
    (home / ".ssh").mkdir()
    (home / ".ssh" / "known_hosts").write_text("[10.255.0.1]:22 " + ssh_server.host_public_key + "\n")  # another host
    with pytest.raises(rh.HostKeyMismatch, match="is not the trusted one"):
        rh.folder(path=base, system=c).put({"a.txt": b"a"})
    assert not (ssh_server.home / base).exists()  # refused before anything was written
    (home / ".ssh" / "known_hosts").write_text(ssh_server.known_hosts_path.read_text())
    f = rh.folder(path=base, system=c).put({"a.txt": b"a"})
    assert (ssh_server.home / base / "a.txt").read_bytes() == b"a"
    f.rm()
    c.system().reset()  # do not leave a pooled connection whose trust came from this test's HOME


# =========================================================================== 3. shell injection


def _odd_names(canary: str) -> list[str]:
    """File and directory names that break naive shell quoting. Each injected command would create
    ``$HOME/<canary>`` (``cd`` first: a name cannot contain '/'); the tar options would create it in tar's
    working directory."""
    return [
        "with space", "single'quote", 'double"quote', "semi;colon", "amp&pipe|gt>lt<", "back\\slash",
        "glob*?[x]", "dollar$HOME${IFS}", "tab\tname", "-dash-leading", "unicode-é-ß",
        f"$(cd;touch {canary})", f"`cd;touch {canary}`", f";cd;touch {canary};", f"'$(cd;touch {canary})'",
        f'"; cd; touch {canary}; echo "', "--checkpoint=1", f"--checkpoint-action=exec=touch {canary}",
        f"new\nline\n$(cd;touch {canary})",
    ]


def _assert_no_canary(canary: str, *roots: Path) -> None:
    assert not (Path.home() / canary).exists(), "a shell command injected through a file name ran"
    assert not (Path.cwd() / canary).exists()
    for root in roots:
        if root.exists():
            hits = [p for p in root.rglob("*") if p.name == canary]
            assert hits == [], f"a shell command injected through a file name ran: {hits}"


def test_odd_names_go_through_every_remote_command_unharmed(ssh_server, rh_cluster, tmp_path, monkeypatch):
    from rh_prefect.systems.ssh import SSHSystem

    canary = f"pwned-{uuid.uuid4().hex[:10]}"
    odd = _odd_names(canary)
    home = ssh_server.home
    run = f"rh-test/inject-{uuid.uuid4().hex[:8]}"
    # The folder roots themselves are odd too: they reach `cd`, the tar staging directory and `mv -t`.
    root_name = f"root 'q' \"d\" ;x $(cd;touch {canary}) `cd;touch {canary}`"
    files: dict[str, bytes] = {}
    for i, name in enumerate(odd):
        files[name] = f"top {i} {name}".encode()
        files[f"{name}.d/{name}"] = os.urandom(100 + i)  # the odd name as a directory too
    files[f"{odd[11]}.d/big {odd[13]}.bin"] = os.urandom(4 * 2**20 + 7)  # above the tar-stream size: own SFTP copy
    local = tmp_path / root_name / "src"
    for key, data in files.items():
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(data)
    bulk = {"up": 0, "down": 0}
    real_up, real_down = SSHSystem.bulk_upload, SSHSystem.bulk_download
    monkeypatch.setattr(SSHSystem, "bulk_upload",  # observe (not replace) which path the engine takes
                        lambda self, *a: (bulk.__setitem__("up", bulk["up"] + 1), real_up(self, *a))[1])
    monkeypatch.setattr(SSHSystem, "bulk_download",
                        lambda self, *a: (bulk.__setitem__("down", bulk["down"] + 1), real_down(self, *a))[1])

    def on_server(path: str) -> dict[str, bytes]:
        return read_tree(home / path)

    try:
        # SFTP: mkdir, put (a dict: one atomic write per key), ls, get, open.
        a = rh.folder(path=f"{run}/{root_name}/a", system=rh_cluster).mkdir()
        assert (home / run / root_name / "a").is_dir()
        # (put() and the other key-taking calls refuse a newline, by design; copies of existing files keep it as a
        # character. A backslash is a character everywhere.)
        small = {k: v for k, v in files.items() if len(v) < 2**20 and "\n" not in k}
        a.put(small)
        assert on_server(f"{run}/{root_name}/a") == small
        assert a.ls(full_paths=False) == sorted({k.split("/")[0] for k in small})
        assert a.ls(full_paths=False, recursive=True) == sorted(small)
        for key in (odd[11], f"{odd[12]}.d/{odd[12]}", odd[16], odd[5], f"{odd[5]}.d/{odd[5]}"):
            assert a.get(key) == files[key]
            with a.open(key) as fh:
                assert fh.read() == files[key]

        # local -> ssh: tar stream over an exec channel for the small files, SFTP for the big one.
        b = rh.folder(path=str(local)).to(rh_cluster, f"{run}/{root_name}/b")
        assert bulk["up"] >= 1
        assert on_server(f"{run}/{root_name}/b") == files
        # ssh -> local: tar stream the other way (names sent NUL-separated to `tar -T -`), SFTP for the big one.
        back = tmp_path / root_name / "back"
        b.to("file", str(back))
        assert bulk["down"] >= 1
        assert read_tree(back) == files
        # Fewer files than a tar stream is worth: one SFTP transfer per file, both ways.
        few = {k: files[k] for k in (odd[11], odd[12], odd[17], f"{odd[13]}.d/{odd[13]}", odd[18], odd[5])}
        few_src = tmp_path / root_name / "few-src"
        for key, data in few.items():
            (few_src / key).parent.mkdir(parents=True, exist_ok=True)
            (few_src / key).write_bytes(data)
        before = dict(bulk)
        c = rh.folder(path=str(few_src)).to(rh_cluster, f"{run}/{root_name}/c")
        assert on_server(f"{run}/{root_name}/c") == few
        c.to("file", str(tmp_path / root_name / "few"))
        assert bulk == before  # no tar stream: one SFTP put/get per file
        assert read_tree(tmp_path / root_name / "few") == few
        # rm of odd names over SFTP.
        removed = [k for k in few if "\n" not in k]
        b.rm(removed)
        assert on_server(f"{run}/{root_name}/b") == {k: v for k, v in files.items() if k not in removed}
        # ssh -> ssh on the same host: server-side `cp` in a remote shell.
        d = c.to(rh_cluster, f"{run}/{root_name}/d")
        assert on_server(f"{run}/{root_name}/d") == few
        # mv (copy + rm of the source) and a Blob at an odd path, fetched and copied home.
        e = d.mv(rh_cluster, f"{run}/{root_name}/e $(cd;touch {canary})")
        assert on_server(f"{run}/{root_name}/e $(cd;touch {canary})") == few
        assert not (home / run / root_name / "d").exists() and e.path.endswith(f"e $(cd;touch {canary})")
        blob = rh.blob({"x": odd}, path=f"{run}/{root_name}/blob {odd[13]}.pkl", system=rh_cluster)
        assert rh.blob(path=blob.path, system=rh_cluster).fetch() == {"x": odd}
        assert blob.to("file", str(tmp_path / root_name / f"blob {odd[12]}.pkl")).fetch() == {"x": odd}
        a.rm()
        assert not (home / run / root_name / "a").exists()
    finally:
        shutil.rmtree(home / run, ignore_errors=True)
    _assert_no_canary(canary, tmp_path, home / "rh-test")


def test_worker_start_quotes_the_queue_name_and_refuses_odd_env_names(ssh_server, tmp_path, unique_name):
    """start_worker builds a shell script for the cluster: an odd work queue name reaches the worker's argv and
    its log verbatim, and runs nothing; an environment variable name that is not a shell name is refused
    before anything is created."""
    canary = f"pwned-{uuid.uuid4().hex[:10]}"
    queue = f"rh-q {uuid.uuid4().hex[:6]} $(cd;touch {canary}) `cd;touch {canary}` ;'\"x"
    argv_file = tmp_path / "argv"
    fake_prefect = tmp_path / "fake prefect $(x)"  # records its arguments, then idles like a worker would
    fake_prefect.write_text(f"#!/bin/sh\nprintf '%s' \"$RH_ODD_VALUE\" > '{argv_file}.env'\n"
                            f"printf '%s\\0' \"$@\" > '{argv_file}'\nexec sleep 60\n")
    fake_prefect.chmod(0o755)
    c = rh.cluster(host=ssh_server.host, port=ssh_server.port, user=ssh_server.user,
                   ssh_key=str(ssh_server.client_key_path), known_hosts=str(ssh_server.known_hosts_path),
                   work_queue=queue, prefect_bin=str(fake_prefect), project_dir=str(tmp_path / "proj 'dir' $(x)"))
    (tmp_path / "proj 'dir' $(x)").mkdir()
    odd_value = f"v $(cd;touch {canary}) `x` ';\"\\n"
    info = c.start_worker(wait=False, env={"RH_ODD_VALUE": odd_value})
    try:
        assert info.started and info.queue == queue
        wait_for(argv_file.exists, 10, "the fake prefect to record its arguments", interval=0.05)
        argv = argv_file.read_bytes().split(b"\0")[:-1]
        assert [a.decode() for a in argv] == ["worker", "start", "--pool", "rh-pool", "--work-queue", queue,
                                              "--name", f"rh-{queue}", "--type", "rh-inprocess"]
        assert f"starting worker for queue {queue}\n" in Path(info.log_path).read_text()
        assert Path(f"{argv_file}.env").read_text() == odd_value  # the exported environment, verbatim
    finally:
        assert c.stop_worker() is True
        Path(info.log_path).unlink(missing_ok=True)
    _assert_no_canary(canary, tmp_path)

    bad_queue = f"rh-q-{uuid.uuid4().hex[:8]}"
    c2 = rh.cluster(host=ssh_server.host, port=ssh_server.port, user=ssh_server.user,
                    ssh_key=str(ssh_server.client_key_path), known_hosts=str(ssh_server.known_hosts_path),
                    work_queue=bad_queue, prefect_bin=str(fake_prefect))
    with pytest.raises(InvalidArgument, match="not valid shell names"):
        c2.start_worker(wait=False, env={f"A=1;cd;touch {canary};B": "v"})
    from prefect.exceptions import ObjectNotFound

    with prefect_client() as client, pytest.raises(ObjectNotFound):
        client.read_work_queue_by_name(bad_queue, work_pool_name="rh-pool")  # nothing was created
    _assert_no_canary(canary, tmp_path)


def test_a_git_ref_cannot_smuggle_options_into_git(git_server, tmp_path, monkeypatch):
    """A GitHub path's ref is handed to git as an argument: one that looks like an option (--upload-pack runs a
    command for local repositories) is just a ref that does not exist."""
    monkeypatch.setenv("RH_PREFECT_CACHE", str(tmp_path / "cache"))
    canary = f"pwned-{uuid.uuid4().hex[:10]}"
    creds = rh.GitHubCredentials(base_url=f"file://{git_server.base}")  # a local repository: upload-pack is run
    assert rh.folder(path="org/repo@main/data", system="github", credentials=creds).get("c.txt") == b"gamma\n"
    for ref in (f"--upload-pack=cd;touch {canary};git-upload-pack", f"-u cd;touch {canary};git-upload-pack"):
        with pytest.raises(rh.NotFound, match="does not exist"):
            rh.folder(path=f"org/repo@{ref}", system="github", credentials=creds).ls()
    _assert_no_canary(canary, tmp_path, Path(git_server.base))


# =========================================================================== 4. umask

_UMASK_SCRIPT = textwrap.dedent('''
    import json, os, stat, sys
    os.umask(int(sys.argv[1], 8))
    cfg = json.loads(sys.argv[2])
    import pyarrow as pa
    import rh_prefect as rh

    root = cfg["root"]
    f = rh.folder(path=f"{root}/put").put({"a.txt": b"a", "sub/dir/b.txt": b"b"})
    with f.open("sub/w.txt", "w") as fh:
        fh.write("written through open()")
    f.to("file", f"{root}/local-copy")
    cluster = rh.cluster(**cfg["cluster"])
    rh.folder(path=cfg["ssh_many"], system=cluster).to("file", f"{root}/from-ssh-stream")  # tar stream + SFTP
    rh.folder(path=cfg["ssh_few"], system=cluster).to("file", f"{root}/from-ssh-sftp")
    rh.folder(path=cfg["s3"], system="s3").to("file", f"{root}/from-s3")
    gh = rh.GitHubCredentials(base_url=cfg["git"])
    rh.folder(path="org/repo@main", system="github", credentials=gh).to("file", f"{root}/from-github")
    b = rh.blob({"k": 1}, path=f"{root}/blob/b.pkl", system="file")
    b.download(f"{root}/download/b.pkl")
    rh.blob(path=cfg["ssh_few"] + "/x0.bin", system=cluster).download(f"{root}/download/x0.bin")
    t = rh.table(data=pa.table({"id": [1, 2, 3]}), path=f"{root}/table", system="file")
    t.write(pa.table({"id": [4]}), mode="append")
    t.write(pa.table({"id": [5, 6]}), mode="overwrite")
    modes = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            modes[os.path.relpath(path, root)] = ["d" if stat.S_ISDIR(st.st_mode) else "f", stat.S_IMODE(st.st_mode)]
    print(json.dumps(modes))
''')


def test_local_writes_follow_the_umask_and_are_never_world_writable(ssh_server, s3_server, s3_bucket, s3_env,
                                                                    git_server, tmp_path):
    run = uuid.uuid4().hex[:8]
    cluster = {"host": ssh_server.host, "port": ssh_server.port, "user": ssh_server.user,
               "ssh_key": str(ssh_server.client_key_path), "known_hosts": str(ssh_server.known_hosts_path)}
    c = rh.cluster(**cluster)
    many = rh.folder(path=f"rh-test/umask-{run}/many", system=c)
    many.put({f"d{i % 3}/f{i}.txt": f"{i}".encode() for i in range(12)})
    many.put({"big.bin": os.urandom(4 * 2**20 + 1)})
    few = rh.folder(path=f"rh-test/umask-{run}/few", system=c).put({"x0.bin": b"x", "sub/x1.bin": b"y"})
    rh.folder(path=f"/{s3_bucket}/umask", system="s3").put({"s.txt": b"s", "deep/er/t.txt": b"t"})
    procs = {}
    try:
        for umask in ("027", "022"):
            root = tmp_path / f"umask-{umask}"
            cfg = {"root": str(root), "cluster": cluster, "ssh_many": many.path, "ssh_few": few.path,
                   "s3": f"/{s3_bucket}/umask", "git": git_server.base_url}
            env = dict(os.environ, RH_PREFECT_CACHE=str(root / "cache"),  # the GitHub checkout cache too
                       PREFECT_HOME=str(tmp_path / f"prefect-home-{umask}"))
            procs[umask] = subprocess.Popen([sys.executable, "-c", _UMASK_SCRIPT, umask, json.dumps(cfg)],
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                            cwd=tmp_path)
        results = {umask: p.communicate(timeout=240) for umask, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        rh.folder(path=f"rh-test/umask-{run}", system=c).rm()
    for umask, (out, err) in results.items():
        assert procs[umask].returncode == 0, err[-3000:]
        modes = json.loads(out.strip().splitlines()[-1])
        mask = int(umask, 8)
        # Everything the test wrote is there (the walk saw the real files), then every mode is the umask's.
        for expected in ("put/sub/w.txt", "local-copy/sub/dir/b.txt", "from-ssh-stream/d2/f11.txt",
                         "from-ssh-stream/big.bin", "from-ssh-sftp/sub/x1.bin", "from-s3/deep/er/t.txt",
                         "from-github/data/c.txt", "blob/b.pkl", "download/b.pkl", "download/x0.bin"):
            assert modes.get(expected, [None])[0] == "f", (umask, expected)
        assert any(path.startswith("table/") and path.endswith(".parquet") for path in modes), modes
        assert any(path.startswith("cache/github/") for path in modes), modes
        wrong = {path: (kind, oct(mode)) for path, (kind, mode) in modes.items()
                 if mode != (0o777 if kind == "d" else 0o666) & ~mask}
        assert wrong == {}, f"umask {umask}: modes that do not follow it: {wrong}"
        assert not any(mode & stat.S_IWOTH for _, mode in modes.values())
