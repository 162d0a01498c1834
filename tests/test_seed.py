"""The seed's examples as a test: every Python code block of ``shared/seed/*.txt`` (Runhouse's "Data" page, the
API's specification) runs in order, as written, against the suite's servers, and each block's outcome is checked
the way a user would check it (files on the cluster and in S3 with the right bytes, rows streamed in exact
batches).

What the seed leaves to its reader is supplied here, and nothing else:

* ``rh``, ``Path`` and ``pd`` are imported (``rh`` is rh_prefect, which follows Runhouse's API);
* :data:`STAND_INS` - the places the seed names are the test servers;
* :data:`SUBSTITUTIONS` - the only changes made to the seed's text, each with its reason. A substitution that no
  longer matches the seed fails the test, so the list cannot outlive the text it patches.

The seed lives beside the repository (``../shared/seed`` from its root: the CI clone has ``shared/`` next to it,
read-only); ``RH_TEST_SHARED_DIR`` points elsewhere (a git worktree one level deeper, for instance).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import rh_prefect as rh

pytestmark = pytest.mark.servers  # names are saved and loaded on the Prefect server

SHARED = Path(os.environ.get("RH_TEST_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
SEED_DIR = SHARED / "seed"

#: the seed's names -> what stands in for them while the examples run (set up by fixtures, not by editing text)
STAND_INS = [
    ('rh.cluster("^rh-cpu")', "the suite's sshd, saved as the cluster rh-cpu (fixture rh_cpu)",
     "rh-cpu is a Runhouse built-in; here every cluster is one the user saved under its name"),
    ('.to(system="s3") without a path', "RH_PREFECT_S3_BUCKET = a fresh bucket on the suite's moto S3 server",
     "a bucket folder without a path goes to the configured default bucket (Runhouse's default too)"),
    ('system="s3" (the table)', "AWS_* variables pointing at the suite's moto server",
     "the default credential chain, as on a user's machine"),
]

#: (original text in the seed -> replacement, reason): the only edits made to the seed's code before it runs
SUBSTITUTIONS = [
    ("data = pd.DataFrame(...)",
     "data = pd.DataFrame({'id': range(250), 'text': [f'row {i}' for i in range(250)]})",
     "`pd.DataFrame(...)` stands for the reader's own frame: a small real one (250 rows, so batches of 100 end "
     "with a short one)"),
    ('reloaded_table = rh.table(name="@/my_test_fetch_dask_table", dryrun=True)',
     'reloaded_table = rh.table(name="@/my_pandas_table", dryrun=True)',
     "a typo in the seed: it saves '@/my_pandas_table' and says it now streams 'this table', but reloads a name "
     "nothing saved (Runhouse raises for it too)"),
    ("batches = reloaded_table.stream(batch_size=100)\n    for batch in batches:\n        ....",
     "batches = reloaded_table.stream(batch_size=100)\nstreamed = []\nfor batch in batches:\n"
     "    streamed.append(batch)",
     "not Python as printed (the loop is indented under a plain statement and `....` is a syntax error): the loop "
     "at statement level, its `....` body (the reader's own code) keeping each batch so they can be checked"),
]

SAMPLE_FILES = {f"sample_file_{i}.txt": f"file{i}".encode() for i in range(3)}


def python_blocks(text: str) -> list[str]:
    """The bodies of the reST ``.. code-block:: python`` directives in ``text``, dedented, in order."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        directive = re.match(r"^(\s*)\.\. code-block::\s*python\s*$", lines[i])
        i += 1
        if not directive:
            continue
        indent, body = len(directive.group(1)), []
        # the body: every following line that is blank or indented deeper than the directive
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        blocks.append(textwrap.dedent("\n".join(body)).strip("\n"))
    return blocks


def seed_blocks() -> list[str]:
    if not SEED_DIR.is_dir():
        pytest.fail(f"The seed is not at {SEED_DIR}: the repository's clone needs shared/ beside it (../shared), "
                    "or set RH_TEST_SHARED_DIR to the shared directory.")
    blocks = [b for f in sorted(SEED_DIR.glob("*.txt")) for b in python_blocks(f.read_text())]
    assert blocks, f"no `.. code-block:: python` in {SEED_DIR}"
    return blocks


def substituted(blocks: list[str]) -> list[str]:
    """``blocks`` with :data:`SUBSTITUTIONS` applied; each must match exactly once in the whole seed."""
    out = list(blocks)
    for original, replacement, _reason in SUBSTITUTIONS:
        hits = [i for i, b in enumerate(out) if original in b]
        assert len(hits) == 1 and out[hits[0]].count(original) == 1, \
            f"substitution no longer matches the seed exactly once: {original!r}"
        out[hits[0]] = out[hits[0]].replace(original, replacement)
    return out


# --------------------------------------------------------------------------- what each block must produce
# Keyed by a line that identifies the block, so a reordered or edited seed fails with a clear message.


def check_local_folder(ns, out, env):
    folder_tmp = env["cwd"] / "folder_tmp"
    assert {p.name: p.read_bytes() for p in folder_tmp.iterdir()} == SAMPLE_FILES
    saved = rh.folder(name="my-folder")  # saved for future re-use: it loads by name
    assert saved.path == str(folder_tmp) and saved.system == "file"


def check_cluster_folder(ns, out, env):
    assert out == "['sample_file_0.txt', 'sample_file_1.txt', 'sample_file_2.txt']\n"
    c, cluster_folder = ns["c"], ns["cluster_folder"]
    assert c.name == "rh-cpu" and cluster_folder.name == "my-folder"
    assert cluster_folder.system == "ssh" and cluster_folder.cluster.host == env["ssh"].host
    # the files really are on the cluster's disk, with the right bytes
    on_cluster = env["ssh"].home / env["rh_cpu"].default_root / "folder_tmp"
    assert {p.name: p.read_bytes() for p in on_cluster.iterdir()} == SAMPLE_FILES


def check_s3_folder(ns, out, env):
    s3_folder, bucket = ns["s3_folder"], env["bucket"]
    assert (s3_folder.system, s3_folder.path) == ("s3", f"/{bucket}/folder_tmp")
    fs = env["s3fs"]
    keys = sorted(fs.find(f"{bucket}/folder_tmp"))
    assert keys == [f"{bucket}/folder_tmp/{name}" for name in sorted(SAMPLE_FILES)]
    assert {k.rsplit("/", 1)[1]: fs.cat_file(k) for k in keys} == SAMPLE_FILES


def check_table(ns, out, env):
    my_table = ns["my_table"]
    assert isinstance(my_table, rh.PandasTable) and my_table.name == "@/my_pandas_table"
    assert (my_table.system, my_table.path, len(my_table)) == ("s3", "/preproc-data/pandas", 250)
    assert env["s3fs"].find("preproc-data/pandas"), "no parquet data under s3://preproc-data/pandas"
    pd.testing.assert_frame_equal(rh.table(name="@/my_pandas_table").fetch().reset_index(drop=True), ns["data"])


def check_reloaded(ns, out, env):
    reloaded = ns["reloaded_table"]  # a reference to the table's path
    assert isinstance(reloaded, rh.PandasTable)
    assert (reloaded.system, reloaded.path) == ("s3", "/preproc-data/pandas")


def check_stream(ns, out, env):
    streamed = ns["streamed"]
    assert [len(b) for b in streamed] == [100, 100, 50]  # exact batches, the last one short
    got = pd.concat(streamed).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, ns["data"])  # every row once, in table order


CHECKS = [
    ('local_folder = rh.folder(name="my-folder",', check_local_folder),
    ("cluster_folder = local_folder.to(system=c).from_cluster(c)", check_cluster_folder),
    ('s3_folder = rh.folder(name="my-folder").to(system="s3")', check_s3_folder),
    ("my_table = rh.table(", check_table),
    ("reloaded_table = rh.table(", check_reloaded),
    ("batches = reloaded_table.stream(batch_size=100)", check_stream),
]


@pytest.fixture
def seed_env(rh_cpu, ssh_server, s3_server, s3_env, s3_bucket, tmp_path, monkeypatch):
    """The stand-ins of :data:`STAND_INS`, a fresh working directory, and cleanup of what the seed saves."""
    import s3fs

    monkeypatch.setenv("RH_PREFECT_S3_BUCKET", s3_bucket)
    monkeypatch.chdir(tmp_path)
    fs = s3fs.S3FileSystem(key=s3_server.access_key, secret=s3_server.secret_key,
                           endpoint_url=s3_server.endpoint_url, skip_instance_cache=True)
    assert not fs.exists("preproc-data"), "the seed's table bucket exists already; the test would not see it made"
    yield {"cwd": tmp_path, "rh_cpu": rh_cpu, "ssh": ssh_server, "bucket": s3_bucket, "s3fs": fs}
    for name in ("my-folder", "@/my_pandas_table"):
        if rh.exists(name):
            rh.delete(name)
    fs.invalidate_cache()
    if fs.exists("preproc-data"):
        fs.rm("preproc-data", recursive=True)


def test_the_seeds_examples_run_as_written(seed_env):
    assert all(reason for *_, reason in SUBSTITUTIONS + STAND_INS)  # every departure from the seed says why
    blocks = substituted(seed_blocks())
    assert len(blocks) == len(CHECKS), f"the seed has {len(blocks)} Python blocks; CHECKS covers {len(CHECKS)}"
    namespace = {"rh": rh, "Path": Path, "pd": pd}
    for index, (block, (marker, check)) in enumerate(zip(blocks, CHECKS)):
        assert marker in block, f"seed block {index} is not the one expected ({marker!r}):\n{block}"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, f"<seed block {index}>", "exec"), namespace)
        check(namespace, out.getvalue(), seed_env)
