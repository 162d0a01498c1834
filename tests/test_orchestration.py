"""Orchestration: the retry policy, quiet calls outside flows, task runs inside flows, routing (via=...), workers
on clusters, and the proving test - a copy of cluster data that runs on the cluster's own worker.

The colocated tests use a cluster with its own network namespace (own address, own sshd, the worker started
with ``Cluster.start_worker()`` inside it); S3 (moto) listens on the host side of the veth pair and the suite's
Prefect server is reached through a TCP relay on that address. Without network namespaces the same tests run on
loopback against the suite's sshd and S3, and say so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import asyncssh
import pytest
from botocore.exceptions import ClientError
from fsspec.implementations.local import LocalFileSystem
from gcsfs.retry import HttpError

import rh_prefect as rh
from rh_prefect import settings, transfer
from rh_prefect.runtime import dispatch, tasks, worker
from rh_prefect.errors import NotFound, SystemUnavailable, TransferError, UnknownSystem
from rh_prefect.systems import LocalSystem, S3Credentials, get_system

from helpers import prefect_client, wait_for, write_tree
from infra import MotoS3Server
from netns import NetnsLab, NetnsSSHServer, NetnsUnavailable, TcpRelay

REPO = Path(__file__).resolve().parents[1]
VENV_PREFECT = str(Path(sys.executable).parent / "prefect")


def _anonymous_docs() -> set[str]:
    with prefect_client() as c:
        docs = c.request("POST", "/block_documents/filter",
                         json={"block_documents": {"is_anonymous": {"eq_": True}}, "include_secrets": False}).json()
    return {d["id"] for d in docs}


# =========================================================================== 1. the one retry policy


class _FlakyFS(LocalFileSystem):
    """Local disk whose uploads of chosen files fail first, the way a dropped connection or a refusal does."""

    cachable = False

    def __init__(self, faults: dict[str, list[BaseException]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.faults = faults

    def put_file(self, lpath, rpath, *args, **kwargs):  # type: ignore[override]
        pending = self.faults.get(os.path.basename(lpath))
        if pending:
            raise pending.pop(0)
        return super().put_file(lpath, rpath, *args, **kwargs)


class _FlakyLocal(LocalSystem):
    """A local destination with injected faults (no ``name``: never registered as a system)."""

    def __init__(self, faults: dict[str, list[BaseException]]) -> None:
        self.faults = faults

    def _make_fs(self):
        return _FlakyFS(self.faults)


def _make_tree(root: Path, n: int = 5, size: int = 20_000) -> dict[str, bytes]:
    files = {f"{chr(ord('a') + i)}.bin": os.urandom(size) for i in range(n)}
    write_tree(root, files)
    return files


def _task_run(state) -> Any:
    task_run_id = state.state_details.task_run_id
    with prefect_client() as c:
        return c.read_task_run(task_run_id)


@pytest.mark.servers  # uses the Prefect API without a server fixture
def test_transient_failure_retries_and_resumes_without_recopying(tmp_path):
    files = _make_tree(tmp_path / "src")
    faults = {"c.bin": [ConnectionResetError(104, "Connection reset by peer")]}
    before = transfer.moved_here()

    state = tasks.run(tasks.copy_tree_task, LocalSystem(), str(tmp_path / "src"), _FlakyLocal(faults),
                      str(tmp_path / "dst"), return_state=True)

    report = state.result()
    assert {p.name: p.read_bytes() for p in (tmp_path / "dst").iterdir()} == files
    # Attempt 1 committed 4 files and lost c.bin; attempt 2 skipped the 4 and copied only c.bin.
    assert (report.files_copied, report.files_skipped) == (1, 4)
    assert transfer.moved_here() - before == transfer.Moved(bytes_copied=5 * 20_000, files_copied=5)
    run = wait_for(lambda: (r := _task_run(state)).run_count == 2 and r, timeout=10)
    assert run and run.run_count == 2 and run.state.is_completed()


@pytest.mark.servers  # uses the Prefect API without a server fixture
def test_user_error_is_not_retried(tmp_path):
    _make_tree(tmp_path / "src")
    faults = {"c.bin": [PermissionError(13, "Permission denied") for _ in range(5)]}

    with pytest.raises(TransferError, match=r"1 of 5 files failed .*c\.bin: PermissionError"):
        tasks.run(tasks.copy_tree_task, LocalSystem(), str(tmp_path / "src"), _FlakyLocal(faults),
                  str(tmp_path / "dst"))

    assert len(faults["c.bin"]) == 4  # exactly one attempt
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["a.bin", "b.bin", "d.bin", "e.bin"]


@pytest.mark.servers  # runs tasks against the Prefect API
def test_retries_follow_the_settings_in_force(tmp_path):
    """The retry count is the ``retries`` setting when the copy runs, not when the package was imported."""
    _make_tree(tmp_path / "src")
    faults = {"c.bin": [ConnectionResetError(104, "Connection reset by peer") for _ in range(5)]}

    with settings.override(retries=1), pytest.raises(TransferError, match=r"c\.bin: ConnectionResetError"):
        tasks.run(tasks.copy_tree_task, LocalSystem(), str(tmp_path / "src"), _FlakyLocal(faults),
                  str(tmp_path / "dst"))

    assert len(faults["c.bin"]) == 3  # two attempts: the first one and one retry


@pytest.mark.parametrize(
    "exc, transient",
    [
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (TimeoutError("read timed out"), True),
        # judged by type and status code, never by the words of a message
        (ClientError({"Error": {"Code": "ServiceUnavailable"}, "ResponseMetadata": {"HTTPStatusCode": 503}},
                     "GetObject"), True),
        (ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject"), True),
        (RuntimeError("SlowDown: please reduce your request rate"), False),
        (SystemUnavailable("host down"), True),
        (asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "open failed"), True),  # sshd out of sessions
        (FileNotFoundError(2, "No such file"), False),
        # a local path's error is judged by its errno, whatever digits the path holds (a CI run's tmp dir was
        # /tmp/pytest-of-root/pytest-503/... and this was retried as a "503")
        (OSError(36, "File name too long", "/tmp/pytest-503/d0/.n.rh-tmp-5004ab"), False),
        (RuntimeError("upload of /data/run-500.bin failed: checksum mismatch"), False),
        (HttpError({"code": 502, "message": "Bad Gateway"}), True),
        (RuntimeError("HTTP 502 Bad Gateway"), False),
        (PermissionError(13, "Permission denied"), False),
        (NotFound("no folder"), False),
        (rh.InvalidName("bad name"), False),
        (TransferError("x", {"a": ConnectionResetError(), "b": PermissionError()}), False),
        (TransferError("x", {"a": ConnectionResetError(), "b": TimeoutError()}), True),
    ],
)
def test_retry_policy_classifies_errors(exc, transient):
    assert tasks.is_transient(exc) is transient


def test_retry_policy_has_backoff_jitter_and_timeout():
    for t in (tasks.copy_tree_task, tasks.copy_file_task):
        assert t.retries >= 3 and t.retry_jitter_factor > 0 and t.timeout_seconds
        delays = list(t.retry_delay_seconds)
        assert delays == sorted(delays) and delays[-1] > delays[0]  # exponential backoff


# =========================================================================== 2. quiet outside flows, tracked inside


def test_plain_python_copy_prints_no_warnings(tmp_path, prefect_server):
    """A user script (no flow, default Prefect logging settings) shows no warning noise on stderr."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.txt").write_text("hello")
    script = textwrap.dedent(f"""
        import rh_prefect as rh
        f = rh.folder(path={str(src)!r})
        g = f.to("file", {str(tmp_path / "dst")!r})
        print("copied", g.ls(full_paths=False))
    """)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": prefect_server.api_url,
    }
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "copied ['x.txt']" in done.stdout
    noisy = [line for line in done.stderr.splitlines() if "WARNING" in line or "Warning:" in line]
    assert noisy == [], done.stderr


@pytest.mark.servers  # uses the Prefect API without a server fixture
def test_copy_inside_a_flow_shows_task_runs(tmp_path):
    from prefect import flow
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a" * 1000)

    @flow(name=f"rh-test-inside-{uuid.uuid4().hex[:6]}")
    def pipeline() -> str:
        from prefect.runtime import flow_run

        rh.folder(path=str(src)).to("file", str(tmp_path / "dst"))
        return flow_run.id

    flow_run_id = pipeline()

    def task_names():
        with prefect_client() as c:
            runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return sorted(r.name.rsplit("-", 1)[0] for r in runs if r.state and r.state.is_completed())

    assert wait_for(lambda: "rh-copy-tree" in task_names()), task_names()
    assert (tmp_path / "dst" / "a.txt").read_bytes() == b"a" * 1000


# =========================================================================== the example pipeline (flows/)


def test_bert_pipeline_tokenizes_on_the_cluster_streams_here_and_ships_the_checkpoint(rh_cluster, s3_env, s3_bucket):
    import hashlib

    from flows.bert_pipeline import fine_tune, preprocess, tokenized_frame

    run = uuid.uuid4().hex[:8]
    name = f"@/bert_preproc_{run}"
    summary = preprocess(cluster=rh_cluster, name=name, path=f"rh-test/{run}/bert_preproc")
    expected, vocab = tokenized_frame()
    assert summary["rows"] == len(expected) and summary["url"].startswith(f"ssh://{rh_cluster.user}@")

    table = rh.table(name=name)  # the laptop side: load by name, stream from the cluster
    assert table.system == "ssh" and table.metadata["vocab_size"] == len(vocab)
    rows = [r for batch in table.stream(batch_size=5, batch_format="dict")
            for r in zip(batch["text"], batch["input_ids"], batch["attention_mask"])]
    assert rows == list(zip(expected["text"], expected["input_ids"], expected["attention_mask"]))

    out = fine_tune(cluster=rh_cluster, table_name=name, ckpt_name=f"bert-ft-{run}",
                    ckpt_path=f"rh-test/{run}/ckpt.pkl", s3_path=f"/{s3_bucket}/models/bert-ft.pkl", epochs=20)
    assert out["accuracy"] >= 0.9 and out["s3"] == f"s3://{s3_bucket}/models/bert-ft.pkl"
    ckpt = rh.blob(name=f"bert-ft-{run}")
    assert ckpt.system == "ssh" and ckpt.fetch()["vocab_size"] == len(vocab)
    s3_bytes = get_system("s3").fs.cat_file(f"{s3_bucket}/models/bert-ft.pkl")
    assert hashlib.sha256(s3_bytes).hexdigest() == ckpt.sha256
    table.rm()
    ckpt.rm()


# =========================================================================== deployments/prefect.yaml


def test_prefect_yaml_registers_the_deployments_on_rh_pool(prefect_server, tmp_path):
    """The documented command registers every deployment on the process pool, one queue per cluster, with
    block-typed parameters (what makes the UI's Run form offer block pickers)."""
    worker.ensure_queue("default", "rh-pool")  # `prefect work-pool create rh-pool --type process`, from Python
    env = dict(os.environ, PREFECT_API_URL=prefect_server.api_url, PREFECT_HOME=str(tmp_path),
               RH_PREFECT_PROJECT_DIR=str(REPO))
    command = [VENV_PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"]
    done = subprocess.run(command,
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with prefect_client() as c:
        found = {f"{c.read_flow(d.flow_id).name}/{d.name}": d for d in c.read_deployments()}
    expected = {
        "rh-copy-folder/rh-transfer": ("default", "rh_prefect.flows.transfer:copy_folder", "rh-folder"),
        "rh-copy-blob/rh-transfer": ("default", "rh_prefect.flows.transfer:copy_blob", "rh-blob"),
        "rh-copy-table/rh-transfer": ("default", "rh_prefect.flows.transfer_table:copy_table", "rh-table"),
        "rh-copy-folder/rh-gpu": ("rh-gpu", "rh_prefect.flows.transfer:copy_folder", "rh-folder"),
        "rh-bert-preprocess/rh-gpu": ("rh-gpu", "flows/bert_pipeline.py:preprocess", "rh-cluster"),
        "rh-bert-fine-tune/rh-gpu": ("rh-gpu", "flows/bert_pipeline.py:fine_tune", "rh-cluster"),
    }
    for name, (queue, entrypoint, block_slug) in expected.items():
        d = found[name]
        assert (d.work_pool_name, d.work_queue_name, d.entrypoint) == ("rh-pool", queue, entrypoint), name
        assert d.job_variables == {"working_dir": str(REPO)} and d.enforce_parameter_schema is False
        schema = d.parameter_openapi_schema
        first = next(iter(schema["properties"].values()))
        block = schema["definitions"][first["$ref"].rsplit("/", 1)[1]]
        assert block["block_type_slug"] == block_slug, name  # rendered as a block picker in the Run form


# =========================================================================== 3. routing without a worker


def test_via_must_be_known(tmp_path):
    f = rh.folder(path=str(tmp_path))
    with pytest.raises(UnknownSystem, match="via='elsewhere' is not one of auto, worker, local"):
        f.to("file", str(tmp_path / "x"), via="elsewhere")


def test_via_worker_needs_data_on_a_cluster_with_a_queue(tmp_path):
    (tmp_path / "src").mkdir()
    f = rh.folder(path=str(tmp_path / "src"))
    with pytest.raises(SystemUnavailable, match="not on a cluster with a work_queue"):
        f.to("file", str(tmp_path / "dst"), via="worker")
    assert not (tmp_path / "dst").exists()


@pytest.fixture
def unserved_cluster_folder(rh_cluster):
    rh_cluster.work_queue = f"rh-nobody-{uuid.uuid4().hex[:8]}"
    f = rh.folder(path=f"rh-test/unserved-{uuid.uuid4().hex[:8]}", system=rh_cluster)
    f.put({"a.bin": b"1" * 3000, "b/c.bin": b"2" * 5000})
    yield f
    f.rm()


def test_via_worker_without_a_worker_says_how_to_start_one(unserved_cluster_folder, tmp_path):
    queue = unserved_cluster_folder.cluster.work_queue
    with pytest.raises(SystemUnavailable) as err:
        unserved_cluster_folder.to("file", str(tmp_path / "dst"), via="worker")
    message = str(err.value)
    assert f"No Prefect worker is online for work queue {queue!r}" in message
    assert ".start_worker()" in message
    assert f"prefect worker start --pool rh-pool --work-queue {queue}" in message
    assert not (tmp_path / "dst").exists()


def test_via_auto_without_a_worker_copies_here_with_a_warning(unserved_cluster_folder, tmp_path, caplog):
    before = transfer.moved_here()
    with caplog.at_level(logging.WARNING, logger="rh_prefect.runtime.dispatch"):
        new = unserved_cluster_folder.to("file", str(tmp_path / "dst"))
    assert new.get("b/c.bin") == b"2" * 5000
    assert (transfer.moved_here() - before).bytes_copied == 8000  # the bytes came through this process
    assert any("copy runs through this process" in r.getMessage() and "start_worker()" in r.getMessage()
               for r in caplog.records), caplog.text


def _scheduled_run() -> Any:
    """A flow run in state Scheduled that no worker will run (its flow has no deployment)."""
    from prefect import flow
    from prefect.states import Scheduled

    @flow(name="rh-test-awaited")
    def awaited() -> None:
        pass

    with prefect_client() as c:
        return c.create_flow_run(awaited, state=Scheduled()).id


def _finish_later(run_id: Any, delay: float) -> threading.Thread:
    from prefect.states import Completed, Running

    def finish() -> None:
        time.sleep(delay)
        with prefect_client() as c:
            c.set_flow_run_state(run_id, Running(), force=True)
            c.set_flow_run_state(run_id, Completed(), force=True)

    thread = threading.Thread(target=finish, daemon=True)
    thread.start()
    return thread


def test_waiting_for_a_dispatched_run_wakes_on_its_state_events(prefect_server):
    """The caller learns that the run finished from Prefect's event stream, not from its next periodic read."""
    run_id = _scheduled_run()
    finisher = _finish_later(run_id, 1.5)
    began = time.monotonic()
    with settings.override(state_check_seconds=300.0):
        run = dispatch.wait(run_id, "rh-nobody", "rh-pool", "a test folder", pickup_timeout=600)
    waited = time.monotonic() - began
    finisher.join()
    assert run.id == run_id and run.state.is_completed()
    assert waited < 150, waited  # by reads alone the wait would have ended after 300 s


def test_waiting_polls_when_there_is_no_event_stream(prefect_server, monkeypatch, caplog):
    import prefect.events.clients

    def no_stream(*args: Any, **kwargs: Any) -> Any:
        raise OSError("websockets are not let through")

    monkeypatch.setattr(prefect.events.clients, "get_events_subscriber", no_stream)
    run_id = _scheduled_run()
    finisher = _finish_later(run_id, 1.0)
    with caplog.at_level(logging.DEBUG, logger="rh_prefect.runtime.dispatch"):
        run = dispatch.wait(run_id, "rh-nobody", "rh-pool", "a test folder", pickup_timeout=600)
    finisher.join()
    assert run.state.is_completed()
    assert "no flow run events (websockets are not let through); polling its state instead" in caplog.text


def test_a_run_no_worker_picks_up_is_cancelled_and_says_how_to_retry(prefect_server):
    queue = f"rh-nobody-{uuid.uuid4().hex[:8]}"
    worker.ensure_queue(queue, "rh-pool")
    run_id = _scheduled_run()
    with pytest.raises(dispatch.NotPickedUp) as caught:
        dispatch.wait(run_id, queue, "rh-pool", "folder rh-test/x", pickup_timeout=1.0)
    message = str(caught.value)
    assert f"The copy of folder rh-test/x waited 1 s on work queue {queue!r} and its worker went offline" in message
    assert f"prefect worker start --pool rh-pool --work-queue {queue}" in message
    with prefect_client() as c:
        assert c.read_flow_run(run_id).state.is_cancelled()


@pytest.mark.servers  # uses the Prefect API without a server fixture
def test_concurrent_local_worker_starts_agree_on_one_worker(tmp_path):
    """start_local (this machine's equivalent of Cluster.start_worker): two racing starts, one worker; stop."""
    from concurrent.futures import ThreadPoolExecutor

    queue = f"rh-local-{uuid.uuid4().hex[:8]}"
    env = {"PREFECT_HOME": str(tmp_path), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    infos: list[worker.WorkerInfo] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            infos = list(pool.map(lambda _: worker.start_local(queue, env=env, wait=False), range(2)))
        assert infos[0].pid == infos[1].pid
        assert sorted(i.started for i in infos) == [False, True]
        assert _environ(infos[0].pid)["PREFECT_WORKER_QUERY_SECONDS"] == "1"  # the caller's env wins
        assert worker.wait_online(queue) < 60
    finally:
        stopped = worker.stop_local(queue)
        for info in infos[:1]:
            Path(info.log_path).unlink(missing_ok=True)
    assert stopped is True and not worker.is_online(queue)
    assert wait_for(lambda: _process_gone(infos[0].pid), timeout=10)


@pytest.mark.servers  # uses the Prefect API without a server fixture
def test_local_worker_polls_its_queue_every_two_seconds_by_default(tmp_path):
    """Prefect's default poll is 10 s, and a dispatched copy waits for that poll before it starts."""
    queue = f"rh-local-{uuid.uuid4().hex[:8]}"
    info = None
    try:
        info = worker.start_local(queue, env={"PREFECT_HOME": str(tmp_path)}, wait=False)
        env = _environ(info.pid)
        assert env["PREFECT_WORKER_QUERY_SECONDS"] == "2"  # settings.worker_query_seconds' default
        # the pid is the shell that starts the worker again should it die; the worker is its command
        assert worker.worker_command(queue).encode() in Path(f"/proc/{info.pid}/cmdline").read_bytes()
    finally:
        worker.stop_local(queue)
        if info is not None:
            Path(info.log_path).unlink(missing_ok=True)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited, waiting to be reaped by init


# =========================================================================== 4. the proving test: copies on the cluster


@dataclass
class Colo:
    mode: str  # "netns" or "loopback"
    lab: Optional[NetnsLab]
    cluster: Any
    s3: Any  # the S3 System (credentials block with the endpoint reachable from the cluster)
    s3_fs: Any
    bucket: str
    worker: worker.WorkerInfo


@pytest.fixture(scope="module")
def colo(prefect_server, request) -> Iterator[Colo]:
    import s3fs

    with contextlib.ExitStack() as stack:
        try:
            if os.environ.get("RH_TEST_NO_NETNS"):  # exercise the fallback on a machine that has netns
                raise NetnsUnavailable("disabled by RH_TEST_NO_NETNS")
            lab = NetnsLab().up()
            stack.callback(lab.down)
            mode = "netns"
        except NetnsUnavailable as exc:
            lab, mode = None, "loopback"
            message = f"network namespaces unavailable ({exc}): the colocated-copy tests run on loopback"
            print(message)
            warnings.warn(message)
        if lab is not None:
            sshd = stack.enter_context(NetnsSSHServer(lab))
            moto = stack.enter_context(MotoS3Server(host=lab.host_ip))
            relay = stack.enter_context(TcpRelay(lab.host_ip, "127.0.0.1", prefect_server.port))
            api_url = f"http://{lab.host_ip}:{relay.port}/api"
        else:
            sshd = request.getfixturevalue("ssh_server")
            moto = request.getfixturevalue("s3_server")
            api_url = prefect_server.api_url
        print(f"colocated tests: mode={mode}, cluster sshd {sshd.host}:{sshd.port}, S3 {moto.endpoint_url}, "
              f"Prefect API for the worker {api_url}")
        cluster = rh.cluster(
            host=sshd.host, port=sshd.port, user=sshd.user, ssh_key=str(sshd.client_key_path),
            known_hosts=str(sshd.known_hosts_path), work_queue=f"rh-colo-{uuid.uuid4().hex[:8]}",
            prefect_bin=VENV_PREFECT, python=sys.executable, project_dir=str(REPO), api_url=api_url,
        )
        creds = S3Credentials(aws_access_key_id=moto.access_key, aws_secret_access_key=moto.secret_key,
                              endpoint_url=moto.endpoint_url)
        s3_fs = s3fs.S3FileSystem(key=moto.access_key, secret=moto.secret_key, endpoint_url=moto.endpoint_url,
                                  skip_instance_cache=True)
        bucket = f"rh-colo-{uuid.uuid4().hex[:10]}"
        s3_fs.mkdir(bucket)
        home = stack.enter_context(tempfile.TemporaryDirectory(prefix="rh-worker-home-"))
        started: list[worker.WorkerInfo] = []

        def stop_worker() -> None:  # runs first at teardown, also after a failed test
            cluster.stop_worker()
            for info in started:  # the "cluster" shares this machine's disk: drop the worker's log too
                Path(info.log_path).unlink(missing_ok=True)

        stack.callback(stop_worker)
        info = cluster.start_worker(env={"PREFECT_HOME": home, "PREFECT_WORKER_QUERY_SECONDS": "1",
                                         "PREFECT_WORKER_PREFETCH_SECONDS": "5"})
        started.append(info)
        yield Colo(mode, lab, cluster, get_system("s3", credentials=creds), s3_fs, bucket, info)


def test_start_worker_runs_inside_the_cluster_and_is_idempotent(colo):
    assert colo.worker.started and colo.worker.name == f"rh-{colo.cluster.work_queue}"
    again = colo.cluster.start_worker()
    assert (again.pid, again.started) == (colo.worker.pid, False)
    assert colo.cluster.worker_online()
    assert worker.process_status(colo.cluster) == colo.worker.pid
    if colo.lab is not None:
        assert colo.worker.pid in colo.lab.pids()  # the worker lives in the cluster's network namespace


def _flow_run_logs(flow_run_id) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with prefect_client() as c:
        return "\n".join(r.message for r in c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))))


def _assert_ran_on_worker(new: Any, colo: Colo) -> None:
    run = new.flow_run
    assert run.work_queue_name == colo.cluster.work_queue
    assert run.work_pool_name == "rh-pool"
    assert (run.labels or {}).get("prefect.worker.name") == colo.worker.name
    assert run.state.is_completed()
    # The worker knew it runs on the cluster holding the data: it read the files from its own disk.
    assert wait_for(lambda: "(read from local disk)" in _flow_run_logs(run.id)), _flow_run_logs(run.id)


def test_folder_copy_from_cluster_to_s3_runs_on_the_cluster_worker(colo):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    files = {"weights.bin": os.urandom(1_500_000), "config/model.json": b'{"layers": 12}', "vocab.txt": b"a\nb\n"}
    src = rh.folder(path=f"rh-test/colo-{uuid.uuid4().hex[:8]}", system=colo.cluster).put(files)
    anonymous = _anonymous_docs()
    before = transfer.moved_here()

    new = src.to(colo.s3, f"/{colo.bucket}/ckpt", via="worker")

    assert transfer.moved_here() - before == transfer.Moved()  # zero bytes through this (calling) process
    _assert_ran_on_worker(new, colo)
    assert (new.system, new.path) == ("s3", f"/{colo.bucket}/ckpt")
    stored = {p.split("/ckpt/", 1)[1]: colo.s3_fs.cat_file(p) for p in colo.s3_fs.find(f"{colo.bucket}/ckpt")}
    assert stored == files
    with prefect_client() as c:
        task_runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[new.flow_run.id])))
    assert any(t.name.startswith("rh-copy-tree") for t in task_runs)
    dispatch.settle_cleanups()  # the caller returned at once; the snapshots are deleted meanwhile
    assert _anonymous_docs() == anonymous  # the run's block snapshots were cleaned up
    # The copy's lineage event names the worker's flow run and the cluster, and the source by what it is here (on
    # the worker the source is an anonymous snapshot: the worker announces nothing itself).
    copied = wait_for(lambda: _copied_events(f"rh.folder.{new.url}"), what="the copy's rh.resource.copied event")
    assert {tuple(r.id for r in e.related if r.role == "source") for e in copied} == {
        (src.event_resource()["prefect.resource.id"],)}
    roles = {(r.role, r.id) for r in copied[0].related}
    assert ("flow-run", f"prefect.flow-run.{new.flow_run.id}") in roles
    assert any(role == "cluster" for role, _ in roles)
    src.rm()


def _copied_events(resource_id: str) -> list[Any]:
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    with prefect_client() as c:
        return c.read_events(filter=EventFilter(event=EventNameFilter(name=["rh.resource.copied"]),
                                                resource=EventResourceFilter(id=[resource_id])), limit=10).events


def test_blob_and_table_copies_from_cluster_to_s3_run_on_the_cluster_worker(colo):
    """A checkpoint Blob and a Table on the cluster go to S3 as two concurrent flow runs on its worker."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    run = uuid.uuid4().hex[:8]
    payload = os.urandom(700_000)
    blob = rh.blob(payload, path=f"rh-test/colo-{run}/ckpt.pt", system=colo.cluster)
    rows = pa.table({"id": list(range(1000)), "text": [f"row {i}" for i in range(1000)]})
    table = rh.table(data=rows, path=f"rh-test/colo-{run}/table", system=colo.cluster)
    before = transfer.moved_here()

    with ThreadPoolExecutor(2) as pool:  # via="auto": a worker is online for the cluster's queue, so there
        new_blob = pool.submit(blob.to, colo.s3, f"/{colo.bucket}/models/bert.pt")
        new_table = pool.submit(table.to, colo.s3, f"/{colo.bucket}/tables/t")
        new_blob, new_table = new_blob.result(), new_table.result()

    assert transfer.moved_here() - before == transfer.Moved()  # zero bytes through this (calling) process
    for new in (new_blob, new_table):
        _assert_ran_on_worker(new, colo)
    assert new_blob.flow_run.id != new_table.flow_run.id
    assert colo.s3_fs.cat_file(f"{colo.bucket}/models/bert.pt") == payload
    assert (new_blob.sha256, new_blob.size) == (blob.sha256, len(payload))
    assert new_table.url == f"s3://{colo.bucket}/tables/t" and new_table.fetch().equals(rows)
    blob.rm()
    table.rm()


@pytest.mark.slow
def test_a_worker_installed_from_the_wheel_alone_runs_colocated_copies(colo, tmp_path_factory):
    """No checkout on the cluster: build the wheel, install it (non-editable, with its dependencies) into a fresh
    virtualenv, start the cluster's worker from that virtualenv (inside the cluster's namespace, over SSH), and copy
    cluster -> S3 with via="worker": the transfer flow comes from the installed package, not from flows/ here."""
    where = tmp_path_factory.mktemp("wheel-worker")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(where / "dist"),
                            str(REPO)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((where / "dist").glob("rh_prefect-*.whl"))
    venv = where / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    uv = Path(sys.executable).with_name("uv")  # the test extras bring uv: it installs in seconds what pip takes minutes for
    if uv.exists():
        subprocess.run([str(uv), "venv", "-q", "--python", base_python, str(venv)], check=True, timeout=120)
        install = [str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(wheel)]
    else:
        subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=120)
        install = [str(venv / "bin" / "pip"), "install", "-q", str(wheel)]
    # Without this checkout on the path (PYTHONPATH, when the suite runs from a worktree): an installer would take
    # its build metadata for an installed rh-prefect and skip the install.
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    installed = subprocess.run(install, capture_output=True, text=True, timeout=900, env=clean, cwd="/")
    assert installed.returncode == 0, installed.stderr[-3000:]
    where_from = subprocess.run([str(venv / "bin" / "python"), "-c", "import rh_prefect; print(rh_prefect.__file__)"],
                                cwd="/", env=clean, capture_output=True, text=True, timeout=120)
    assert where_from.stdout.strip().startswith(str(venv)), where_from  # the wheel's copy, not this checkout

    queue = f"rh-wheel-{uuid.uuid4().hex[:8]}"
    cluster = colo.cluster.model_copy(update={
        "work_queue": queue, "prefect_bin": str(venv / "bin" / "prefect"), "python": str(venv / "bin" / "python"),
        "project_dir": None,
    })
    home = where / "prefect-home"
    home.mkdir()
    info = cluster.start_worker(env={"PREFECT_HOME": str(home), "PREFECT_WORKER_QUERY_SECONDS": "1"})
    try:
        if colo.lab is not None:
            assert info.pid in colo.lab.pids()  # the worker runs inside the cluster's network namespace
        files = {"model.bin": os.urandom(300_000), "meta/info.json": b'{"from": "wheel"}'}
        src = rh.folder(path=f"rh-test/wheel-{uuid.uuid4().hex[:8]}", system=cluster).put(files)
        before = transfer.moved_here()
        new = src.to(colo.s3, f"/{colo.bucket}/from-wheel", via="worker")
        assert transfer.moved_here() - before == transfer.Moved()  # no byte went through this process
        run = new.flow_run
        assert (run.work_queue_name, (run.labels or {}).get("prefect.worker.name")) == (queue, f"rh-{queue}")
        assert run.state.is_completed()
        for key, data in files.items():
            assert colo.s3_fs.cat_file(f"{colo.bucket}/from-wheel/{key}") == data
        with prefect_client() as c:
            deployment = c.read_deployment(run.deployment_id)
        assert deployment.entrypoint == "rh_prefect.flows.transfer:copy_folder"
        src.rm()
    finally:
        cluster.stop_worker()
        Path(info.log_path).unlink(missing_ok=True)


def _queue_runs(colo: Colo, *states: str) -> list[Any]:
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
                                                FlowRunFilterWorkQueueName)

    flt = FlowRunFilter(work_queue_name=FlowRunFilterWorkQueueName(any_=[colo.cluster.work_queue]),
                        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(states))) if states else None)
    with prefect_client() as c:
        return c.read_flow_runs(flow_run_filter=flt)


def _worker_process(run: Any, colo: Colo) -> int:
    """The process that ran ``run``: the long-lived worker itself (its own pid is the run's infrastructure pid)."""
    pid = int(run.infrastructure_pid)
    assert Path(f"/proc/{pid}").exists() or colo.lab is None, pid
    if colo.lab is not None:
        assert pid in colo.lab.pids()  # inside the cluster
    assert wait_for(lambda: f"in worker {colo.worker.name!r}'s own process (pid {pid})" in _flow_run_logs(run.id))
    return pid


def test_errors_on_the_worker_come_back_with_their_type_and_leave_it_serving(colo):
    """A user error raised in the flow run on the cluster reaches the caller as the same rh_prefect error; the
    worker process that ran it runs the next copy (copies run inside it: one failing must not take it down)."""
    missing = rh.folder(path=f"rh-test/never-written-{uuid.uuid4().hex[:8]}", system=colo.cluster)
    with pytest.raises(NotFound, match=r"Nothing to copy.*flow run .* on work queue"):
        missing.to(colo.s3, f"/{colo.bucket}/none", via="worker")
    assert colo.s3_fs.find(f"{colo.bucket}/none") == []
    [failed] = [r for r in _queue_runs(colo, "FAILED") if r.parameters.get("path") == f"/{colo.bucket}/none"]

    src = rh.folder(path=f"rh-test/after-error-{uuid.uuid4().hex[:8]}", system=colo.cluster).put({"ok.txt": b"ok"})
    new = src.to(colo.s3, f"/{colo.bucket}/after-error", via="worker")
    assert colo.s3_fs.cat_file(f"{colo.bucket}/after-error/ok.txt") == b"ok"
    assert _worker_process(new.flow_run, colo) == _worker_process(failed, colo)
    src.rm()


def _tree(n: int, size: int) -> dict[str, bytes]:
    return {f"part-{i:03d}.bin": os.urandom(size) for i in range(n)}


def _objects(colo: Colo, prefix: str) -> dict[str, bytes]:
    colo.s3_fs.invalidate_cache()
    try:
        found = colo.s3_fs.find(f"{colo.bucket}/{prefix}")
    except FileNotFoundError:
        return {}
    return {p.split(f"/{prefix}/", 1)[1]: colo.s3_fs.cat_file(p) for p in found if f"/{prefix}/" in p}


@contextlib.contextmanager
def _slow_cluster_uplink(colo: Colo, mbit: float) -> Iterator[None]:
    """The cluster's uploads (to S3, on the host side of its link) at ``mbit``: copies last long enough to act on
    one while it runs."""
    colo.lab.shape(mbit, both_ways=False)
    try:
        yield
    finally:
        colo.lab.unshape()


def _dispatch_in_background(src: Any, colo: Colo, prefix: str) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def copy() -> None:
        try:
            outcome["new"] = src.to(colo.s3, f"/{colo.bucket}/{prefix}", via="worker")
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread, outcome


def test_cancelling_a_copy_stops_it_between_files_and_the_worker_runs_the_next(colo):
    """Cancel from Prefect (what `prefect flow-run cancel` does) while the copy runs in the worker's process: it
    starts no further file, every object it wrote is whole, the run ends Cancelled, the caller gets Cancelled, and
    the same process runs the next copy."""
    from prefect.states import Cancelling

    if colo.lab is None:
        pytest.skip("needs the cluster's network namespace to slow its link")
    files = _tree(24, 64 * 1024)
    src = rh.folder(path=f"rh-test/cancel-{uuid.uuid4().hex[:8]}", system=colo.cluster).put(files)
    with _slow_cluster_uplink(colo, 4):  # 1.5 MiB: ~3 s, 8 files at a time
        thread, outcome = _dispatch_in_background(src, colo, "cancelled")
        wait_for(lambda: _objects(colo, "cancelled"), 60, "the copy's first files in S3")
        [run] = wait_for(lambda: _queue_runs(colo, "RUNNING"), 10, "the copy's flow run")
        with prefect_client() as c:
            c.set_flow_run_state(run.id, Cancelling(message="cancelled by the test"))
        thread.join(60)
    assert isinstance(outcome.get("error"), rh.Cancelled), outcome
    assert "was cancelled" in str(outcome["error"])
    with prefect_client() as c:
        assert c.read_flow_run(run.id).state.is_cancelled()
    stored = _objects(colo, "cancelled")
    assert 0 < len(stored) < len(files)  # it stopped ...
    assert all(files[k] == v for k, v in stored.items())  # ... and nothing it wrote is partial

    again = src.to(colo.s3, f"/{colo.bucket}/cancelled", via="worker")  # the user starts it again: it resumes
    assert _objects(colo, "cancelled") == files
    assert _worker_process(again.flow_run, colo) == int(run.infrastructure_pid)
    src.rm()


def test_a_worker_killed_mid_copy_comes_back_and_finishes_the_copy(colo):
    """SIGKILL to the worker process while a copy runs in it: no object is partial, the shell that start_worker()
    left starts the worker again, the new one puts the run back in the queue and runs it again; the caller, still
    waiting, gets the finished copy, with every file whole."""
    if colo.lab is None:
        pytest.skip("needs the cluster's network namespace to slow its link")
    files = _tree(24, 64 * 1024)
    src = rh.folder(path=f"rh-test/killed-{uuid.uuid4().hex[:8]}", system=colo.cluster).put(files)
    with _slow_cluster_uplink(colo, 4):
        thread, outcome = _dispatch_in_background(src, colo, "killed")
        wait_for(lambda: _objects(colo, "killed"), 60, "the copy's first files in S3")
        [run] = wait_for(lambda: [r for r in _queue_runs(colo, "RUNNING") if r.infrastructure_pid], 10,
                         "the copy's flow run, with its process")
        killed = int(run.infrastructure_pid)
        os.kill(killed, signal.SIGKILL)
        stored = _objects(colo, "killed")
        assert all(files[k] == v for k, v in stored.items())  # nothing partial, as the worker died
        thread.join(120)
    assert "new" in outcome, outcome
    new = outcome["new"]
    assert new.flow_run.id == run.id and new.flow_run.state.is_completed()
    assert _objects(colo, "killed") == files
    assert _worker_process(new.flow_run, colo) != killed
    with prefect_client() as c:
        names = [s.name for s in c.read_flow_run_states(run.id)]
    assert "AwaitingRetry" in names, names
    src.rm()


def test_stopped_worker_is_offline_and_auto_falls_back(colo, tmp_path, caplog):
    src = rh.folder(path=f"rh-test/colo-{uuid.uuid4().hex[:8]}", system=colo.cluster).put({"x.bin": b"x" * 4096})
    assert colo.cluster.stop_worker() is True
    assert not colo.cluster.worker_online()
    assert worker.process_status(colo.cluster) is None
    if colo.lab is not None:
        assert colo.worker.pid not in colo.lab.pids()

    with pytest.raises(SystemUnavailable, match="start_worker"):
        src.to(colo.s3, f"/{colo.bucket}/stopped", via="worker")
    before = transfer.moved_here()
    with caplog.at_level(logging.WARNING, logger="rh_prefect.runtime.dispatch"):
        new = src.to(colo.s3, f"/{colo.bucket}/stopped")
    assert (transfer.moved_here() - before).bytes_copied == 4096
    assert new.flow_run is None
    assert colo.s3_fs.cat_file(f"{colo.bucket}/stopped/x.bin") == b"x" * 4096
    assert "runs through this process" in caplog.text
    assert colo.cluster.stop_worker() is False  # idempotent
    src.rm()
