#!/usr/bin/env python
"""Colocated copies end to end: cluster -> S3 run by the cluster's own Prefect worker, against rclone through the host.

Run (from the repository root, as root: it creates a network namespace; ~3 min, ~8 min with --link-mbit)::

    .venv/bin/python tests/bench/bench_colocated.py [--reps 3] [--workloads tree,big] [--link-mbit 200]

``bench_transfer.py`` times the copy engine alone; there the colocated worker's copy is modelled as a local->s3
copy on this machine. This script measures what a user waits for instead: ``folder.to(s3, path, via="worker")``
from the laptop, i.e. registering the run's block snapshots, creating the flow run, the worker picking it up,
starting the flow-run process, the copy on the cluster, and the caller seeing the run finish.

Topology (``tests/netns.py``): the cluster is a network namespace with its own address and sshd; the worker is
started inside it with ``Cluster.start_worker()``; S3 (moto) runs inside the same namespace, as S3 in the
cluster's region; this process is the laptop, on the host side of the veth pair (the Prefect API reaches the
worker through a TCP relay on that link). A copy through the host (rclone, or rh-prefect with ``via="local"``)
carries every byte across the link twice (SFTP in, S3 out); the worker's copy never crosses it.

``--link-mbit N`` shapes the link in both directions to N Mbit/s with a token bucket (``tc tbf``; this kernel has
no netem, so no added latency), as a laptop's network would; without it the link is an unshaped veth
(loopback speed). ``--worker-query-seconds S`` sets how often the worker polls its queue
(PREFECT_WORKER_QUERY_SECONDS; default: what ``Cluster.start_worker()`` sets, 2 s; Prefect's own default is 10 s).

Each rep runs the three ways in rotation against a fresh destination, checks the destination holds exactly
the source's keys and sizes, then deletes it. The worker run's time is split with the flow run's state history:
until Scheduled (snapshots + flow run created), Scheduled -> Pending (waiting for the worker's poll), Pending ->
Running (the flow-run process starting), Running -> Completed (the copy task and the flow around it), Completed
-> returned (the caller noticing). Results: ``tests/bench/results/colocated-latest.{md,json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(HERE)]

from bench_transfer import (  # noqa: E402
    _wait_child, build_workloads, ensure_rclone, log, machine_desc, moto_spill_dir, rclone_cmd, rclone_env,
)

WAYS = ("rclone through host", "rh-prefect through host", "rh-prefect via the cluster's worker")
TARGET = 1.5  # issue 7: ssh->s3 with the colocated worker >= 1.5x rclone through the host


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workloads", default="tree,big", help="comma-separated: tree, big")
    p.add_argument("--link-mbit", type=float, default=None,
                   help="shape the laptop<->cluster link to this many Mbit/s each way (default: unshaped)")
    p.add_argument("--worker-query-seconds", type=float, default=None,
                   help="PREFECT_WORKER_QUERY_SECONDS for the worker (default: start_worker's, 2 s)")
    p.add_argument("--quick", action="store_true", help="200 files / 32 MiB workloads, for a smoke run")
    p.add_argument("--out", default=None, help="results path without suffix (default: results/colocated-latest)")
    return p.parse_args(argv)


def shape(lab: Any, mbit: float) -> None:
    """A token bucket of ``mbit`` on each end of the veth pair (each end shapes what it sends)."""
    rate = f"{mbit}mbit"
    # Bursts must hold a whole GSO segment (up to 64 KiB on a veth) or tbf drops it.
    burst = str(max(256 * 1024, int(mbit * 1e6 / 8 / 100)))
    for argv in (["tc", "qdisc", "replace", "dev", lab.veth_host, "root", "tbf", "rate", rate, "burst", burst,
                  "latency", "100ms"],
                 lab.argv("tc", "qdisc", "replace", "dev", lab.veth_ns, "root", "tbf", "rate", rate, "burst",
                          burst, "latency", "100ms")):
        subprocess.run(argv, check=True, capture_output=True, text=True)


def s3_listing(fs: Any, prefix: str) -> dict[str, int]:
    fs.invalidate_cache()
    try:
        found = fs.find(prefix, detail=True)
    except FileNotFoundError:
        return {}
    return {k[len(prefix) + 1:]: int(v["size"]) for k, v in found.items() if k.startswith(prefix + "/")}


def verify_and_drop(fs: Any, prefix: str, expected: dict[str, int]) -> Optional[str]:
    got = s3_listing(fs, prefix)
    if got:
        fs.rm(prefix, recursive=True)
    if got == expected:
        return None
    return (f"destination differs: {len(set(expected) - set(got))} missing, {len(set(got) - set(expected))} "
            f"extra, {sum(1 for k in set(got) & set(expected) if got[k] != expected[k])} wrong size")


def phases(run: Any, called: float, returned: float, wall0: float) -> dict[str, float]:
    """Seconds spent in each part of a worker run, from the flow run's state history (server timestamps;
    ``wall0`` maps this process's monotonic clock onto wall time)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(run.id)
    first: dict[str, float] = {}
    for s in sorted(states, key=lambda s: s.timestamp):
        first.setdefault(s.type.value, s.timestamp.timestamp())
    t_call, t_ret = wall0 + called, wall0 + returned
    sched, pend, runn, done = (first.get(k) for k in ("SCHEDULED", "PENDING", "RUNNING", "COMPLETED"))
    out = {}
    if sched and pend and runn and done:
        out = {"to_scheduled": sched - t_call, "pickup_wait": pend - sched, "process_start": runn - pend,
               "flow_run": done - runn, "noticed": t_ret - done}
    return out


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if os.geteuid() != 0:
        print("bench_colocated needs root (it creates a network namespace and a veth pair)", file=sys.stderr)
        return 2
    rclone_version = ensure_rclone()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    tmp = Path(tempfile.mkdtemp(prefix="rh-bench-colo-"))
    results: dict[str, Any] = {"runs": []}
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, True)
        from infra import PrefectServer
        from netns import NetnsLab, NetnsMotoServer, NetnsSSHServer, TcpRelay

        spill, spill_desc = moto_spill_dir("memory")
        if spill is not None:
            stack.callback(shutil.rmtree, spill, True)
        log("building workloads")
        expected = build_workloads(tmp / "work", args.quick)
        log("starting the Prefect server, the cluster's namespace, its sshd and S3")
        prefect = stack.enter_context(PrefectServer())
        lab = NetnsLab().up()
        stack.callback(lab.down)
        sshd = stack.enter_context(NetnsSSHServer(lab))
        moto = stack.enter_context(NetnsMotoServer(lab, spill_dir=spill))
        relay = stack.enter_context(TcpRelay(lab.host_ip, "127.0.0.1", prefect.port))
        os.environ.update(PREFECT_API_URL=prefect.api_url, PREFECT_HOME=str(tmp / "client-home"),
                          PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore", RH_PREFECT_PROGRESS="off",
                          PREFECT_SERVER_ANALYTICS_ENABLED="false")

        import s3fs

        import rh_prefect as rh
        from rh_prefect import settings
        from rh_prefect.blocks import S3Credentials
        from rh_prefect.systems import get_system

        queue = f"rh-bench-{uuid.uuid4().hex[:6]}"
        cluster = rh.cluster(host=sshd.host, port=sshd.port, user=sshd.user, ssh_key=str(sshd.client_key_path),
                             known_hosts=str(sshd.known_hosts_path), work_queue=queue,
                             prefect_bin=str(Path(sys.executable).parent / "prefect"), python=sys.executable,
                             project_dir=str(REPO), api_url=f"http://{lab.host_ip}:{relay.port}/api")
        creds = S3Credentials(aws_access_key_id=moto.access_key, aws_secret_access_key=moto.secret_key,
                              endpoint_url=moto.endpoint_url)
        s3 = get_system("s3", credentials=creds)
        fs = s3fs.S3FileSystem(key=moto.access_key, secret=moto.secret_key, endpoint_url=moto.endpoint_url,
                               skip_instance_cache=True)
        bucket = "rh-bench-colo"
        fs.mkdir(bucket)
        worker_env = {"PREFECT_HOME": str(tmp / "worker-home")}
        if args.worker_query_seconds is not None:
            worker_env["PREFECT_WORKER_QUERY_SECONDS"] = str(args.worker_query_seconds)
        logs: list[str] = []

        def stop_worker() -> None:  # the "cluster" is this machine: its worker log goes too
            cluster.stop_worker()
            for path in logs:
                Path(path).unlink(missing_ok=True)

        stack.callback(stop_worker)
        info = cluster.start_worker(env=worker_env)
        logs.append(info.log_path)
        log(f"worker {info.name} online (pid {info.pid}) in namespace {lab.name}")
        # the bench process's own PREFECT_* settings (its client home, API URL) are not rclone's business
        rclone = rclone_env(tmp, {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}, moto, sshd)
        # One small dispatch first: registers the transfer deployment (once per server) and loads this
        # process's clients; not part of the table.
        warm = rh.folder(path=str(tmp / "work" / "warm"), system=cluster)
        (tmp / "work" / "warm").mkdir()
        (tmp / "work" / "warm" / "x.bin").write_bytes(b"x" * 4096)
        t0 = time.perf_counter()
        warm.to(s3, f"/{bucket}/warm", via="worker")
        log(f"warm-up dispatch (deployment registered): {time.perf_counter() - t0:.1f} s")
        warm.to(s3, f"/{bucket}/warm-local", via="local")
        if args.link_mbit:
            shape(lab, args.link_mbit)
            log(f"link shaped to {args.link_mbit:g} Mbit/s each way")
        wall0 = time.time() - time.monotonic()

        for workload in workloads:
            src_path = str(tmp / "work" / workload)
            src = rh.folder(path=src_path, system=cluster)
            for rep in range(args.reps):
                order = WAYS[rep % 3:] + WAYS[:rep % 3]
                for way in order:
                    run_id = f"{workload}-{rep}-{uuid.uuid4().hex[:6]}"
                    dst = f"{bucket}/{run_id}"
                    row: dict[str, Any] = {"workload": workload, "rep": rep, "way": way}
                    if way == "rclone through host":
                        cpu: list[float] = []
                        code, seconds, _ = _wait_child(
                            rclone_cmd({"kind": "ssh", "path": src_path}, {"kind": "s3", "path": "/" + dst}),
                            rclone, tmp / "rclone.log", cpu)
                        row.update(seconds=seconds, ok=code == 0)
                    else:
                        via = "worker" if "worker" in way else "local"
                        called = time.monotonic()
                        new = src.to(s3, "/" + dst, via=via)
                        returned = time.monotonic()
                        row.update(seconds=returned - called, ok=True)
                        if via == "worker":
                            row["phases"] = phases(new.flow_run, called, returned, wall0)
                    row["error"] = verify_and_drop(fs, dst, expected[workload])
                    row["ok"] = row["ok"] and row["error"] is None
                    results["runs"].append(row)
                    extra = " ".join(f"{k} {v:.2f}" for k, v in row.get("phases", {}).items())
                    log(f"{workload} rep {rep} {way}: {row['seconds']:.2f} s {'ok' if row['ok'] else row['error']}"
                        f" {extra}")

        results["meta"] = {
            "when": f"{started} - {time.strftime('%H:%M:%S %Z')}", "machine": machine_desc(), "rclone": rclone_version,
            "link_mbit": args.link_mbit, "worker_query_seconds": args.worker_query_seconds, "reps": args.reps,
            "worker_default_query_seconds": settings.current().worker_query_seconds,
            "quick": args.quick, "moto_spill": spill_desc,
        }
    text = render(results, workloads)
    print(text)
    out = Path(args.out) if args.out else HERE / "results" / ("colocated-quick" if args.quick else "colocated-latest")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(text + "\n")
    return 0 if all(r["ok"] for r in results["runs"]) else 1


def render(results: dict, workloads: list[str]) -> str:
    meta = results["meta"]
    runs = results["runs"]
    link = f"{meta['link_mbit']:g} Mbit/s each way (tc tbf)" if meta["link_mbit"] else "unshaped veth"
    poll = f"{meta['worker_query_seconds']:g} s" if meta["worker_query_seconds"] is not None else \
        f"{meta['worker_default_query_seconds']} s (start_worker's default)"
    lines = [f"Colocated copy, cluster -> S3, end to end ({meta['when']}; link laptop<->cluster: {link}; worker "
             f"polls every {poll}; best of {meta['reps']})", "",
             "| workload | rclone through host s | rh-prefect through host s | rh-prefect via worker s "
             "| ratio rclone / worker | target >= 1.5 | worker run: to scheduled / pickup wait / process start / "
             "flow run / noticed s |", "|---|---:|---:|---:|---:|---|---|"]
    for w in workloads:
        best = {}
        for way in WAYS:
            ok = [r for r in runs if r["workload"] == w and r["way"] == way and r["ok"]]
            best[way] = min(ok, key=lambda r: r["seconds"]) if ok else None
        cells = [f"{best[way]['seconds']:.2f}" if best[way] else "failed" for way in WAYS]
        rc, wk = best[WAYS[0]], best[WAYS[2]]
        ratio = rc["seconds"] / wk["seconds"] if rc and wk else None
        ph = wk.get("phases") if wk else None
        split = " / ".join(f"{ph[k]:.2f}" for k in ("to_scheduled", "pickup_wait", "process_start", "flow_run",
                                                     "noticed")) if ph else "n/a"
        met = "n/a" if ratio is None else ("yes" if ratio >= TARGET else "**NO**")
        lines.append(f"| {w} | {cells[0]} | {cells[1]} | {cells[2]} | "
                     f"{'n/a' if ratio is None else f'{ratio:.2f}'} | {met} | {split} |")
    failed = [r for r in runs if not r["ok"]]
    lines += ["", f"Machine: {meta['machine']}; rclone {meta['rclone']}; moto objects over 5 MiB on "
              f"{meta['moto_spill']}. Times are what the caller waits for (rclone: its whole process)."]
    if failed:
        lines.append(f"Failed runs: {len(failed)}: " + "; ".join(f"{r['workload']} {r['way']}: {r['error']}"
                                                                  for r in failed[:5]))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
