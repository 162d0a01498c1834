"""Streaming keeps memory bounded: a ~390 MB table streams in a process allowed only 96 MB more memory.

The child process imports everything and warms up (a first batch starts every thread and memory pool the
stream uses), then caps its own address space at its current size + 96 MB with RLIMIT_AS and streams the
whole table, in order and shuffled. As a control, ``fetch()`` of the same table must then fail under that cap:
the limit is real, and the stream stayed under it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

import rh_prefect as rh

pytestmark = pytest.mark.servers  # writing and streaming a table run Prefect tasks

ROWS = 13_000_000
EXTRA = 96 * 2**20

CHILD = textwrap.dedent(
    """
    import json, resource, sys, threading
    import pyarrow as pa, pyarrow.compute as pc
    import rh_prefect as rh

    # Each thread reserves (not uses) 8 MiB of address space for its stack; the cap is about data, so keep
    # the reservations of the stream's few threads small.
    threading.stack_size(1 << 20)

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    t = rh.table(path=sys.argv[1])
    for _ in t.stream(1000, batch_format="pyarrow", shuffle_seed=0):
        break  # warm-up: threads, pools and imports of both stream kinds exist before the baseline
    base_rss, base_vm = status("VmRSS"), status("VmSize")
    extra = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (base_vm + extra, base_vm + extra))
    out = {"base_rss": base_rss}
    for label, kwargs in (("ordered", {}), ("shuffled", {"shuffle_seed": 1})):
        rows, total, last_id, ordered, sizes = 0, 0.0, -1, True, set()
        for b in t.stream(1000, batch_format="pyarrow", **kwargs):
            ids = b.column(0)
            ordered = ordered and ids[0].as_py() == last_id + 1
            last_id = ids[-1].as_py()
            rows += b.num_rows
            total += pc.sum(b.column(1)).as_py()
            sizes.add(b.num_rows)
        out[label] = {"rows": rows, "sum": total, "in_order": ordered, "sizes": sorted(sizes), "hwm": status("VmHWM")}
    out["peak_rss"] = status("VmHWM")
    try:
        t.fetch()
        out["fetch"] = "succeeded"
    except MemoryError as exc:  # pyarrow.ArrowMemoryError is a MemoryError
        out["fetch"] = type(exc).__name__
    print(json.dumps(out))
    """
)


def test_stream_a_table_larger_than_the_memory_it_may_use(tmp_path):
    rng = np.random.default_rng(11)
    schema = pa.schema([("id", pa.int64()), ("a", pa.float64()), ("b", pa.float64()), ("c", pa.float64())])
    expected_sum = 0.0

    def batches():
        nonlocal expected_sum
        for start in range(0, ROWS, 500_000):
            a = rng.random(500_000)
            expected_sum += float(a.sum())
            yield pa.record_batch([pa.array(np.arange(start, start + 500_000)), pa.array(a),
                                   pa.array(rng.random(500_000)), pa.array(rng.random(500_000))], schema=schema)

    path = tmp_path / "big"
    rh.table(data=pa.RecordBatchReader.from_batches(schema, batches()), path=path)
    on_disk = sum(p.stat().st_size for p in path.rglob("*.parquet"))
    assert on_disk > 3.5 * EXTRA  # random doubles do not compress: the table is several times the allowance

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    # Arrow's default allocator (mimalloc) reserves address space far ahead of use, which would make the cap
    # meaningless; with the system allocator, a fixed mmap threshold and few arenas, address space tracks use.
    env = dict(os.environ, ARROW_DEFAULT_MEMORY_POOL="system", MALLOC_ARENA_MAX="2", MALLOC_MMAP_THRESHOLD_="131072")
    proc = subprocess.run([sys.executable, str(script), str(path), str(EXTRA)], capture_output=True, text=True,
                          env=env, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1])
    grow = {k: (result[k]["hwm"] - result["base_rss"]) / 2**20 for k in ("ordered", "shuffled")}
    print(f"table on disk: {on_disk / 2**20:.0f} MiB; address space allowed beyond the warmed-up process: "
          f"{EXTRA / 2**20:.0f} MiB; RSS high-water mark growth after the ordered stream {grow['ordered']:.1f} MiB, "
          f"after the shuffled one {grow['shuffled']:.1f} MiB; fetch() under the same cap: {result['fetch']}")
    for label in ("ordered", "shuffled"):
        got = result[label]
        assert got["rows"] == ROWS and got["sizes"] == [1000]
        assert abs(got["sum"] - expected_sum) < 1e-6 * expected_sum
    assert result["ordered"]["in_order"] and not result["shuffled"]["in_order"]
    assert result["peak_rss"] - result["base_rss"] < EXTRA
    assert result["fetch"] == "ArrowMemoryError" or result["fetch"] == "MemoryError"
