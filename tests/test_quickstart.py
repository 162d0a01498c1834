"""The README's main job: flows/quickstart.py runs the walkthrough end to end (against the suite's server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parent.parent / "flows" / "quickstart.py"


def test_quickstart_walks_the_seed_example(tmp_path, prefect_server):
    env = dict(os.environ, PREFECT_API_URL=prefect_server.api_url)
    env.pop("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", None)
    import rh_prefect as rh

    mine = rh.folder(name="my-folder", path=str(tmp_path / "mine")).save(overwrite=True)  # a user's own name
    try:
        for run in range(2):  # running it again works, and replaces only its own names
            proc = subprocess.run([sys.executable, str(QUICKSTART), str(tmp_path / "qs")], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
        assert rh.folder(name="my-folder").path == mine.path
    finally:
        rh.delete("my-folder")  # the README and seed tests save this name as written
    out = proc.stdout
    names = "['sample_file_0.txt', 'sample_file_1.txt', 'sample_file_2.txt']"
    assert f"1. saved folder '/rh-quickstart/my-folder' at {tmp_path / 'qs' / 'folder_tmp'}: {names}" in out
    assert "copied to a local stand-in" in out and out.count(names) >= 3
    assert "4. copied again: copied 0 files / 0 B, skipped 3 unchanged" in out
    assert "5. /rh-quickstart/ds holds ['/rh-quickstart/ds/bert_preproc']" in out
    assert "6. table '/rh-quickstart/my_pandas_table' (pandas): 1000 rows streamed as 10 batches of 100" in out
    assert "fetched back: {'step': 100, 'weights': [0.1, 0.2, 0.3]}" in out
    assert f"{prefect_server.api_url.removesuffix('/api')}/runs/flow-run/" in out
    # the files really are there
    assert (tmp_path / "qs" / "bucket_standin" / "my-folder" / "sample_file_2.txt").read_bytes() == b"file2"
    assert "4. copied again: copied 0 files / 0 B, skipped 3 unchanged" in out  # also on the second run
    assert "Traceback" not in proc.stderr and " WARNING " not in proc.stderr
