#!/usr/bin/env python
"""Colocated copies end to end: cluster -> S3 run by the cluster's own worker, against rclone through the host.

Run (from the repository root, as root: it creates a network namespace; ~4 min, ~9 min with --link-mbit)::

    .venv/bin/python tests/bench/bench_colocated.py [--reps 5] [--workloads tree,big] [--link-mbit 100]

``bench_transfer.py`` times the copy engine alone; there the colocated worker's copy is modelled as a local->s3
copy on this machine. This script measures what a user waits for instead: ``folder.to(s3, path, via="worker")``
from the laptop, i.e. registering the run's block snapshots, creating the flow run, the worker picking it up
(the rh-inprocess worker: woken by the server's event, the copy on a thread of its long-lived process), the copy
on the cluster, and the caller seeing the run finish.

Topology (``tests/netns.py``): the cluster is a network namespace with its own address and sshd; the worker is
started inside it with ``Cluster.start_worker()``; S3 (moto) runs inside the same namespace, as S3 in the
cluster's region; this process is the laptop, on the host side of the veth pair (the Prefect API reaches the
worker through a TCP relay on that link). A copy through the host (rclone, or rh-prefect with ``via="local"``)
carries every byte across the link twice (SFTP in, S3 out); the worker's copy never crosses it.

``--link-mbit N`` shapes the link in both directions to N Mbit/s with a token bucket (``tc tbf``; this kernel has
no netem, so no added latency), as a laptop's network would; without it the link is an unshaped veth
(loopback speed). ``--worker-query-seconds S`` sets how often the worker also polls its queue
(PREFECT_WORKER_QUERY_SECONDS; default: what ``Cluster.start_worker()`` sets, 2 s); the worker is woken by the
server's events before that. ``--process-worker`` runs each copy as a flow-run process instead
(RH_PREFECT_WORKER_IN_PROCESS=false: what the worker did before it ran copies in-process).

Each rep runs the three ways in rotation against a fresh destination, checks the destination holds exactly
the source's keys and sizes, then deletes it. The worker run's fixed cost (issue 18.3: median at most 0.5 s) is
split in two, from the copy task run's start and end (clocks of one machine): **call -> copy starts** (snapshots,
the flow run, the worker waking up, the flow engine starting) and **copy ends -> caller returns** (the run's end,
the caller learning it). The flow run's state history splits the first part further: until Scheduled, Scheduled
-> Pending (the worker claiming it), Pending -> Running (the engine starting). Times are medians over the reps.
Results: ``tests/bench/results/colocated-latest.{md,json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
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
TARGET = 1.5  # issue 7: ssh->s3 with the colocated worker >= 1.5x rclone through the host (at 100 Mbit/s)
FIXED_TARGET = 0.5  # issue 18.3: median (call -> copy starts) + (copy ends -> caller returns) <= 0.5 s


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--workloads", default="tree,big", help="comma-separated: tree, big")
    p.add_argument("--link-mbit", type=float, default=None,
                   help="shape the laptop<->cluster link to this many Mbit/s each way (default: unshaped)")
    p.add_argument("--worker-query-seconds", type=float, default=None,
                   help="PREFECT_WORKER_QUERY_SECONDS for the worker (default: start_worker's, 2 s)")
    p.add_argument("--process-worker", action="store_true",
                   help="a flow-run process per copy (RH_PREFECT_WORKER_IN_PROCESS=false), for comparison")
    p.add_argument("--quick", action="store_true", help="200 files / 32 MiB workloads, for a smoke run")
    p.add_argument("--out", default=None, help="results path without suffix (default: results/colocated-latest)")
    return p.parse_args(argv)


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
    """Seconds spent in each part of a worker run, from the flow run's state history and its copy task run
    (timestamps of this machine's clock; ``wall0`` maps this process's monotonic clock onto wall time)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    t_call, t_ret = wall0 + called, wall0 + returned
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(run.id)
        copy = None
        for _ in range(50):  # task runs are recorded from their events: a moment after the flow run ends
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            copy = next((t for t in tasks if t.name.startswith("rh-copy-") and t.start_time and t.end_time), None)
            if copy is not None:
                break
            time.sleep(0.1)
    first: dict[str, float] = {}
    for st in sorted(states, key=lambda st: st.timestamp):
        first.setdefault(st.type.value, st.timestamp.timestamp())
    sched, pend, runn, done = (first.get(k) for k in ("SCHEDULED", "PENDING", "RUNNING", "COMPLETED"))
    out: dict[str, float] = {}
    if sched and pend and runn and done:
        out = {"to_scheduled": sched - t_call, "claimed": pend - sched, "engine_start": runn - pend,
               "flow_run": done - runn, "noticed": t_ret - done}
    if copy is not None:
        out.update(to_copy_start=copy.start_time.timestamp() - t_call, copy=copy.total_run_time.total_seconds()
                   if copy.total_run_time else copy.end_time.timestamp() - copy.start_time.timestamp(),
                   after_copy=t_ret - copy.end_time.timestamp())
        out["fixed"] = out["to_copy_start"] + out["after_copy"]
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
        if args.process_worker:
            worker_env["RH_PREFECT_WORKER_IN_PROCESS"] = "false"
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
        for i in range(3):
            t0 = time.perf_counter()
            warm.to(s3, f"/{bucket}/warm{i}", via="worker")
            log(f"warm-up dispatch {i} (the first registers the deployment): {time.perf_counter() - t0:.2f} s")
        warm.to(s3, f"/{bucket}/warm-local", via="local")
        if args.link_mbit:
            lab.shape(args.link_mbit)
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
            "process_worker": args.process_worker,
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


def _median(values: list[float]) -> Optional[float]:
    import statistics

    return statistics.median(values) if values else None


def _cell(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def render(results: dict, workloads: list[str]) -> str:
    meta = results["meta"]
    runs = results["runs"]
    link = f"{meta['link_mbit']:g} Mbit/s each way (tc tbf)" if meta["link_mbit"] else "unshaped veth"
    poll = f"{meta['worker_query_seconds']:g} s" if meta["worker_query_seconds"] is not None else \
        f"{meta['worker_default_query_seconds']} s (start_worker's default)"
    kind = ("a flow-run process per copy (RH_PREFECT_WORKER_IN_PROCESS=false)" if meta.get("process_worker")
            else "copies in the worker's own process, woken by the server's events")
    lines = [f"Colocated copy, cluster -> S3, end to end ({meta['when']}; link laptop<->cluster: {link}; worker: "
             f"{kind}, polling every {poll}; medians of {meta['reps']} reps)", "",
             "| workload | rclone through host s | rh-prefect through host (via=\"local\") s | rh-prefect via worker s "
             "| worker - local s | ratio rclone / worker | call -> copy starts s | copy ends -> returns s "
             "| fixed cost (target <= 0.5) | to scheduled / claimed / engine start / flow run / noticed s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for w in workloads:
        med = {}
        for way in WAYS:
            med[way] = _median([r["seconds"] for r in runs if r["workload"] == w and r["way"] == way and r["ok"]])
        worker_runs = [r for r in runs if r["workload"] == w and r["way"] == WAYS[2] and r["ok"]]
        ph = {k: _median([r["phases"][k] for r in worker_runs if k in r.get("phases", {})])
              for k in ("to_scheduled", "claimed", "engine_start", "flow_run", "noticed", "to_copy_start",
                        "after_copy", "fixed")}
        rc, loc, wk = med[WAYS[0]], med[WAYS[1]], med[WAYS[2]]
        ratio = rc / wk if rc and wk else None
        fixed = ph["fixed"]
        met = "n/a" if fixed is None else (f"{fixed:.2f} yes" if fixed <= FIXED_TARGET else f"{fixed:.2f} **NO**")
        split = " / ".join(_cell(ph[k]) for k in ("to_scheduled", "claimed", "engine_start", "flow_run", "noticed"))
        lines.append(f"| {w} | {_cell(rc)} | {_cell(loc)} | {_cell(wk)} | "
                     f"{_cell(wk - loc if wk is not None and loc is not None else None)} | "
                     f"{'n/a' if ratio is None else f'{ratio:.2f}'} | {_cell(ph['to_copy_start'])} | "
                     f"{_cell(ph['after_copy'])} | {met} | {split} |")
    failed = [r for r in runs if not r["ok"]]
    lines += ["", f"Machine: {meta['machine']}; rclone {meta['rclone']}; moto objects over 5 MiB on "
              f"{meta['moto_spill']}. Times are what the caller waits for (rclone: its whole process). Ratio "
              f"target (issue 7): rclone / worker >= {TARGET} on a 100 Mbit/s link."]
    if failed:
        lines.append(f"Failed runs: {len(failed)}: " + "; ".join(f"{r['workload']} {r['way']}: {r['error']}"
                                                                  for r in failed[:5]))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
