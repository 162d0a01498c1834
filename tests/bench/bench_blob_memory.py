"""Peak memory of moving a large Blob between systems (a script, not a test).

    .venv/bin/python tests/bench/bench_blob_memory.py                 # 300 MiB, every route
    .venv/bin/python tests/bench/bench_blob_memory.py --size-mb 500 --routes file:s3,s3:ssh

It starts its own servers (Prefect, moto S3, fake-gcs-server on disk, sshd on 127.0.0.1), stores one blob of
``--size-mb`` MiB on each system, then measures every route in a fresh subprocess: after imports, connections and
one warm-up copy of a tiny blob, the child resets the kernel's peak-RSS mark to its current RSS, runs the
operation, and reads the peak (VmHWM) - ``ru_maxrss`` alone would still hold the import phase's higher peak.
The growth is what the operation needed; a bounded-memory copy stays far below the blob's size. The
``naive`` reference reads the whole file into memory and writes it out (the generic copy Runhouse used), so the
ratio column reads against a known unbounded baseline measured the same way on the same servers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/ holds infra.py (server recipes)

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # no per-task-run lines between the results

SYSTEMS = ("file", "ssh", "s3", "gs")
# (operation, source system, destination system)
DEFAULT_ROUTES = [
    ("to", "file", "s3"), ("to", "file", "gs"), ("to", "file", "ssh"),
    ("to", "s3", "ssh"), ("to", "ssh", "s3"), ("to", "s3", "gs"), ("to", "gs", "ssh"),
    ("to", "s3", "file"), ("to", "ssh", "file"), ("to", "gs", "file"),
    ("to", "s3", "s3"), ("to", "ssh", "ssh"),
    ("download", "s3", "file"), ("upload", "file", "s3"), ("verify", "ssh", "ssh"),
    ("naive", "file", "s3"), ("naive", "s3", "ssh"),
]
CLUSTER = "bench-blob-cluster"
MiB = 2**20


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> float:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0) and return the current RSS in MiB.

    Without the reset, ``ru_maxrss`` still holds the peak of the import phase, which hides any operation that
    needs less than that; where the reset is refused we fall back to ``ru_maxrss`` and say so.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        print("warning: cannot reset the peak RSS mark; reporting ru_maxrss (a lower bound on growth)",
              file=sys.stderr)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return _status_mib("VmRSS")


def peak_mib() -> float:
    """Peak RSS since the last :func:`reset_peak` (VmHWM)."""
    return _status_mib("VmHWM")


# ------------------------------------------------------------------------------------------- child side


def child(spec: dict) -> dict:
    """Run one operation in this (fresh) process and report its memory growth."""
    import rh_prefect as rh

    places = spec["places"]

    def system_arg(key: str):
        return rh.cluster(CLUSTER) if key == "ssh" else key

    src = rh.blob(name=spec["src_blob"])
    tiny = rh.blob(name=spec["tiny_blob"])
    dst_key, dst_path = spec["dst"], f"{places[spec['dst']]}/{spec['label']}.bin"
    dst_sys = system_arg(dst_key)

    # Warm up: imports, connections on both ends, the Prefect task machinery.
    tiny.to(dst_sys, path=dst_path + ".warm")
    src.exists_in_system()
    before = reset_peak()
    started = time.perf_counter()
    op = spec["op"]
    if op == "to":
        out = src.to(dst_sys, path=dst_path)
        assert out.size == src.size and out.sha256 == src.sha256
        out.rm()
    elif op == "download":
        local = os.path.join(places["file"], spec["label"] + ".download")
        src.download(local)
        os.remove(local)
    elif op == "upload":
        target = rh.blob(system=dst_sys, path=dst_path, serializer="bytes")
        target.upload(spec["local_file"])
        assert target.sha256 == src.sha256
        target.rm()
    elif op == "verify":
        src.verify()
    elif op == "naive":  # the unbounded reference: the whole file through memory
        target = rh.blob(system=dst_sys, path=dst_path)
        data = src.sys.fs.cat_file(src.fs_path)
        target.sys.fs.pipe_file(target.fs_path, data)
        del data
        target.rm()
    else:
        raise SystemExit(f"unknown operation {op!r}")
    seconds = time.perf_counter() - started
    after = peak_mib()
    return {"before_mib": before, "after_mib": after, "seconds": seconds}


# ------------------------------------------------------------------------------------------- parent side


def make_local_file(path: Path, size: int) -> None:
    """Random bytes, written a chunk at a time (the parent never holds the blob either)."""
    chunk = os.urandom(8 * MiB)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(len(chunk), size - written)
            f.write(chunk[:n])
            written += n
            chunk = chunk[1:] + chunk[:1]  # vary the chunks a little


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--routes", default="", help="comma-separated op:src:dst or src:dst (op 'to'); default all")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return

    routes = DEFAULT_ROUTES
    if args.routes:
        routes = []
        for item in args.routes.split(","):
            parts = item.split(":")
            routes.append(tuple(parts) if len(parts) == 3 else ("to", *parts))

    from infra import FakeGCSServer, MotoS3Server, PrefectServer, SSHServer

    size = args.size_mb * MiB
    run = uuid.uuid4().hex[:8]
    with PrefectServer() as prefect, MotoS3Server() as s3, FakeGCSServer(backend="filesystem") as gcs, \
            SSHServer() as sshd, tempfile.TemporaryDirectory(prefix="rh-bench-blob-") as tmp:
        os.environ.update(PREFECT_API_URL=prefect.api_url, PREFECT_HOME=str(Path(tmp) / "prefect-client"))
        os.environ.update(s3.env())
        os.environ.update(gcs.env())
        import rh_prefect as rh

        rh.cluster(name=CLUSTER, host=sshd.host, port=sshd.port, user=sshd.user,
                   ssh_key=str(sshd.client_key_path), known_hosts=str(sshd.known_hosts_path)).save()
        cluster = rh.cluster(CLUSTER)
        bucket = f"rh-bench-{run}"
        for key in ("s3", "gs"):
            rh.folder(system=key, path=f"/{bucket}/x").mkdir()
        places = {"file": str(Path(tmp) / "data"), "ssh": f"rh-bench-{run}", "s3": f"/{bucket}/data",
                  "gs": f"/{bucket}/data"}
        Path(places["file"]).mkdir()

        print(f"blob of {args.size_mb} MiB; servers up (prefect {prefect.startup_seconds:.0f}s)", flush=True)
        local_file = Path(places["file"]) / "source.bin"
        make_local_file(local_file, size)
        local = rh.blob(path=str(local_file), serializer="bytes").verify().save(f"bench-src-file-{run}")
        tiny_local = rh.blob(data=b"warm-up", path=str(Path(places["file"]) / "tiny.bin"))
        names = {"file": local.name}
        tiny = {"file": tiny_local.save(f"bench-tiny-file-{run}").name}
        needed = {src for _, src, _ in routes}
        for key in sorted(needed - {"file"}):
            sys_arg = cluster if key == "ssh" else key
            started = time.perf_counter()
            names[key] = local.to(sys_arg, path=f"{places[key]}/source.bin").save(f"bench-src-{key}-{run}").name
            tiny[key] = tiny_local.to(sys_arg, path=f"{places[key]}/tiny.bin").save(f"bench-tiny-{key}-{run}").name
            print(f"  placed source on {key} in {time.perf_counter() - started:.1f}s", flush=True)

        rows = []
        for op, src_key, dst_key in routes:
            label = f"{op}-{src_key}-to-{dst_key}-{uuid.uuid4().hex[:6]}"
            spec = {"op": op, "src_blob": names[src_key], "tiny_blob": tiny[src_key], "dst": dst_key,
                    "places": places, "label": label, "local_file": str(local_file)}
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                  text=True, timeout=1800)
            result = next((json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")),
                          None)
            if proc.returncode != 0 or result is None:
                print(f"{op} {src_key}->{dst_key}: FAILED\n{proc.stderr[-3000:]}", flush=True)
                continue
            growth = result["after_mib"] - result["before_mib"]
            rows.append((op, src_key, dst_key, result, growth))
            print(f"{op:8s} {src_key:>4s} -> {dst_key:<4s}  {args.size_mb / result['seconds']:7.1f} MiB/s   "
                  f"peak RSS {result['after_mib']:7.1f} MiB  (baseline {result['before_mib']:6.1f}, growth "
                  f"{growth:6.1f} MiB = {growth / args.size_mb:5.2f} x blob)", flush=True)

        # the ssh place is under the login user's home on this machine: remove what we made
        cluster.system().fs.rm(cluster.system().fs_path(places["ssh"]), recursive=True)

        print(f"\nsummary for a {args.size_mb} MiB blob (growth of peak RSS during the operation):")
        print(f"{'operation':<24s}{'MiB/s':>8s}{'growth MiB':>12s}{'x blob':>8s}")
        for op, src_key, dst_key, result, growth in rows:
            print(f"{op + ' ' + src_key + '->' + dst_key:<24s}{args.size_mb / result['seconds']:8.1f}"
                  f"{growth:12.1f}{growth / args.size_mb:8.2f}")


if __name__ == "__main__":
    main()
