"""Load (issue 8, point 6): 50 concurrent save/load/copy operations from several processes against one Prefect
server complete without errors or lost registry entries.

Five processes are started, import everything, and wait at a barrier (a line on stdin); released together,
each runs ten operations - Folder, Blob and Table saves, loads by name of resources saved before the run and
by the process itself, small copies local -> S3 saved under a name, and a save of one name that all five
processes write - against the suite's Prefect server (PREFECT_API_URL) and moto S3. Afterwards every saved
name loads with the right data and the registry holds exactly the expected entries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import pyarrow as pa

import rh_prefect as rh
from rh_prefect.runtime import registry

PROCESSES = 5
OPS_PER_PROCESS = 10

_WORKER = textwrap.dedent('''
    import json, os, sys, time, traceback
    import pyarrow as pa
    import rh_prefect as rh
    from rh_prefect.runtime import registry

    index, run, root, bucket = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    seeds = json.loads(sys.argv[5])
    me = f"p{index}"

    def name(kind):
        return f"load-{run}-{me}-{kind}"

    def files(kind):
        return {f"{kind}/{i}.txt": f"{me} {kind} {i}".encode() for i in range(3)}

    def rows(kind):
        return pa.table({"id": list(range(20)), "who": [f"{me}-{kind}"] * 20})

    def folder_save():
        rh.folder(name=name("folder"), path=f"{root}/{me}/folder").put(files("folder")).save()
        return name("folder")

    def blob_save():
        rh.blob({"who": me, "kind": "blob"}, name=name("blob"), path=f"{root}/{me}/blob.pkl").save()
        return name("blob")

    def table_save():
        rh.table(data=rows("table"), name=name("table"), path=f"{root}/{me}/table").save()
        return name("table")

    def load_seed_folder():
        f = rh.folder(name=seeds["folder"])
        assert {k: f.get(k) for k in f.ls(full_paths=False, recursive=True)} == {"a.txt": b"seed a", "b/c.txt": b"seed c"}

    def load_seed_blob():
        assert rh.blob(name=seeds["blob"]).fetch() == {"seed": list(range(10))}

    def load_seed_table():
        assert rh.table(name=seeds["table"]).fetch().column("id").to_pylist() == list(range(100))

    def copy_to_s3():
        src = rh.folder(path=f"{root}/{me}/to-s3").put(files("s3"))
        src.to("s3", path=f"/{bucket}/{me}/folder").save(name("s3-folder"))
        return name("s3-folder")

    def blob_to_s3():
        b = rh.blob(b"blob bytes of " + me.encode(), path=f"{root}/{me}/s3.bin")
        b.to("s3", path=f"/{bucket}/{me}/blob.bin").save(name("s3-blob"))
        return name("s3-blob")

    def load_own():
        for kind in ("folder", "blob", "table"):
            assert rh.exists(name(kind))
        f = rh.folder(name=name("folder"))
        assert f.get("folder/0.txt") == f"{me} folder 0".encode()

    def shared_save():
        b = rh.blob(f"written by {me}", path=f"{root}/{me}/shared.txt")
        b.save(f"load-{run}-shared", overwrite=True)  # every process replaces the one name, on purpose
        return f"load-{run}-shared"

    # Rotated per process: at any moment the processes run different kinds of operation.
    ops = [folder_save, load_seed_folder, blob_save, load_seed_blob, table_save, copy_to_s3, load_seed_table,
           blob_to_s3, shared_save, load_own]
    k = index % 4
    ops = ops[k:k + 1] + ops[:k] + ops[k + 1:]  # one of the first four first; load_own stays last
    print("READY", flush=True)
    sys.stdin.readline()  # the barrier
    results = []
    for op in ops:
        began = time.monotonic()
        try:
            saved = op()
            results.append({"op": op.__name__, "ok": True, "saved": saved, "seconds": time.monotonic() - began})
        except BaseException as exc:
            results.append({"op": op.__name__, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                            "trace": traceback.format_exc()[-2000:], "seconds": time.monotonic() - began})
    print("RESULTS " + json.dumps(results), flush=True)
''')


def test_fifty_concurrent_operations_from_five_processes(prefect_server, s3_env, s3_bucket, tmp_path):
    run = uuid.uuid4().hex[:10]
    # Resources every process loads, saved before the barrier.
    seeds = {"folder": f"load-{run}-seed-folder", "blob": f"load-{run}-seed-blob", "table": f"load-{run}-seed-table"}
    rh.folder(name=seeds["folder"], path=tmp_path / "seed" / "folder").put(
        {"a.txt": b"seed a", "b/c.txt": b"seed c"}).save()
    rh.blob({"seed": list(range(10))}, name=seeds["blob"], path=tmp_path / "seed" / "blob.pkl").save()
    rh.table(data=pa.table({"id": list(range(100))}), name=seeds["table"], path=tmp_path / "seed" / "table").save()

    procs = []
    try:
        for i in range(PROCESSES):
            env = dict(os.environ, PREFECT_API_URL=prefect_server.api_url,
                       PREFECT_HOME=str(tmp_path / f"prefect-home-{i}"))
            procs.append(subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(i), run, str(tmp_path / "data"), s3_bucket, json.dumps(seeds)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                cwd=tmp_path,
            ))
        for p in procs:  # everyone imported everything and waits at the barrier
            line = p.stdout.readline()
            assert line.strip() == "READY", (line, p.stderr.read()[-3000:] if p.poll() is not None else "")
        began = time.monotonic()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=120) for p in procs]
        wall = time.monotonic() - began
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()

    results = []
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        line = next(line for line in out.splitlines() if line.startswith("RESULTS "))
        results += json.loads(line[len("RESULTS "):])
    failures = [r for r in results if not r["ok"]]
    by_op: dict[str, list[float]] = {}
    for r in results:
        by_op.setdefault(r["op"], []).append(r["seconds"])
    print(f"\nload: {len(results)} operations from {PROCESSES} processes in {wall:.1f} s wall, {len(failures)} failed;"
          " mean/max seconds per operation: "
          + ", ".join(f"{op} {sum(t) / len(t):.2f}/{max(t):.2f}" for op, t in sorted(by_op.items())))
    assert len(results) == PROCESSES * OPS_PER_PROCESS
    assert failures == [], "\n\n".join(f"{r['op']}: {r['error']}\n{r['trace']}" for r in failures)

    # Every saved name is registered once and loads with the data its process wrote.
    saved = {r["saved"] for r in results if r.get("saved")}
    per_process = ["folder", "blob", "table", "s3-folder", "s3-blob"]
    expected = {f"load-{run}-p{i}-{kind}" for i in range(PROCESSES) for kind in per_process} | {f"load-{run}-shared"}
    assert saved == expected
    entries = [(full, kind) for full, kind in registry.list_names("@") if full.startswith(f"@/load-{run}-")]
    assert len(entries) == len(expected) + len(seeds)  # nothing lost, nothing duplicated
    assert {full for full, _ in entries} == {f"@/{n}" for n in expected | set(seeds.values())}
    for i in range(PROCESSES):
        me = f"p{i}"
        f = rh.folder(name=f"load-{run}-{me}-folder")
        assert {k: f.get(k) for k in f.ls(full_paths=False, recursive=True)} == {
            f"folder/{j}.txt": f"{me} folder {j}".encode() for j in range(3)}
        assert rh.blob(name=f"load-{run}-{me}-blob").fetch() == {"who": me, "kind": "blob"}
        table = rh.table(name=f"load-{run}-{me}-table").fetch()
        assert table.column("who").to_pylist() == [f"{me}-table"] * 20 and table.column("id").to_pylist() == list(range(20))
        s3_folder = rh.folder(name=f"load-{run}-{me}-s3-folder")
        assert (s3_folder.system, s3_folder.path) == ("s3", f"/{s3_bucket}/{me}/folder")
        assert {k: s3_folder.get(k) for k in s3_folder.ls(full_paths=False, recursive=True)} == {
            f"s3/{j}.txt": f"{me} s3 {j}".encode() for j in range(3)}
        s3_blob = rh.blob(name=f"load-{run}-{me}-s3-blob")
        assert s3_blob.system == "s3" and s3_blob.fetch() == b"blob bytes of " + me.encode()
    print(f"verified in {time.monotonic() - began - wall:.1f} s")
    shared = rh.blob(name=f"load-{run}-shared")
    assert shared.fetch() in {f"written by p{i}" for i in range(PROCESSES)}  # one whole version, verified
    assert shared.path == str(tmp_path / "data" / shared.fetch().split()[-1] / "shared.txt")

    for name in expected | set(seeds.values()):
        rh.delete(name)
