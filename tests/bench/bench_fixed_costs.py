#!/usr/bin/env python
"""Issue 18's fixed costs in one invocation: the command line against rclone, the Python first call, and copies
sent to the cluster's worker (unshaped link and 100 Mbit/s), one after the other on the same machine, so that the
README's tables come from one run with one date, one machine and its load.

Run (from the repository root; ~35-45 min on the 2-core machine here, nothing else running)::

    .venv/bin/python tests/bench/bench_fixed_costs.py            # everything
    .venv/bin/python tests/bench/bench_fixed_costs.py --quick    # a smoke run of each part (~6 min)

It runs ``bench_cli.py`` then ``bench_colocated.py`` (unshaped) then ``bench_colocated.py --link-mbit 100`` as
child processes (each starts and stops its own servers), and writes ``tests/bench/results/fixed-costs-latest.md``:
a header (start, end, machine, load average before each part) and each part's tables. The parts' own results
files are written as usual (``cli-latest.*``, ``colocated-latest.*``, ``colocated-100mbit.*``). ``--quick`` writes
``*-quick.*`` files, which git ignores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from bench_transfer import machine_desc  # noqa: E402


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run of each part")
    p.add_argument("--parts", default="cli,colocated,colocated-100mbit",
                   help="comma-separated, from: cli, colocated, colocated-100mbit")
    args = p.parse_args(argv)
    suffix = "-quick" if args.quick else ""
    parts = {
        "cli": ([str(HERE / "bench_cli.py"), "--out", str(RESULTS / f"cli-latest{suffix}.json")]
                + (["--quick"] if args.quick else []),
                RESULTS / f"cli-latest{suffix}.md", "The command line end to end, and the Python first call"),
        "colocated": ([str(HERE / "bench_colocated.py"), "--reps", "3" if args.quick else "7",
                       "--out", str(RESULTS / f"colocated-latest{suffix}")] + (["--quick"] if args.quick else []),
                      RESULTS / f"colocated-latest{suffix}.md", "Copies sent to the cluster's worker, unshaped link"),
        "colocated-100mbit": ([str(HERE / "bench_colocated.py"), "--link-mbit", "100", "--reps", "3" if args.quick
                               else "5", "--out", str(RESULTS / f"colocated-100mbit{suffix}")]
                              + (["--quick"] if args.quick else []),
                              RESULTS / f"colocated-100mbit{suffix}.md",
                              "Copies sent to the cluster's worker, 100 Mbit/s link"),
    }
    chosen = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in parts]
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(parts)}")
    started = time.time()
    sections, failed = [], []
    for name in chosen:
        argv_part, md, title = parts[name]
        load, t0 = _load(), time.time()
        print(f"== {name}: {' '.join(Path(a).name if a.endswith('.py') else a for a in argv_part)}", flush=True)
        code = subprocess.call([sys.executable, *argv_part])
        took = (time.time() - t0) / 60
        if code != 0 or not md.exists() or md.stat().st_mtime < t0:
            failed.append(name)
            sections.append(f"## {title}\n\nFAILED (exit code {code}); see the output above.\n")
            continue
        sections.append(f"## {title}\n\nStarted {_stamp(t0)}, {took:.1f} min, load average (1/5/15 min) at its "
                        f"start {load}. From `{md.relative_to(HERE.parent.parent)}`:\n\n{md.read_text().strip()}\n")
    header = (f"# Fixed costs (issue 18), one invocation\n\n`tests/bench/bench_fixed_costs.py{' --quick' if args.quick else ''}`"
              f", {_stamp(started)} - {_stamp(time.time())}; {machine_desc()}; load average (1/5/15 min) at the end "
              f"{_load()}.\n")
    out = RESULTS / f"fixed-costs-latest{suffix}.md"
    out.write_text("\n".join([header, *sections]))
    print(f"written {out}")
    if failed:
        print(f"failed parts: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
