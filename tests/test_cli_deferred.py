"""The command line starts without Prefect, and a copy is still a Prefect task run (issue 18).

``rh-prefect ls`` / ``cat`` of a local path load neither Prefect nor any storage client; ``rh-prefect cp`` runs the
engine first, under the one retry policy, and records the task run afterwards with its real times and outcome
(:mod:`rh_prefect.runtime.deferred`): from a detached process when the command itself never loaded Prefect, or
from the same process when it had (here: the command line run in-process by the ``cli`` fixture).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import prefect_client, read_tree, wait_for, write_tree

RH_PREFECT = str(Path(sys.executable).parent / "rh-prefect")
#: loaded by none of ls / cat / cp of local paths before the first byte
HEAVY = ("prefect", "pyarrow", "pandas", "s3fs", "aiobotocore", "botocore", "aiohttp", "asyncssh", "gcsfs", "rich",
         "pydantic_settings")
_PROBE = """
import json, sys
from rh_prefect.cli import app
out, sys.argv = sys.argv[1], ["rh-prefect", *sys.argv[2:]]
try:
    app()
except SystemExit as exc:
    code = exc.code
with open(out, "w") as f:
    json.dump({"code": code, "loaded": [m for m in %r if m in sys.modules]}, f)
""" % (HEAVY,)


def _in_a_fresh_process(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The command line in a new interpreter; returns its output and what it loaded by the time it returned."""
    report = tmp_path / f"modules-{uuid.uuid4().hex[:6]}.json"
    full_env = {**os.environ, "RH_PREFECT_SERVER_HOME": str(tmp_path / "server-home"), **env}
    done = subprocess.run([sys.executable, "-c", _PROBE, str(report), *args], capture_output=True, timeout=120,
                          env=full_env)
    return done, json.loads(report.read_text())


def _runs_with(marker: str) -> list:
    """The task runs recorded from command-line copies whose final message names ``marker``."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterTags

    with prefect_client() as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=["rh-prefect-cli"])))
    return [r for r in runs if r.state and r.state.is_final() and marker in (r.state.message or "")]


def test_ls_and_cat_of_a_local_path_load_no_prefect_and_no_storage_client(tmp_path):
    write_tree(tmp_path / "data", {"a.txt": b"alpha\n", "sub/b.txt": b"beta"})
    done, seen = _in_a_fresh_process(tmp_path, "ls", str(tmp_path / "data"))
    assert (seen["code"], done.stdout, seen["loaded"]) == (0, b"a.txt\nsub/\n", [])
    done, seen = _in_a_fresh_process(tmp_path, "ls", "-r", str(tmp_path / "data"))
    assert (seen["code"], done.stdout, seen["loaded"]) == (0, b"a.txt\nsub/b.txt\n", [])
    done, seen = _in_a_fresh_process(tmp_path, "cat", str(tmp_path / "data" / "sub" / "b.txt"))
    assert (seen["code"], done.stdout, seen["loaded"]) == (0, b"beta", [])
    assert not (tmp_path / "server-home").exists()  # no embedded Prefect server was started either


def test_a_transient_error_is_retried_and_a_user_error_is_not(monkeypatch):
    from rh_prefect.runtime import retry

    monkeypatch.setattr(retry, "BACKOFF_FACTOR", 0.0)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("connection reset by peer")
        return "done"

    attempts: list[retry.Attempt] = []
    assert retry.call(flaky, attempts=attempts) == "done"
    assert [(a.error, a.retried) for a in attempts] == [("ConnectionResetError: connection reset by peer", True)] * 2 \
        + [(None, False)]

    attempts = []
    with pytest.raises(FileNotFoundError):
        retry.call(lambda: open("/nonexistent/" + uuid.uuid4().hex), attempts=attempts)
    assert len(attempts) == 1 and attempts[0].error.startswith("FileNotFoundError") and not attempts[0].retried


@pytest.mark.servers  # the recorder sends the task run to the suite's Prefect server (PREFECT_API_URL)
def test_a_copy_is_recorded_as_a_task_run_with_its_times_and_summary(tmp_path, prefect_server):
    files = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(3000), "sub/deeper/c.txt": b"gamma"}
    write_tree(tmp_path / "src", files)
    dst = tmp_path / f"dst-{uuid.uuid4().hex[:8]}"
    before = time.time()
    done, seen = _in_a_fresh_process(tmp_path, "cp", str(tmp_path / "src"), str(dst))
    after = time.time()
    assert seen["code"] == 0, done.stderr
    assert done.stdout.startswith(b"copied 3 files / ") and read_tree(dst) == files
    assert "prefect" not in seen["loaded"]  # the command never waited for Prefect: a detached process records it

    run = wait_for(lambda: _runs_with(str(dst)), timeout=60, what="the copy's task run")[0]
    assert (run.name, run.state_type.value, run.run_count) == ("rh-copy-tree", "COMPLETED", 1)
    assert run.state.message.startswith("copied 3 files / ") and run.state.message.endswith(f"-> {dst}")
    assert before <= run.start_time.timestamp() <= run.end_time.timestamp() <= after  # the copy's own times
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterTaskRunId

    with prefect_client() as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(task_run_id=ArtifactFilterTaskRunId(
            any_=[run.id])))
    assert [a.type for a in artifacts] == ["markdown"] and "| 3 | " in artifacts[0].data


@pytest.mark.servers
def test_a_failed_copy_is_recorded_as_failed_and_not_retried(tmp_path, prefect_server):
    write_tree(tmp_path / "src", {"sub/a.txt": b"alpha"})
    dst = write_tree(tmp_path / f"dst-{uuid.uuid4().hex[:8]}", {"sub": b"a file where the copy needs a folder"})
    done, seen = _in_a_fresh_process(tmp_path, "cp", str(tmp_path / "src"), str(dst))
    assert seen["code"] == 1 and done.stderr.startswith(b"rh-prefect: error: ")

    run = wait_for(lambda: _runs_with(str(dst)), timeout=60, what="the failed copy's task run")[0]
    assert (run.name, run.state_type.value, run.run_count) == ("rh-copy-tree", "FAILED", 1)  # a user error: once
    assert "FileExistsError" in run.state.message or "NotADirectoryError" in run.state.message


def test_a_retried_copy_shows_its_retry_in_the_task_run(cli, tmp_path, prefect_server, monkeypatch):
    """In-process (Prefect loaded already): the run is sent from the command's own process, retry included."""
    from rh_prefect import transfer
    from rh_prefect.runtime import retry

    monkeypatch.setattr(retry, "BACKOFF_FACTOR", 0.0)
    real, calls = transfer.copy_tree, []

    def drops_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionResetError("connection reset by peer")
        return real(*args, **kwargs)

    monkeypatch.setattr(transfer, "copy_tree", drops_once)
    write_tree(tmp_path / "src", {"a.txt": b"alpha"})
    dst = tmp_path / f"dst-{uuid.uuid4().hex[:8]}"
    result = cli("cp", str(tmp_path / "src"), str(dst))
    assert result.exit_code == 0 and (dst / "a.txt").read_bytes() == b"alpha" and len(calls) == 2

    run = wait_for(lambda: _runs_with(str(dst)), timeout=60, what="the retried copy's task run")[0]
    assert (run.state_type.value, run.run_count) == ("COMPLETED", 2)
    with prefect_client() as client:
        states = sorted(client.read_task_run_states(run.id), key=lambda s: s.timestamp)
    assert [s.name for s in states] == ["Pending", "Running", "AwaitingRetry", "Running", "Completed"]
    assert "ConnectionResetError" in states[2].message
