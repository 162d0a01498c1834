"""Library calls made outside a flow print nothing of Prefect's task-run bookkeeping, and a user's own mistake is
raised once, not logged at ERROR first; inside a flow every line stays (the run's logs are its record)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.servers  # the scripts run tasks against the suite's Prefect server

SCRIPT = textwrap.dedent("""
    import sys
    import pandas as pd
    import rh_prefect as rh
    from rh_prefect.errors import SchemaMismatch

    root = sys.argv[1]
    src = rh.folder(path=root + "/src").put({"a.txt": b"a", "b/c.txt": b"c"})
    print("copied", src.to("file", path=root + "/dst").ls(recursive=True, full_paths=False))
    t = rh.table(data=pd.DataFrame({"x": [1, 2]}), path=root + "/t")
    try:
        t.write(pd.DataFrame({"y": ["a"]}), mode="append")
    except SchemaMismatch as exc:
        print("raised SchemaMismatch")
""")

IN_A_FLOW = textwrap.dedent("""
    import sys
    from prefect import flow
    import rh_prefect as rh

    @flow
    def copy(root):
        rh.folder(path=root + "/src").put({"a.txt": b"a"}).to("file", path=root + "/dst")

    copy(sys.argv[1])
""")


def _run(script: str, tmp_path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, **env}
    environ.pop("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", None)  # as in a user's shell
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=environ, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_calls_outside_a_flow_print_no_task_run_lines_and_mistakes_are_raised_not_logged(prefect_server, tmp_path):
    done = _run(SCRIPT, tmp_path)
    assert done.stdout.splitlines() == ["copied ['a.txt', 'b/c.txt']", "raised SchemaMismatch"]
    assert done.stderr == "", done.stderr


def test_task_logs_setting_shows_them_again(prefect_server, tmp_path):
    done = _run(SCRIPT, tmp_path, RH_PREFECT_TASK_LOGS="1")
    assert "Task run 'rh-copy-tree" in done.stderr and "Finished in state Completed()" in done.stderr
    assert "ERROR" in done.stderr and "SchemaMismatch" in done.stderr  # the failed write's lines, as Prefect logs them


def test_inside_a_flow_the_task_run_lines_stay(prefect_server, tmp_path):
    done = _run(IN_A_FLOW, tmp_path)
    assert "Task run 'rh-copy-tree" in done.stderr and "Finished in state Completed()" in done.stderr
