"""Quickstart: the Runhouse "Data" walkthrough on the embedded default.

Runs against PREFECT_API_URL when set, otherwise starts (or reuses) the embedded local Prefect server
(SQLite, 127.0.0.1:4200). Data goes to local folders under ./.rh-quickstart; when a cluster named "rh-cpu" is
saved, or S3 credentials are in the environment (RH_PREFECT_S3_BUCKET + AWS_*), those are used too.

Every name it saves lives in its own namespace, /rh-quickstart (a folder), so running it again replaces only its
own names (overwrite=True) and never re-points a name of yours such as "my-folder".

    python flows/quickstart.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rh_prefect.runtime import local_server

API_URL = local_server.ensure()  # before prefect is imported: Prefect reads its settings once

import rh_prefect as rh  # noqa: E402
from prefect import flow  # noqa: E402
from prefect.context import get_run_context  # noqa: E402


NS = "/rh-quickstart"


def say(text: str) -> None:
    print(text, flush=True)


@flow(name="rh-quickstart", log_prints=False)
def quickstart(workdir: str = ".rh-quickstart") -> dict[str, list[str]]:
    """Save a folder, fill it, copy it to a cluster (or a stand-in) and to a bucket (or a stand-in)."""
    root = Path(workdir).absolute()
    shown: dict[str, list[str]] = {}
    # The walkthrough's own namespace: a folder, so the names below live symbolically in it.
    rh.folder(name=NS, path=root).save(overwrite=True)

    # 1. A local folder, saved by name in the Prefect registry (save() returns the folder).
    local = rh.folder(name=f"{NS}/my-folder", path=root / "folder_tmp").save(overwrite=True)
    local.put({f"sample_file_{i}.txt": f"file{i}".encode() for i in range(3)}, overwrite=True)
    shown["local"] = local.ls(full_paths=False)
    say(f"1. saved folder '{local.name}' at {local.path}: {shown['local']}")

    # 2. Copy it to the rh-cpu cluster if one is saved; otherwise to a local stand-in for the cluster's disk.
    if rh.exists("rh-cpu"):
        c = rh.cluster("rh-cpu").up_if_not()
        cluster_folder = local.to(system=c)
        where = f"cluster {c.host}:{c.port}"
    else:
        cluster_folder = local.to(system="file", path=root / "cluster_standin" / "folder_tmp")
        where = "a local stand-in (save a cluster named 'rh-cpu' to use a real one)"
    shown["cluster"] = cluster_folder.ls(full_paths=False)
    say(f"2. copied to {where}: {shown['cluster']}")

    # 3. Reload the folder by name, anywhere, and copy it to a bucket (S3 when configured).
    reloaded = rh.folder(name=f"{NS}/my-folder")
    bucket = os.environ.get("RH_PREFECT_S3_BUCKET")
    if bucket:
        s3_folder = reloaded.to(system="s3", path=f"/{bucket}/my-folder")
    else:
        s3_folder = reloaded.to(system="file", path=root / "bucket_standin" / "my-folder")
    shown["bucket"] = s3_folder.ls(full_paths=False)
    say(f"3. reloaded '{reloaded.name}' by name and copied it to {s3_folder.url}: {shown['bucket']}")

    # 4. Copying again transfers nothing: unchanged files are skipped.
    again = reloaded.to(system=s3_folder.sys, path=s3_folder.path)
    say(f"4. copied again: {again.last_copy.summary()}")

    # 5. A folder is a namespace: resources saved under /ds live in the ds folder.
    ds = rh.folder(name=f"{NS}/ds", path=root / "ds").save(overwrite=True)
    bert = rh.folder(name=f"{NS}/ds/bert_preproc").save(overwrite=True)
    bert.put({"vocab.txt": "hello\nworld\n"}, overwrite=True)
    shown["ds"] = ds.resources()
    say(f"5. {ds.name} holds {shown['ds']}; {bert.name} lives at {bert.path}")

    # 6. A Table: a DataFrame stored as parquet, reloaded by name as a reference, streamed in exact batches.
    import pandas as pd

    df = pd.DataFrame({"id": range(1000), "text": [f"sentence {i}" for i in range(1000)]})
    rh.table(data=df, name=f"{NS}/my_pandas_table", path=root / "tables" / "pandas").save(overwrite=True)
    reloaded_table = rh.table(name=f"{NS}/my_pandas_table", dryrun=True)
    sizes = [len(batch) for batch in reloaded_table.stream(batch_size=100)]
    shown["table"] = [f"{len(reloaded_table)} rows", f"{len(sizes)} batches of {sizes[0]}"]
    say(f"6. table '{reloaded_table.name}' ({reloaded_table.kind}): {len(reloaded_table)} rows streamed as "
        f"{len(sizes)} batches of {sizes[0]}")

    # 7. A Blob: one object (a "checkpoint"), saved with its checksum, fetched back and verified.
    ckpt = rh.blob(data={"step": 100, "weights": [0.1, 0.2, 0.3]}, name=f"{NS}/bert-ft-ckpt",
                   path=root / "ckpts" / "bert.pkl").save(overwrite=True)
    state = rh.blob(name=f"{NS}/bert-ft-ckpt").fetch()
    shown["blob"] = [f"{ckpt.size} bytes", ckpt.sha256[:12]]
    say(f"7. blob '{ckpt.name}': {ckpt.size} bytes, sha256 {ckpt.sha256[:12]}..., fetched back: {state}")

    run = get_run_context()
    ui = API_URL.removesuffix("/api")
    say(f"\nLook in the Prefect UI: {ui}/runs/flow-run/{run.flow_run.id} (this run's task runs) and {ui}/blocks "
        "(the saved folders, table and blob).\nThe server keeps running; stop it with `.venv/bin/rh-prefect server down`.")
    return shown


if __name__ == "__main__":
    quickstart(sys.argv[1] if len(sys.argv) > 1 else ".rh-quickstart")
