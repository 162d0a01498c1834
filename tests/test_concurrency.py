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
  the registry entries describe it: the blob's size and sha256 are those of the version it names, the table's row
  count that of its current version; the file at the blob's path (for other tools) is a complete last version.

Deterministic tests pin down the interleavings behind this: a registration that arrives after another writer's
commit (the entry names a version that is stored, and reads return exactly it); a writer that committed and never
registered - crashed, or not there yet - (readers, old and new, read what the registry names, at once); what a
save leaves on storage, and what a failed commit leaves.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import rh_prefect as rh

from helpers import wait_for
from rh_prefect import settings

WRITES = 25
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
    # several files and row groups per table version, so a mix of two versions is possible and detectable
    os.environ.update(RH_PREFECT_TABLE_MAX_GROUP_ROWS="32", RH_PREFECT_TABLE_MIN_GROUP_ROWS="32",
                      RH_PREFECT_TABLE_GROUPS_PER_FILE="2")
    import rh_prefect as rh
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
                        system=place["system"], serializer="bytes").save(overwrite=True)  # replaces it on purpose
                table.write(table_data(writer, seq))
            else:
                blob.write(blob_payload(writer, seq))
                rh.table(data=table_data(writer, seq), name=table_name, path=place["table"],
                         system=place["system"]).save(overwrite=True)
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

pytestmark = pytest.mark.servers  # Blob reads and writes run as Prefect tasks: the API is needed


def spawn(role: str, work: Path, blob_name: str, table_name: str, place: dict, *extra: str) -> subprocess.Popen:
    # The child inherits this process's environment: PREFECT_API_URL of the suite's server, credentials.
    with open(work / f"{role}.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-c", CHILD, role, str(work), blob_name, table_name,
                                 json.dumps(place), *extra], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))


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
    assert check_blob(final_blob.fetch()) in last
    assert final_blob.verify().sha256 == hashlib.sha256(final_blob.fetch()).hexdigest()  # the entry describes it
    published = final_blob.sys.fs.cat_file(final_blob.fs_path)  # the plain file other tools read
    assert check_blob(published) in last
    # Every version is younger than settings.versions_min_age (10 min), so none was dropped under a reader or a
    # late registration: the first write's and each writer's.
    assert settings.current().versions_min_age >= 600
    final_ids = [v.id for v in final_blob.versions()]
    assert final_blob.version in final_ids and len(final_ids) == 1 + 2 * WRITES
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
def test_a_late_registration_names_a_stored_version(tmp_path, unique_name):
    """Writer A commits and registers, writer B commits and registers, then A's registration arrives again (the
    order two concurrent saves can take): the last registration wins, and it names a version that is stored, so
    readers by name get exactly A's bytes, verified. The file at the path holds the last version published."""
    blob_name, table_name = unique_name("late-blob"), unique_name("late-table")
    path = tmp_path / "b.bin"
    a_blob = rh.blob(data=blob_payload(0, 0), name=blob_name, path=str(path), serializer="bytes").save()
    a_table = rh.table(data=table_data(0, 0), name=table_name, path=str(tmp_path / "t")).save()
    rh.blob(name=blob_name).write(blob_payload(1, 0))
    rh.table(name=table_name).write(table_data(1, 0))
    a_blob.save()  # A's entry (its own version) registered last
    a_table.save()
    loaded = rh.blob(name=blob_name)
    assert loaded.version == a_blob.version and check_blob(loaded.fetch()) == (0, 0)
    assert loaded.verify().sha256 == hashlib.sha256(blob_payload(0, 0)).hexdigest()
    assert check_blob(path.read_bytes()) == (1, 0)  # published last: a complete version, for other tools
    loaded = rh.table(name=table_name)
    assert check_table(loaded.fetch()) == (1, 0) and loaded.row_count == table_rows(1, 0)
    rh.delete(blob_name)
    rh.delete(table_name)


def test_a_writer_between_commit_and_registration_changes_nothing_readers_see(tmp_path, unique_name):
    """A writer that committed its bytes and has not registered them - still on its way, or crashed - changes
    nothing for readers: a Blob loaded before, and one loaded now, both read the registered version at once and
    verified (no waiting, no IntegrityError). Only the file at the path, for other tools, shows the new bytes.
    Once the writer registers, loads by name read its version, and the reader loaded before still reads its own."""
    name = unique_name("inflight")
    path = tmp_path / "b.bin"
    rh.blob(data=blob_payload(0, 0), name=name, path=str(path), serializer="bytes").save()
    before = rh.blob(name=name)
    writer = rh.blob(data=blob_payload(0, 1), path=str(path), serializer="bytes")  # committed, not registered
    assert check_blob(path.read_bytes()) == (0, 1)
    assert check_blob(before.fetch()) == (0, 0) and check_blob(rh.blob(name=name).fetch()) == (0, 0)
    assert rh.blob(name=name).verify().version == before.version

    writer.save(name, overwrite=True)  # the registration: the commit point
    assert check_blob(rh.blob(name=name).fetch()) == (0, 1)
    assert check_blob(before.fetch()) == (0, 0)  # its version is kept: still exactly what it was loaded as
    rh.delete(name)


def test_a_crashed_writer_leaves_the_registered_version_readable(tmp_path, unique_name):
    """A writer process that dies between committing its bytes and registering them: the registry still names
    the old version, which every reader gets, verified. (The child replaces Blob.save, the registration that a
    saved blob's write() ends with, by an exit of the process: the moment of the crash, made exact.)"""
    name = unique_name("crashed")
    path = tmp_path / "b.bin"
    rh.blob(data=blob_payload(0, 0), name=name, path=str(path), serializer="bytes").save()
    crash = textwrap.dedent(
        f"""
        import os, rh_prefect as rh
        b = rh.blob(name={name!r})
        rh.Blob.save = lambda *args, **kwargs: os._exit(3)
        b.write(b"crashed writer")
        """
    )
    assert subprocess.run([sys.executable, "-c", crash], env=dict(os.environ), timeout=120).returncode == 3
    assert path.read_bytes() == b"crashed writer"  # committed and published, never registered
    loaded = rh.blob(name=name)
    assert check_blob(loaded.fetch()) == (0, 0) and loaded.version in [v.id for v in loaded.versions()]
    assert len(loaded.versions()) == 2
    rh.delete(name)


def test_saved_writes_leave_the_file_and_its_versions_only(tmp_path, unique_name, monkeypatch):
    """Every way to write a saved blob leaves exactly the file and its hidden versions directory - no marker, no
    temporary file - and each write is one more version (up to the kept number)."""
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
    assert sorted(os.listdir(tmp_path)) == [".b.bin.rh-versions", "b.bin", "cwd", "src.bin"]
    ids = [v.id for v in b.versions()]  # each version with its description (size, sha256, serializer) beside it
    assert sorted(os.listdir(tmp_path / ".b.bin.rh-versions")) == sorted(ids + [i + ".json" for i in ids])
    assert len(ids) == 4
    assert sorted(os.listdir(tmp_path / "cwd")) == [f".{mem}.rh-versions", mem]
    assert rh.blob(name=name).fetch() == b"four" and rh.blob(name=mem).fetch() == b"five"
    assert path.read_bytes() == b"four"
    rh.delete(name)
    rh.delete(mem)


def test_a_failed_commit_leaves_the_blob_as_it_was(tmp_path, unique_name, monkeypatch):
    # The rename that commits a version fails (replaced here by one that refuses): neither a version nor a
    # temporary file is left, the file at the path and the registry entry are unchanged.
    from rh_prefect.systems.local import LocalSystem

    name = unique_name("failcommit")
    b = rh.blob(data=b"one", name=name, path=str(tmp_path / "b.bin"), serializer="bytes").save()
    first = b.version

    def refuse(self, tmp, fs_path):
        raise PermissionError(13, "Permission denied", fs_path)

    monkeypatch.setattr(LocalSystem, "commit_temp", refuse)
    with pytest.raises(PermissionError):
        b.write(b"two")
    with pytest.raises(PermissionError):
        with b.open("wb") as f:
            f.write(b"three")
    assert sorted(os.listdir(tmp_path)) == [".b.bin.rh-versions", "b.bin"]
    assert sorted(os.listdir(tmp_path / ".b.bin.rh-versions")) == [first, first + ".json"]
    monkeypatch.undo()
    assert (tmp_path / "b.bin").read_bytes() == b"one"
    assert rh.blob(name=name).fetch() == b"one" and b.version == first
    rh.delete(name)
