"""Progress of copies: a live bar in a terminal, periodic summary lines elsewhere, Prefect artifacts in runs.

What a user sees is asserted: the text on their terminal or in their logs, and the artifacts the Prefect UI
shows for a flow run (read back through the Prefect API).
"""

from __future__ import annotations

import doctest
import io
import os
import re
import time

import pytest

from rh_prefect import progress as progress_module
from rh_prefect.progress import Progress, human_bytes

from helpers import prefect_client, wait_for, write_tree

LINE = re.compile(r"^rh-prefect: copy file -> s3: (\d+)/100 files, [\d.]+ (KiB|MiB)/100\.0 KiB \((\d+)%\), "
                  r"[\d.]+ (B|KiB)/s, ETA \d+s$")


class FakeClock:
    """A monotonic clock the test moves by hand, so the pacing of summary lines is exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_module_example_runs():
    assert doctest.testmod(progress_module).failed == 0


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 1023, 1536, 5 * 2**20, 3 * 2**40)] == [
        "0 B", "1023 B", "1.5 KiB", "5.0 MiB", "3.0 TiB"]


def test_non_interactive_output_is_one_summary_line_per_interval_not_per_file():
    clock, out = FakeClock(), io.StringIO()
    p = Progress("copy file -> s3", interval=10.0, interactive=False, artifacts=False, file=out, clock=clock)
    p.start(files=100, nbytes=100 * 1024)
    for _ in range(100):  # one file per second for 100 s
        clock.now += 1.0
        p.advance(1, 1024)
    p.finish()
    lines = out.getvalue().splitlines()
    periodic, last = lines[:-1], lines[-1]
    assert len(periodic) == 10  # every 10 s, not 100 lines for 100 files
    for i, line in enumerate(periodic, start=1):
        m = LINE.match(line)
        assert m, line
        assert int(m.group(1)) == 10 * i and int(m.group(3)) == 10 * i
    assert last.startswith("rh-prefect: copy file -> s3: 100/100 files, 100.0 KiB/100.0 KiB (100%)")
    assert last.endswith(" - done")


def test_quick_operations_print_nothing_and_failures_say_so():
    clock, out = FakeClock(), io.StringIO()
    quick = Progress("copy file -> s3", interval=10.0, interactive=False, artifacts=False, file=out, clock=clock)
    quick.start(files=3, nbytes=3)
    for _ in range(3):
        clock.now += 0.1
        quick.advance(1, 1)
    quick.finish()
    assert out.getvalue() == ""

    slow = Progress("copy file -> s3", interval=10.0, interactive=False, artifacts=False, file=out, clock=clock)
    slow.start(files=3, nbytes=3)
    clock.now += 11
    slow.advance(1, 1)
    slow.finish(error=ConnectionResetError("peer reset"))
    assert out.getvalue().splitlines()[-1].endswith("(33%), 0 B/s, ETA 22s - failed: ConnectionResetError")


def test_a_real_copy_in_a_pipe_prints_nothing_per_file(tmp_path, s3_bucket, s3_env, capfd):
    from rh_prefect import transfer
    from rh_prefect.systems import get_system

    src = write_tree(tmp_path / "src", {f"file-{i:02d}.txt": b"x" * i for i in range(30)})
    s3 = get_system("s3")
    report = transfer.copy_tree(get_system("file"), str(src), s3, f"{s3_bucket}/dst")
    assert report.files_copied == 30
    out, err = capfd.readouterr()
    assert "file-0" not in out + err
    # Nothing per file; a copy slower than the 10 s summary interval (a loaded machine) may print summary lines.
    assert all(line.startswith("rh-prefect: copy file -> s3") and "/30 files" in line
               for line in (out + err).splitlines() if line.strip()), out + err


def _bar_console():
    from rich.console import Console

    buf = io.StringIO()
    return buf, Console(file=buf, force_terminal=True, width=150, color_system=None)


def test_interactive_bar_shows_files_bytes_rate_and_eta():
    buf, console = _bar_console()
    p = Progress("copy file -> s3", interactive=True, artifacts=False, console=console)
    p.start(files=3, nbytes=3 * 2**20)
    for _ in range(3):
        time.sleep(0.15)  # the bar's rate needs a few samples over time
        p.advance(1, 2**20)
    p.finish()
    frames = [f for f in re.split(r"[\r\n]", buf.getvalue()) if "copy file -> s3" in f]
    final = frames[-1]
    assert "━" in final and "3.0/3.0 MiB" in final and "3/3 files" in final
    assert re.search(r"[\d.]+ [kMG]?B/s", final), final  # rate
    assert "0:00:00" in final  # ETA
    assert any("1/3 files" in f for f in frames)  # it moved while the copy ran


def test_interactive_bar_follows_a_real_copy(tmp_path, s3_bucket, s3_env):
    from rh_prefect import transfer
    from rh_prefect.systems import get_system

    src = write_tree(tmp_path / "src", {f"part-{i}.bin": os.urandom(2**20) for i in range(3)})
    buf, console = _bar_console()
    bar = Progress("upload", interactive=True, artifacts=False, console=console)
    transfer.copy_tree(get_system("file"), str(src), get_system("s3"), f"{s3_bucket}/bar", progress=bar)
    frames = [f for f in re.split(r"[\r\n]", buf.getvalue()) if f.strip().startswith("\x1b[2Kupload") or
              f.startswith("upload")]
    assert frames and "3.0/3.0 MiB" in frames[-1] and "3/3 files" in frames[-1]


# --------------------------------------------------------------------------- inside Prefect runs


@pytest.fixture
def flush_run_logs(prefect_server):
    """Send the flow runs' logs before the test ends (not at exit, when the suite's server is gone)."""
    yield
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()


def _artifacts(flow_run_id):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with prefect_client() as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def test_copy_in_a_flow_leaves_progress_and_summary_artifacts(tmp_path, s3_bucket, s3_env, flush_run_logs):
    from prefect import flow, runtime

    import rh_prefect as rh

    sizes = [100, 2000, 30_000, 4, 5]
    data = write_tree(tmp_path / "data", {f"f{i}.bin": os.urandom(n) for i, n in enumerate(sizes)})

    @flow(name="rh-test-progress-artifacts")
    def copy_it() -> str:
        rh.folder(path=str(data)).to("s3", f"/{s3_bucket}/copy")
        return str(runtime.flow_run.id)

    first = copy_it()
    arts = {a.type: a for a in _artifacts(first)}
    assert set(arts) == {"progress", "markdown"}
    assert arts["progress"].data == 100.0
    assert arts["progress"].description == arts["markdown"].description == "copy file -> " + \
        rh.folder(path=f"/{s3_bucket}/copy", system="s3").sys.describe()
    md = arts["markdown"].data
    header, _, row = md.splitlines()[2:5]
    assert header == "| files copied | bytes copied | files skipped (unchanged) | duration | throughput |"
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["5", human_bytes(sum(sizes)), "0 (0 B)"]
    assert re.fullmatch(r"\d+\.\d\d s", cells[3]) and re.fullmatch(r"[\d.]+ (B|KiB|MiB)/s", cells[4])

    # The same copy again: nothing to move, so no progress bar artifact, and the summary says what was skipped.
    second = copy_it()
    arts = {a.type: a for a in _artifacts(second)}
    assert set(arts) == {"markdown"}
    cells = [c.strip() for c in arts["markdown"].data.splitlines()[4].strip("|").split("|")]
    assert cells[:3] == ["0", "0 B", f"5 ({human_bytes(sum(sizes))})"]


def test_summary_lines_go_to_the_flow_run_log(flush_run_logs):
    from prefect import flow, runtime
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    @flow(name="rh-test-progress-log")
    def long_job() -> str:
        clock = FakeClock()
        p = Progress("stream table", interval=10.0, interactive=False, artifacts=False, clock=clock)
        p.start(files=4, nbytes=4)
        for _ in range(4):
            clock.now += 10
            p.advance(1, 1)
        p.finish()
        return str(runtime.flow_run.id)

    run_id = long_job()

    def progress_lines():
        with prefect_client() as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        return [entry.message for entry in logs if entry.message.startswith("stream table:")]

    lines = wait_for(lambda: (found := progress_lines()) and len(found) == 5 and found, 20, "progress log lines")
    assert lines[0].startswith("stream table: 1/4 files") and lines[-1].endswith(" - done")
