"""Concurrent writers (issue 8, point 3): two processes overwrite the same Blob name and the same Table name 50
times each while a third process reads both by name continuously.

Real separate processes (``python -c``), the suite's real Prefect server as the registry, real storage (local
disk: with the ~0.4 s a Prefect block save costs, 200 saves already take most of this module's time budget, so
there is no S3 variant; the ordering between storage and registry under test does not depend on the system).
Every version is self-verifying: a blob payload is a JSON header (writer, seq, size, sha256 of the body) followed by a
body generated from (writer, seq); a table version has a row count, ``writer``/``seq`` columns and values that are
functions of (writer, seq), so a torn or mixed version is detected. The reader loads by name and fetches, over and
over, and records what it got. Asserted:

* every read returned a complete, valid version (no error: in particular no IntegrityError and no NotFound, which
  is what a registry entry pointing at bytes or files that are not there looks like);
* the reader really read while the writers wrote (a minimum number of reads, and versions of both writers seen);
* the final state, read by name, is the last version of one of the two writers, for the blob and the table, and
  the registry entries describe it: the blob's size and sha256 are those of the stored bytes, the table's row
  count that of its current version.

Deterministic tests pin down the interleavings behind this: a registration that arrives after another writer's
commit (the entry must end up describing the stored bytes, not the replaced ones); a reader that meets bytes
committed but not yet registered (it must wait for the registration instead of reporting corruption, as long as it
takes while the writer's in-flight marker is there, and not without one); no marker is left after a save.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import rh_prefect as rh

WRITES = 50
MIN_READS = 20  # per resource; the reader does several per second, the writers run for tens of seconds

# Shared by the test and its child processes: how a version is made and checked.
VERSIONS = textwrap.dedent(
    """
    import hashlib, json
    import numpy as np
    import pyarrow as pa

    def blob_payload(writer, seq):
        body = np.random.default_rng([writer + 1, seq]).bytes(20_000 + 37 * seq + 1000 * (writer + 1))
        head = {"writer": writer, "seq": seq, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        return json.dumps(head).encode() + b"\\n" + body

    def check_blob(payload):
        '''(writer, seq) of a complete, self-consistent payload; raises ValueError otherwise.'''
        if not isinstance(payload, bytes):
            raise ValueError(f"not bytes: {type(payload).__name__}")
        head, sep, body = payload.partition(b"\\n")
        meta = json.loads(head)
        if not sep or len(body) != meta["size"] or hashlib.sha256(body).hexdigest() != meta["sha256"]:
            raise ValueError(f"torn blob payload: header {meta}, body of {len(body)} bytes")
        if payload != blob_payload(meta["writer"], meta["seq"]):
            raise ValueError(f"blob payload is not the one written as {meta}")
        return meta["writer"], meta["seq"]

    def table_rows(writer, seq):
        return 120 + (31 * writer + 7 * seq) % 90

    def table_data(writer, seq):
        n = table_rows(writer, seq)
        return pa.table({
            "writer": pa.array([writer] * n, pa.int64()),
            "seq": pa.array([seq] * n, pa.int64()),
            "i": pa.array(range(n), pa.int64()),
            "value": pa.array([writer * 1_000_003 + seq * 1_009 + i for i in range(n)], pa.int64()),
        })

    def check_table(table):
        '''(writer, seq) of a complete, unmixed version; raises ValueError otherwise.'''
        if table.num_rows == 0:
            raise ValueError("empty table")
        writer, seq = table["writer"][0].as_py(), table["seq"][0].as_py()
        if not table.equals(table_data(writer, seq)):
            raise ValueError(f"table is not version {(writer, seq)} as written: {table.num_rows} rows, "
                             f"writers {sorted(set(table['writer'].to_pylist()))}, "
                             f"seqs {sorted(set(table['seq'].to_pylist()))}")
        return writer, seq
    """
)
exec(VERSIONS)  # noqa: S102  (the same definitions the child processes run)

CHILD = VERSIONS + textwrap.dedent(
    """
    import os, sys, time, json, traceback
    import rh_prefect as rh
    from rh_prefect.tables import dataset as tds

    # several files and row groups per table version, so a mix of two versions is possible and detectable
    tds.MAX_GROUP_ROWS = tds.MIN_GROUP_ROWS = 32
    tds.GROUPS_PER_FILE = 2
    role, workdir, blob_name, table_name, place = sys.argv[1:6]
    place = json.loads(place)
    Path = __import__("pathlib").Path
    work = Path(workdir)
    (work / f"ready-{role}").touch()
    while not (work / "go").exists():
        time.sleep(0.02)

    started = time.monotonic()
    if role.startswith("writer"):
        writer = int(role[len("writer"):])
        # both ways to overwrite a saved name: create + save() (no registry state in hand), and write() to the
        # resource loaded by name; each writer uses one for the blob and the other for the table
        blob, table = rh.blob(name=blob_name), rh.table(name=table_name)
        for seq in range(int(sys.argv[6])):
            if writer == 0:
                rh.blob(data=blob_payload(writer, seq), name=blob_name, path=place["blob"],
                        system=place["system"], serializer="bytes").save()
                table.write(table_data(writer, seq))
            else:
                blob.write(blob_payload(writer, seq))
                rh.table(data=table_data(writer, seq), name=table_name, path=place["table"],
                         system=place["system"]).save()
        print(f"{role}: {time.monotonic() - started:.1f} s", flush=True)
    else:
        reads = {"blob": [], "table": []}
        while not (work / "stop").exists():
            for kind, load, check in (("blob", rh.blob, check_blob), ("table", rh.table, check_table)):
                try:
                    got = check(load(name=blob_name if kind == "blob" else table_name).fetch())
                    reads[kind].append(list(got))
                except Exception as exc:
                    reads[kind].append(f"{type(exc).__name__}: {exc}"[:600])
            time.sleep(0.2)  # continuous, but leaves the writers (and the Prefect server) some CPU
        print(f"{role}: {time.monotonic() - started:.1f} s", flush=True)
        (work / "reads.json").write_text(json.dumps(reads))
    """
)


def spawn(role: str, work: Path, blob_name: str, table_name: str, place: dict, *extra: str) -> subprocess.Popen:
    # The child inherits this process's environment: PREFECT_API_URL of the suite's server, credentials.
    with open(work / f"{role}.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-c", CHILD, role, str(work), blob_name, table_name,
                                 json.dumps(place), *extra], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def run_concurrent_writers(place: dict, tmp_path: Path, unique_name) -> None:
    blob_name, table_name = unique_name("conc-blob"), unique_name("conc-table")
    # version (-1, 0) exists before the race starts, so every read by name has something to find
    rh.blob(data=blob_payload(-1, 0), name=blob_name, path=place["blob"], system=place["system"],
            serializer="bytes").save()
    rh.table(data=table_data(-1, 0), name=table_name, path=place["table"], system=place["system"]).save()

    work = tmp_path / "work"
    work.mkdir()
    roles = ["writer0", "writer1", "reader"]
    procs = {r: spawn(r, work, blob_name, table_name, place, str(WRITES)) for r in roles}
    try:
        wait_for(lambda: all((work / f"ready-{r}").exists() for r in roles)
                 or any(p.poll() is not None for p in procs.values()), 120, "the child processes to start")
        (work / "go").touch()
        for r in ("writer0", "writer1"):
            assert procs[r].wait(timeout=300) == 0, (work / f"{r}.log").read_text()[-3000:]
        (work / "stop").touch()
        assert procs["reader"].wait(timeout=120) == 0, (work / "reader.log").read_text()[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    reads = json.loads((work / "reads.json").read_text())
    for kind in ("blob", "table"):
        got = reads[kind]
        errors = [r for r in got if isinstance(r, str)]
        assert not errors, f"{len(errors)} of {len(got)} {kind} reads failed, e.g. {errors[:3]}"
        assert len(got) >= MIN_READS, f"only {len(got)} {kind} reads happened during the writes"
        seen = {tuple(r) for r in got}
        assert seen <= {(-1, 0)} | {(w, s) for w in (0, 1) for s in range(WRITES)}
        assert {w for w, _ in seen} >= {0, 1}, f"the reader never saw both writers' {kind} versions: {seen}"

    # the final state, by name, is the last version of one of the writers
    last = {(0, WRITES - 1), (1, WRITES - 1)}
    final_blob = rh.blob(name=blob_name)
    stored = final_blob.sys.fs.cat_file(final_blob.fs_path)
    assert (final_blob.size, final_blob.sha256) == (len(stored), hashlib.sha256(stored).hexdigest())  # as loaded
    assert check_blob(final_blob.fetch()) in last
    final_table = rh.table(name=table_name)
    assert check_table(final_table.fetch()) in last
    assert final_table.row_count == table_rows(*check_table(final_table.fetch()))
    rh.delete(blob_name)
    rh.delete(table_name)


def test_concurrent_writers_on_local_disk(tmp_path, unique_name):
    base = tmp_path / "data"
    run_concurrent_writers({"system": "file", "blob": str(base / "blob.bin"), "table": str(base / "table")},
                           tmp_path, unique_name)


# ------------------------------------------------------------------------------------------- the interleavings
def test_a_late_registration_does_not_point_at_replaced_bytes(tmp_path, unique_name):
    """Writer A commits and registers, writer B commits and registers, then A's registration arrives again (the
    order two concurrent saves can take): the entry must describe the bytes that are stored (B's)."""
    blob_name, table_name = unique_name("late-blob"), unique_name("late-table")
    a_blob = rh.blob(data=blob_payload(0, 0), name=blob_name, path=str(tmp_path / "b.bin"), serializer="bytes").save()
    a_table = rh.table(data=table_data(0, 0), name=table_name, path=str(tmp_path / "t")).save()
    rh.blob(name=blob_name).write(blob_payload(1, 0))
    rh.table(name=table_name).write(table_data(1, 0))
    a_blob.save()  # A's entry (size and sha256 of its own, replaced bytes) registered last
    a_table.save()
    assert check_blob(rh.blob(name=blob_name).fetch()) == (1, 0)
    assert (a_blob.size, a_blob.sha256) == (len(blob_payload(1, 0)), rh.blob(name=blob_name).sha256)
    loaded = rh.table(name=table_name)
    assert check_table(loaded.fetch()) == (1, 0) and loaded.row_count == table_rows(1, 0)
    rh.delete(blob_name)
    rh.delete(table_name)


def test_a_reader_waits_for_a_registration_in_flight(tmp_path, unique_name):
    """Bytes committed but not yet registered (a writer between its write and its save): a reader holding the old
    entry gets the new version once it is registered, not an IntegrityError."""
    name = unique_name("inflight")
    path = str(tmp_path / "b.bin")
    rh.blob(data=blob_payload(0, 0), name=name, path=path, serializer="bytes").save()
    reader = rh.blob(name=name)
    writer = rh.blob(name=name)
    rh.blob(path=path, system="file", serializer="bytes").write(blob_payload(0, 1))  # the commit, unregistered
    registered = threading.Timer(0.5, lambda: writer._record(len(blob_payload(0, 1)), rh.blob(
        path=path, system="file").verify().sha256, "bytes"))  # ... and its registration, half a second later
    registered.start()
    try:
        assert check_blob(reader.fetch()) == (0, 1)
    finally:
        registered.join()
    assert reader.sha256 == writer.sha256  # the reader now holds the new entry
    rh.delete(name)


@pytest.mark.parametrize("announced", [True, False])
def test_a_reader_tells_a_writer_in_flight_from_corruption_by_its_marker(tmp_path, unique_name,
                                                                         blob_writer_in_flight, announced):
    """A writer of a saved blob leaves a hidden marker before committing bytes and removes it once they are
    registered. A reader meeting bytes its entry does not describe waits for the registration while the marker is
    there, however slow the registry; without a marker (bytes changed outside rh_prefect) it reports corruption
    after the short quiet window."""
    name = unique_name("marker")
    path = str(tmp_path / "b.bin")
    rh.blob(data=blob_payload(0, 0), name=name, path=path, serializer="bytes").save()
    reader, writer = rh.blob(name=name), rh.blob(name=name)
    size, digest, marker = blob_writer_in_flight(writer, blob_payload(0, 1), announced)  # committed, unregistered
    assert (marker is not None) == announced and (marker is None or os.path.exists(marker))
    assert sorted(os.listdir(tmp_path)) == sorted(["b.bin"] + ([os.path.basename(marker)] if announced else []))
    assert rh.folder(path=str(tmp_path)).ls(full_paths=False) == ["b.bin"]  # the marker is never listed
    registered = threading.Timer(1.5, lambda: writer._record(size, digest, "bytes", marker))  # a slow registry
    registered.start()
    started = time.monotonic()
    try:
        if announced:
            assert check_blob(reader.fetch()) == (0, 1)
            assert time.monotonic() - started >= 1.0  # it waited for the registration
        else:
            with pytest.raises(rh.IntegrityError, match="failed verification"):
                reader.fetch()
            assert time.monotonic() - started < 1.5  # corruption is reported without waiting for a registry
    finally:
        registered.join()
    assert sorted(os.listdir(tmp_path)) == ["b.bin"]  # registered: the marker is gone
    assert check_blob(rh.blob(name=name).fetch()) == (0, 1)
    rh.delete(name)


def test_a_reader_waits_while_a_late_registration_is_being_settled(tmp_path, unique_name, blob_writer_in_flight):
    """The interleaving behind a CI failure (1 of 112 reads, 2026-11-30): writer A commits, writer B commits,
    registers, checks and takes its marker away, then A's registration arrives late. For a moment the entry names
    A's replaced bytes while B's bytes, whose marker is gone, are stored; A's settle then registers B's. A reader in
    that moment must wait for the settle (A's marker is still there), not report corruption after the short quiet
    window, however slow A's settle is."""
    from rh_prefect.runtime.registry import Resource

    name = unique_name("settle")
    path = str(tmp_path / "b.bin")
    rh.blob(data=blob_payload(0, 0), name=name, path=path, serializer="bytes").save()
    reader, a = rh.blob(name=name), rh.blob(name=name)
    size, digest, marker = blob_writer_in_flight(a, blob_payload(0, 1))  # A: committed, marker down
    rh.blob(name=name).write(blob_payload(1, 0))  # B: committed, registered, settled, marker taken back
    a.size, a.sha256, a._pending = size, digest, marker
    Resource.save(a)  # A's registration arrives late: the entry names bytes that were replaced
    assert rh.blob(name=name).sha256 == digest and os.path.exists(marker)

    def settle() -> None:  # ... and A, slow, settles (registers B's bytes) and takes its marker back
        a._settle()
        a._retract()

    settled = threading.Timer(1.5, settle)
    settled.start()
    started = time.monotonic()
    try:
        assert check_blob(reader.fetch()) == (1, 0)
        assert time.monotonic() - started >= 1.0  # it waited for A's settle
    finally:
        settled.join()
    assert sorted(os.listdir(tmp_path)) == ["b.bin"]
    assert check_blob(rh.blob(name=name).fetch()) == (1, 0)
    rh.delete(name)


def test_saved_writes_leave_no_marker_behind(tmp_path, unique_name, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # an in-memory blob saved by name is written to the current directory
    name = unique_name("nomarker")
    path = tmp_path / "b.bin"
    b = rh.blob(data=b"one", name=name, path=str(path), serializer="bytes").save()
    b.write(b"two")
    src = tmp_path / "src.bin"
    src.write_bytes(b"three")
    b.upload(src)
    with b.open("wb") as f:
        f.write(b"four")
    mem = unique_name("nomarker-mem")
    rh.blob(data=b"five", serializer="bytes").save(mem)
    assert sorted(os.listdir(tmp_path)) == ["b.bin", "cwd", "src.bin"]
    assert os.listdir(tmp_path / "cwd") == [mem]
    assert rh.blob(name=name).fetch() == b"four" and rh.blob(name=mem).fetch() == b"five"
    rh.delete(name)
    rh.delete(mem)


def test_a_failed_write_takes_its_marker_back(tmp_path, unique_name, monkeypatch):
    # The marker goes down before the commit; a commit that then fails leaves neither marker nor temporary file.
    from rh_prefect.systems.local import LocalSystem

    name = unique_name("failmarker")
    b = rh.blob(data=b"one", name=name, path=str(tmp_path / "b.bin"), serializer="bytes").save()

    def refuse(self, tmp, fs_path):
        raise PermissionError(13, "Permission denied", fs_path)

    monkeypatch.setattr(LocalSystem, "commit_temp", refuse)
    with pytest.raises(PermissionError):
        b.write(b"two")
    with pytest.raises(PermissionError):
        with b.open("wb") as f:
            f.write(b"three")
    assert sorted(os.listdir(tmp_path)) == ["b.bin"]
    monkeypatch.undo()
    assert rh.blob(name=name).fetch() == b"one"
    rh.delete(name)
