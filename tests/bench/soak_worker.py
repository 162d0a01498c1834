#!/usr/bin/env python
"""Soak the cluster's long-lived worker: many consecutive copies run inside one worker process; its memory.

Run (from the repository root; ~5 min for 500 copies on a 2-core machine)::

    .venv/bin/python tests/bench/soak_worker.py [--copies 500] [--files 3] [--every 50]

The in-process worker (``rh_prefect.runtime.inprocess``) runs every copy sent to a cluster on a thread of one
long-lived process, so what one copy leaves behind stays for the next. This starts a Prefect server, an sshd on
this machine standing in for the cluster (its worker started with ``Cluster.start_worker()``, as for a real one)
and moto S3, then sends ``--copies`` small copies cluster -> S3 one after the other with ``via="worker"``
(``--files`` files of 4 KiB each, every copy to a new prefix, so each moves bytes), and prints the worker
process's resident memory (VmRSS) after the warm-up copies and every ``--every`` copies. Target (issue 18.4):
it grows by less than 50 MB over 500 copies. Every copy must be run by the same process (its pid is each flow
run's infrastructure pid): a restart would hide a leak, and is reported as a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

WARM_UP = 10  # copies before the baseline: imports, clients and caches a first copy fills


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--copies", type=int, default=500)
    p.add_argument("--files", type=int, default=3, help="files per copy (4 KiB each)")
    p.add_argument("--every", type=int, default=50, help="print the worker's memory every this many copies")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="rh-soak-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, True)
        from infra import MotoS3Server, PrefectServer, SSHServer

        prefect = stack.enter_context(PrefectServer())
        sshd = stack.enter_context(SSHServer())
        moto = stack.enter_context(MotoS3Server())
        os.environ.update(PREFECT_API_URL=prefect.api_url, PREFECT_HOME=str(tmp / "client-home"),
                          PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore", RH_PREFECT_PROGRESS="off",
                          PREFECT_SERVER_ANALYTICS_ENABLED="false")
        import s3fs

        import rh_prefect as rh
        from rh_prefect.blocks import S3Credentials
        from rh_prefect.systems import get_system

        cluster = rh.cluster(host=sshd.host, port=sshd.port, user=sshd.user, ssh_key=str(sshd.client_key_path),
                             known_hosts=str(sshd.known_hosts_path), work_queue=f"rh-soak-{uuid.uuid4().hex[:6]}",
                             prefect_bin=str(Path(sys.executable).parent / "prefect"), python=sys.executable,
                             project_dir=str(REPO), api_url=prefect.api_url)
        s3 = get_system("s3", credentials=S3Credentials(aws_access_key_id=moto.access_key,
                                                        aws_secret_access_key=moto.secret_key,
                                                        endpoint_url=moto.endpoint_url))
        fs = s3fs.S3FileSystem(key=moto.access_key, secret=moto.secret_key, endpoint_url=moto.endpoint_url,
                               skip_instance_cache=True)
        bucket = "rh-soak"
        fs.mkdir(bucket)
        info = cluster.start_worker(env={"PREFECT_HOME": str(tmp / "worker-home")})
        stack.callback(lambda: (cluster.stop_worker(), Path(info.log_path).unlink(missing_ok=True)))
        src = rh.folder(path=str(tmp / "src"), system=cluster)
        src.put({f"f{i}.bin": os.urandom(4096) for i in range(args.files)})

        pids: set[int] = set()
        baseline = None
        began = time.monotonic()
        print(f"{'copies':>7} {'worker RSS MB':>14} {'growth MB':>10} {'s/copy':>7}", flush=True)
        for n in range(1, args.copies + 1):
            new = src.to(s3, f"/{bucket}/c{n}", via="worker")
            pid = int(new.flow_run.infrastructure_pid)
            pids.add(pid)
            if n % 20 == 0:  # keep the bucket small: moto's listing time would grow with it
                fs.rm(f"{bucket}/c*", recursive=True)
            if n == WARM_UP:
                baseline = rss_mb(pid)
                print(f"{n:>7} {baseline:>14.1f} {0.0:>10.1f} {(time.monotonic() - began) / n:>7.2f}", flush=True)
            elif baseline is not None and (n % args.every == 0 or n == args.copies):
                now = rss_mb(pid)
                print(f"{n:>7} {now:>14.1f} {now - baseline:>10.1f} {(time.monotonic() - began) / n:>7.2f}",
                      flush=True)
        growth = rss_mb(pid) - (baseline or 0)
        from rh_prefect.runtime import dispatch

        dispatch.settle_cleanups()  # the last copy's snapshots, before the servers stop
        same = len(pids) == 1
        by = "one worker process" if same else f"{len(pids)} processes (it was restarted!)"
        print(f"\n{args.copies} copies in {time.monotonic() - began:.0f} s by {by}; RSS growth after the {WARM_UP} "
              f"warm-up copies: {growth:.1f} MB (target < 50 MB: {'met' if growth < 50 else 'NOT met'})")
        return 0 if same and growth < 50 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
