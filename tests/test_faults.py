"""Faults during copies (issue 8, point 1), against the suite's real servers, nothing mocked.

Four faults, each landing mid-copy. A watcher polls the destination and fires the fault once some files are
committed there (never a sleep guess):

* S3: the network to moto is cut for 3 s. moto keeps no state across a restart, so the copy reaches it through
  :class:`faultproxy.FaultProxy`, which drops every open connection and refuses new ones while cut.
* GCS: fake-gcs-server (filesystem backend, which survives a restart) is SIGKILLed, stays down 2 s, restarts.
* SSH: the per-connection sshd processes are SIGKILLed (the listener stays): the copy's SSH connection dies
  under it, in both directions (to and from the cluster).
* worker: the Prefect flow-run process copying on the cluster's own worker is SIGKILLed; the user starts the
  copy again.

In every case the copy completes (through retries, or the re-run), the destination equals the source byte for
byte (sha256 manifest), nothing under a final name was ever partial (the watcher lists the destination through
its own client during the whole copy, fault included, and hashes every file that appears under a final name),
and the files committed before the fault are not transferred again - shown by the destination's server itself:
moto's request log (one upload per file), GCS object generations, inodes on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

import rh_prefect as rh
from rh_prefect import settings, transfer
from rh_prefect.errors import TransferError
from rh_prefect.systems import S3Credentials, get_system

from faultproxy import FaultProxy
from helpers import write_tree
from infra import FakeGCSServer, descendants

REPO = Path(__file__).resolve().parents[1]
TEMP_MARK = ".rh-tmp-"

#: Files seen at the destination are recorded as committed before the fault, and the fault fires this much
#: later, so the responses for those files have reached the client. HTTP clients (botocore, gcsfs) re-send a
#: request whose response a fault swallowed: that is a second transfer of a file committed *at* the fault, which
#: no client can avoid, not of one committed before it.
SETTLE = 0.5


# ============================================================================================ workload


def make_tree(root: Path, small: int, big: int, big_size: int) -> dict[str, str]:
    """``small`` files of 1-16 KiB in 10 directories plus ``big`` files of ``big_size`` bytes under ``big/``;
    returns the sha256 manifest ``{relative key: hex digest}``."""
    manifest = {}
    for i in range(small):
        manifest[f"d{i % 10}/f{i:04d}.bin"] = _write(root / f"d{i % 10}/f{i:04d}.bin",
                                                    os.urandom(1024 + (i * 797) % (15 * 1024)))
    for i in range(big):
        manifest[f"big/b{i:02d}.bin"] = _write(root / f"big/b{i:02d}.bin", os.urandom(big_size))
    return manifest


def _write(path: Path, data: bytes) -> str:
    """Write one file (files are written one at a time: the whole tree is never held in memory) -> its sha256."""
    write_tree(path.parent, {path.name: data})
    return hashlib.sha256(data).hexdigest()


def sha256_of(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
def tuned():
    """``tuned(name=value, ...)``: these settings (rh_prefect.settings) for the rest of the test."""
    with contextlib.ExitStack() as stack:
        yield lambda **values: stack.enter_context(settings.override(**values))


# ============================================================================================ the watcher


@dataclass
class Watcher:
    """Polls a destination through its own client while a copy runs (a context manager around the copy).

    ``listing()`` returns ``{relative key: stamp}`` for everything there, temporary names included (a stamp
    changes whenever the file is rewritten); ``digest(key)`` hashes one file. Every file that appears under a
    final name is hashed, again whenever its stamp changes, and must equal the source. Once ``trigger_at`` files
    are committed, those are recorded as committed before the fault and, ``settle`` seconds later, ``fault()``
    runs on its own thread and returns when the fault is over. The watcher keeps polling during the fault.
    """

    listing: Callable[[], dict[str, Any]]
    digest: Callable[[str], str]
    expected: dict[str, str]
    trigger_at: int
    fault: Callable[[], None]
    settle: float = 0.0
    checked: dict[str, Any] = field(default_factory=dict)  # key -> stamp whose content was verified
    wrong: dict[str, str] = field(default_factory=dict)  # key -> what was wrong with it
    temp_names: set[str] = field(default_factory=set)
    committed_before_fault: dict[str, Any] = field(default_factory=dict)
    polls: int = 0
    looks_after_fault: int = 0  # listings (failed ones included) ending after the fault began, before the copy ended
    fault_error: Optional[BaseException] = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self.fault_on = threading.Event()
        self.fault_over = threading.Event()
        self._fault_thread: Optional[threading.Thread] = None
        self._thread = threading.Thread(target=self._run, name="fault-watcher", daemon=True)

    def __enter__(self) -> "Watcher":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:  # the copy is over
        self._stop.set()
        self._thread.join(120)
        if self._fault_thread is not None:
            self._fault_thread.join(120)

    def _fire(self) -> None:
        time.sleep(self.settle)
        self.fault_on.set()
        try:
            self.fault()
        except BaseException as exc:  # reported by assert_clean()
            self.fault_error = exc
        finally:
            self.fault_over.set()

    def _run(self) -> None:
        while True:
            last = self._stop.is_set()  # the copy is over: one more full look, then stop
            try:
                found = self.listing()
            except Exception:  # the destination may be unreachable during the fault (a killed server)
                found = None
            self.looks_after_fault += self.fault_on.is_set() and not last
            if found is None:
                if last:
                    return
                time.sleep(0.05)
                continue
            self.polls += 1
            final = {k: v for k, v in found.items() if TEMP_MARK not in k}
            self.temp_names.update(k for k in found if TEMP_MARK in k)
            if self._fault_thread is None and not last and len(final) >= self.trigger_at:  # fire before hashing
                self.committed_before_fault = dict(final)
                self._fault_thread = threading.Thread(target=self._fire, name="fault", daemon=True)
                self._fault_thread.start()
            for key, stamp in final.items():
                if self.fault_on.is_set() and not self.looks_after_fault and not last:
                    break  # look at the destination during the fault first; the rest is hashed on a later poll
                if self.checked.get(key) == stamp:
                    continue
                if key not in self.expected:
                    self.wrong[key] = "not in the source"
                    continue
                try:
                    got = self.digest(key)
                except Exception:  # unreadable right now (server down): hashed on a later poll
                    continue
                if got != self.expected[key]:
                    self.wrong[key] = (f"sha256 {got[:12]}... is not the source's {self.expected[key][:12]}... (listed as "
                                       f"{stamp}, {'after' if self.fault_on.is_set() else 'before'} the fault)")
                self.checked[key] = stamp
            if last:
                return

    def assert_clean(self) -> None:
        """The fault fired mid-copy, the watcher looked during it, and every file it saw was whole."""
        assert self.fault_error is None, f"injecting the fault failed: {self.fault_error!r}"
        assert self.fault_over.is_set(), f"the fault never fired (the watcher saw {len(self.checked)} files)"
        assert self.looks_after_fault >= 1, "the watcher never looked at the destination during the fault"
        assert self.wrong == {}, f"files seen under their final name with the wrong content: {self.wrong}"
        assert len(self.checked) == len(self.expected), "the watcher did not see every file appear"


def assert_equal_to_source(listing: dict[str, Any], digest: Callable[[str], str], expected: dict[str, str]) -> None:
    """The destination holds exactly the source's files (final names), byte for byte."""
    final = {k for k in listing if TEMP_MARK not in k}
    assert final == set(expected), f"missing {sorted(set(expected) - final)[:5]}, extra {sorted(final - set(expected))[:5]}"
    assert {k: digest(k) for k in sorted(final)} == expected


# ============================================================================================ S3: network cut

MOTO_REQUEST = re.compile(r'"(?P<method>PUT|POST) /(?P<bucket>[^/ ?]+)/(?P<key>[^ ?]+)(?P<query>\?\S*)? HTTP/1\.[01]" 200 ')


def moto_uploads(log_path: Path, bucket: str, prefix: str) -> Counter:
    """Completed uploads per key under ``prefix`` (a whole-object PUT, or the POST completing a multipart upload),
    from moto's own request log: what the server received."""
    uploads: Counter = Counter()
    for m in MOTO_REQUEST.finditer(Path(log_path).read_text(errors="replace")):
        query = m["query"] or ""
        completes = query == "" if m["method"] == "PUT" else "uploadId=" in query
        if completes and m["bucket"] == bucket and m["key"].startswith(prefix + "/"):
            uploads[m["key"][len(prefix) + 1 :]] += 1
    return uploads


def bucket_listing(fs: Any, root: str, *stamp_fields: str) -> Callable[[], dict[str, Any]]:
    """``{key: (size, *stamp_fields)}`` of the objects under ``root`` on an s3fs/gcsfs filesystem."""
    def listing() -> dict[str, Any]:
        fs.invalidate_cache()
        return {path[len(root) + 1 :]: (info["size"], *(info.get(f) for f in stamp_fields))
                for path, info in fs.find(root, detail=True).items()
                if path.startswith(root + "/") and info["type"] == "file"}
    return listing


def bucket_digest(fs: Any, root: str) -> Callable[[str], str]:
    return lambda key: hashlib.sha256(fs.cat_file(f"{root}/{key}")).hexdigest()


def test_s3_network_cut_mid_copy(s3_server, s3_env, s3_bucket, monkeypatch, tmp_path):
    import s3fs

    # enough files that the copy is still running SETTLE seconds after the 20th commit: 300 small files took
    # ~0.6 s once small uploads stopped waiting for "100 Continue", and the cut once came after the last one
    expected = make_tree(tmp_path / "src", small=1000, big=4, big_size=2 * 2**20)
    root = f"{s3_bucket}/dst"
    direct = s3fs.S3FileSystem(key=s3_server.access_key, secret=s3_server.secret_key,
                               endpoint_url=s3_server.endpoint_url, skip_instance_cache=True)  # not via the proxy
    listing, digest = bucket_listing(direct, root, "ETag", "LastModified"), bucket_digest(direct, root)
    fault: dict[str, Any] = {}

    with FaultProxy(target_port=s3_server.port) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)  # the copy reaches moto only through the proxy

        def cut() -> None:
            fault["dropped"] = proxy.cut(seconds=3)
            time.sleep(3)

        before = transfer.moved_here()
        with Watcher(listing, digest, expected, trigger_at=20, fault=cut, settle=SETTLE) as watcher:
            dst = rh.folder(path=str(tmp_path / "src")).to(system="s3", path=f"/{s3_bucket}/dst")
            listed = dst.ls(recursive=True, full_paths=False)  # the user's view, through the proxy

    watcher.assert_clean()
    # The cut landed mid-copy: the copy tried to connect while the network was down (its pooled connections,
    # if any were open at that instant, were dropped too; between requests there may be none).
    assert proxy.refused >= 1, (f"nothing tried to connect during the cut: the copy was over "
                                f"({fault['dropped']} connections dropped)")
    assert_equal_to_source(listing(), digest, expected)
    assert sorted(listed) == sorted(expected)

    # Not transferred again: moto received exactly one upload of each file committed before the fault.
    puts = moto_uploads(s3_server.log_path, s3_bucket, "dst")
    committed = sorted(watcher.committed_before_fault)
    assert len(committed) >= 20
    assert {k: puts[k] for k in committed} == {k: 1 for k in committed}
    assert (transfer.moved_here() - before).files_copied <= len(expected)
    print(f"\ns3 cut: {len(committed)} files committed before the fault, {fault['dropped']} connections dropped, "
          f"{proxy.refused} refused; {sum(puts.values())} uploads for {len(expected)} files; last attempt: "
          f"{dst.last_copy.summary()}")


def test_s3_path_going_silent_mid_copy(s3_server, s3_env, s3_bucket, monkeypatch, tmp_path, tuned):
    """The S3 connections' path goes silent mid-copy (no reset: every byte held). Uploads blocked on it would wait
    forever (the client times out reading an answer, not sending a body); each request has a deadline, so they
    fail as timeouts, the retry opens new connections (which get through) and the copy completes while the
    stalled ones are still held."""
    import s3fs

    tuned(request_deadline=5.0, request_min_rate=4 * 2**20)  # 120 s and 64 KiB/s by default
    expected = make_tree(tmp_path / "src", small=300, big=4, big_size=20 * 2**20)  # multipart uploads too
    root = f"{s3_bucket}/silent"
    direct = s3fs.S3FileSystem(key=s3_server.access_key, secret=s3_server.secret_key,
                               endpoint_url=s3_server.endpoint_url, skip_instance_cache=True)  # not via the proxy
    listing, digest = bucket_listing(direct, root, "ETag", "LastModified"), bucket_digest(direct, root)
    stalled: list[int] = []
    with FaultProxy(target_port=s3_server.port) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        gave_up = threading.Timer(150, proxy.restore)  # without deadlines the copy would wait for this
        gave_up.start()
        try:
            with Watcher(listing, digest, expected, trigger_at=20,
                         fault=lambda: stalled.append(proxy.stall(3600, existing_only=True))) as watcher:
                dst = rh.folder(path=str(tmp_path / "src")).to(system="s3", path=f"/{s3_bucket}/silent")
            still_held = proxy.holds_stalled_connections and gave_up.is_alive()
        finally:
            gave_up.cancel()
    watcher.assert_clean()
    assert stalled and stalled[0] >= 1, "no S3 connection was open to stall"
    assert still_held, "the copy finished only once the stalled path was restored: it hung on it"
    assert_equal_to_source(listing(), digest, expected)
    puts = moto_uploads(s3_server.log_path, s3_bucket, "silent")
    committed = sorted(watcher.committed_before_fault)
    assert {k: puts[k] for k in committed} == {k: 1 for k in committed}  # not transferred again
    print(f"\ns3 stall: {stalled[0]} connections stalled, {len(committed)} files committed before; last attempt: "
          f"{dst.last_copy.summary()}")


# ============================================================================================ GCS: server killed

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through an http proxy


def gcs_listing(endpoint: str, bucket: str, prefix: str) -> Callable[[], dict[str, Any]]:
    """``{key: (size, generation)}`` under ``prefix``, from the GCS JSON API directly: one plain request per page,
    no client-side retries, so a look during the outage fails at once instead of waiting for the server."""
    def listing() -> dict[str, Any]:
        out, token = {}, ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix + "/", **({"pageToken": token} if token else {})})
            with _HTTP.open(f"{endpoint}/storage/v1/b/{bucket}/o?{query}", timeout=2) as response:
                page = json.load(response)
            for item in page.get("items", []):
                out[item["name"][len(prefix) + 1 :]] = (int(item["size"]), item["generation"])
            token = page.get("nextPageToken")
            if not token:
                return out
    return listing


def gcs_digest(endpoint: str, bucket: str, prefix: str) -> Callable[[str], str]:
    def digest(key: str) -> str:
        name = urllib.parse.quote(f"{prefix}/{key}", safe="")
        with _HTTP.open(f"{endpoint}/download/storage/v1/b/{bucket}/o/{name}?alt=media", timeout=5) as response:
            # read() of the whole body, not read(n) in a loop: read(n) returns a short body without an error when
            # the server dies mid-response (it is killed here), which would look like a partial object.
            data = response.read()
            if len(data) != int(response.headers["Content-Length"]):
                raise ConnectionError(f"short read of {key}: {len(data)} bytes")
            return hashlib.sha256(data).hexdigest()
    return digest


@pytest.fixture(scope="module")
def gcs_fs_server():
    """A fake-gcs-server of this module's own (filesystem backend: it keeps its objects across restart())."""
    with FakeGCSServer(backend="filesystem") as server:
        yield server


def test_gcs_server_killed_and_restarted_mid_copy(gcs_fs_server, monkeypatch, tmp_path):
    import gcsfs

    # Batched async uploads finish 300 small files within the settle time on an idle machine: a bigger tree
    # keeps the copy running when the server is killed.
    expected = make_tree(tmp_path / "src", small=1500, big=6, big_size=12 * 2**20)  # > 8 MiB: streamed uploads
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    for name, value in gcs_fs_server.env().items():
        monkeypatch.setenv(name, value)
    direct = gcsfs.GCSFileSystem(endpoint_url=gcs_fs_server.endpoint_url, token="anon", project="test",
                                 skip_instance_cache=True)
    bucket = f"rh-faults-{uuid.uuid4().hex[:12]}"
    direct.mkdir(bucket)
    endpoint = gcs_fs_server.endpoint_url
    listing, digest = gcs_listing(endpoint, bucket, "dst"), gcs_digest(endpoint, bucket, "dst")
    crash: dict[str, Any] = {}

    def kill_and_restart() -> None:
        crash["pid"] = gcs_fs_server.pid
        crash["at_us"] = time.time() * 1e6  # fake-gcs-server's generations are wall-clock microseconds
        gcs_fs_server.restart(down_seconds=2)  # SIGKILL, 2 s down, same port and data directory

    with Watcher(listing, digest, expected, trigger_at=20, fault=kill_and_restart, settle=SETTLE) as watcher:
        dst = rh.folder(path=str(tmp_path / "src")).to(system="gs", path=f"/{bucket}/dst")

    watcher.assert_clean()
    assert gcs_fs_server.pid != crash["pid"], "the server was not restarted"
    final = listing()
    assert_equal_to_source(final, digest, expected)
    assert sorted(dst.ls(recursive=True, full_paths=False)) == sorted(expected)
    # The crash landed mid-copy: part of the files were written after it.
    after = [k for k, (_, generation) in final.items() if int(generation) > crash["at_us"]]
    assert after, "every file was written before the crash: it did not land mid-copy"
    # Not transferred again: every object committed before the crash still has its first generation.
    committed = watcher.committed_before_fault
    assert len(committed) >= 20
    assert {k: final[k] for k in committed} == committed
    print(f"\ngcs crash: {len(committed)} files committed before the crash, {len(after)} written after it; "
          f"last attempt: {dst.last_copy.summary()}")


def test_gcs_path_going_silent_mid_streamed_upload(gcs_fs_server, monkeypatch, tmp_path, tuned):
    """A large file goes up to GCS as one streamed request, and its path goes silent mid-body (no reset: every
    byte held). The request would wait forever (aiohttp times out reading an answer, not sending a body into a
    stalled window); the upload sees the connection take no bytes within its deadline and fails as a timeout,
    the retry's new connection gets through, and the copy completes while the stalled one is still held. Only the
    complete object is ever visible."""
    import gcsfs

    tuned(request_deadline=3.0, request_min_rate=64 * 2**20)  # 120 s and 64 KiB/s by default
    data = os.urandom(96 * 2**20)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.bin").write_bytes(data)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    direct = gcsfs.GCSFileSystem(endpoint_url=gcs_fs_server.endpoint_url, token="anon", project="test",
                                 skip_instance_cache=True)  # not via the proxy
    bucket = f"rh-faults-{uuid.uuid4().hex[:12]}"
    direct.mkdir(bucket)
    stalled: list[int] = []
    sizes_seen: set[int] = set()
    done = threading.Event()

    def stall_mid_body() -> None:
        give_up = time.monotonic() + 60
        while proxy.bytes_passed < 16 * 2**20 and time.monotonic() < give_up and not done.is_set():
            time.sleep(0.002)
        stalled.append(proxy.stall(3600, existing_only=True))

    def watch() -> None:  # nothing partial under the final name, ever
        while not done.is_set():
            direct.invalidate_cache()
            sizes_seen.update(int(i["size"]) for i in direct.find(f"{bucket}/silent", detail=True).values())
            time.sleep(0.05)

    with FaultProxy(target_port=gcs_fs_server.port) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        gave_up = threading.Timer(150, proxy.restore)  # without the upload's deadline the copy would wait for this
        gave_up.start()
        helpers = [threading.Thread(target=f, daemon=True) for f in (stall_mid_body, watch)]
        for t in helpers:
            t.start()
        try:
            started = time.monotonic()
            dst = rh.folder(path=str(tmp_path / "src")).to(system="gs", path=f"/{bucket}/silent")
            elapsed = time.monotonic() - started
            still_held = proxy.holds_stalled_connections and gave_up.is_alive()
        finally:
            done.set()
            gave_up.cancel()
            for t in helpers:
                t.join(timeout=10)
    assert stalled and stalled[0] >= 1, "no GCS connection was open to stall"
    assert still_held, "the copy finished only once the stalled path was restored: it hung on it"
    assert sizes_seen <= {len(data)}, f"a partial object was visible: sizes {sorted(sizes_seen)}"
    direct.invalidate_cache()
    assert direct.find(f"{bucket}/silent") == [f"{bucket}/silent/big.bin"]
    assert hashlib.sha256(direct.cat_file(f"{bucket}/silent/big.bin")).hexdigest() == hashlib.sha256(data).hexdigest()
    print(f"\ngcs stall: {stalled[0]} connections stalled after {proxy.bytes_passed >> 20} MiB; copy done in "
          f"{elapsed:.1f} s; last attempt: {dst.last_copy.summary()}")


# ============================================================================================ SSH: connections killed


def disk_listing(root: Path) -> Callable[[], dict[str, Any]]:
    """``{key: (size, inode, mtime_ns)}`` of the files under ``root``, read from the disk itself."""
    def listing() -> dict[str, Any]:
        out = {}
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:  # renamed away (a temporary name) between walk and stat
                    continue
                out[os.path.relpath(path, root)] = (st.st_size, st.st_ino, st.st_mtime_ns)
        return out
    return listing


def disk_digest(root: Path) -> Callable[[str], str]:
    def digest(key: str) -> str:
        with open(root / key, "rb") as f:
            return sha256_of(iter(lambda: f.read(2**20), b""))
    return digest


@pytest.mark.parametrize("direction", ["to-cluster", "from-cluster"])
def test_ssh_connections_killed_mid_copy(ssh_server, rh_cluster, tmp_path, direction):
    rel = f"rh-test/faults-{uuid.uuid4().hex[:10]}"
    on_cluster = ssh_server.home / rel  # the cluster's disk (this machine): written and watched directly
    if direction == "to-cluster":
        expected = make_tree(tmp_path / "src", small=300, big=10, big_size=8 * 2**20)
        src, dst_system, dst_path, dst_disk = rh.folder(path=str(tmp_path / "src")), rh_cluster, f"{rel}/dst", on_cluster / "dst"
    else:
        expected = make_tree(on_cluster / "src", small=300, big=10, big_size=8 * 2**20)
        src = rh.folder(path=f"{rel}/src", system=rh_cluster)
        dst_system, dst_path, dst_disk = "file", str(tmp_path / "dst"), tmp_path / "dst"
    listing, digest = disk_listing(dst_disk), disk_digest(dst_disk)
    killed: list[int] = []
    try:
        with Watcher(listing, digest, expected, trigger_at=2,
                     fault=lambda: killed.extend(ssh_server.kill_sessions())) as watcher:
            dst = src.to(system=dst_system, path=dst_path)

        watcher.assert_clean()
        assert killed, "no SSH connection was open to kill"
        final = listing()
        assert_equal_to_source(final, digest, expected)
        assert sorted(dst.ls(recursive=True, full_paths=False)) == sorted(expected)
        # Not transferred again: each file committed before the kill is the same file (inode, mtime) at the end.
        committed = watcher.committed_before_fault
        assert len(committed) >= 2
        assert {k: final[k] for k in committed} == committed
        # The kill landed mid-copy: the last attempt - a retry, since the destination started empty - skipped the
        # files committed before it and copied the rest.
        report = dst.last_copy
        assert report.files_skipped >= len(committed) and report.files_copied >= 1, report.summary()
        leftovers = sorted(k for k in final if TEMP_MARK in k)
        print(f"\nssh kill ({direction}): {len(killed)} connections killed, {len(committed)} files committed "
              f"before; last attempt: {report.summary()}; temporary files left: {leftovers[:3]} ({len(leftovers)})")
    finally:
        shutil.rmtree(on_cluster, ignore_errors=True)


def test_ssh_path_going_silent_mid_copy(ssh_server, tmp_path, tuned):
    """The SSH connection's path goes silent (no reset, no FIN: a dropped route): every byte on the open connections
    is held, forever as far as the copy can tell. Keepalives declare the connection dead, the copy's retry
    reconnects (new connections get through) and completes, long before the stalled path would come back."""
    tuned(ssh_keepalive_interval=1, ssh_keepalive_count_max=2)  # 15 s and 4 by default
    rel = f"rh-test/faults-{uuid.uuid4().hex[:10]}"
    on_cluster = ssh_server.home / rel
    expected = make_tree(tmp_path / "src", small=300, big=10, big_size=8 * 2**20)
    listing, digest = disk_listing(on_cluster / "dst"), disk_digest(on_cluster / "dst")
    with FaultProxy(target_port=ssh_server.port) as proxy:
        cluster = rh.cluster(host=ssh_server.host, port=proxy.port, user=ssh_server.user,
                             ssh_key=str(ssh_server.client_key_path), host_key=ssh_server.host_public_key)
        stalled: list[int] = []
        gave_up = threading.Timer(120, proxy.restore)  # if keepalives did not work, the copy would wait for this
        gave_up.start()
        try:
            with Watcher(listing, digest, expected, trigger_at=2,
                         fault=lambda: stalled.append(proxy.stall(3600, existing_only=True))) as watcher:
                dst = rh.folder(path=str(tmp_path / "src")).to(system=cluster, path=f"{rel}/dst")
            still_held = proxy.holds_stalled_connections and gave_up.is_alive()
        finally:
            gave_up.cancel()
        try:
            watcher.assert_clean()
            assert stalled and stalled[0] >= 1, "no SSH connection was open to stall"
            assert still_held, "the copy finished only once the stalled path was restored: it hung on it"
            final = listing()
            assert_equal_to_source(final, digest, expected)
            committed = watcher.committed_before_fault
            assert {k: final[k] for k in committed} == committed  # not transferred again
            report = dst.last_copy
            assert report.files_skipped >= len(committed) and report.files_copied >= 1, report.summary()
            print(f"\nssh stall: {stalled[0]} connections stalled; last attempt: {report.summary()}")
        finally:
            shutil.rmtree(on_cluster, ignore_errors=True)


# ============================================================================================ worker killed

VENV_PREFECT = str(Path(sys.executable).parent / "prefect")


@pytest.fixture
def worker_cluster(ssh_server, prefect_server, tmp_path):
    """The suite's sshd as a cluster with a work queue, and a Prefect process worker started on it over SSH
    (``Cluster.start_worker()``; this machine is the cluster). Not waited for: the test prepares its data while
    the worker comes up."""
    cluster = rh.cluster(
        host=ssh_server.host, port=ssh_server.port, user=ssh_server.user, ssh_key=str(ssh_server.client_key_path),
        known_hosts=str(ssh_server.known_hosts_path), work_queue=f"rh-faults-{uuid.uuid4().hex[:8]}",
        prefect_bin=VENV_PREFECT, python=sys.executable, project_dir=str(REPO), api_url=prefect_server.api_url,
    )
    home = tmp_path / "worker-home"
    home.mkdir()
    # Copies as flow-run processes, as Prefect's process worker runs them (the test kills one); the in-process
    # worker's own kill test is in test_orchestration.py.
    info = cluster.start_worker(env={"PREFECT_HOME": str(home), "PREFECT_WORKER_QUERY_SECONDS": "1",
                                     "PREFECT_WORKER_PREFETCH_SECONDS": "5", "RH_PREFECT_WORKER_IN_PROCESS": "false"},
                                wait=False)
    try:
        yield cluster, info
    finally:
        cluster.stop_worker(timeout=1)
        Path(info.log_path).unlink(missing_ok=True)


def flow_run_processes(worker_pid: int) -> list[int]:
    """PIDs of the flow-run processes the worker started (``python -m prefect.engine``)."""
    found = []
    for pid in descendants(worker_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"prefect.engine" in cmdline:
            found.append(pid)
    return found


def copy_summaries(flow_run_id: Any) -> list[tuple[int, int]]:
    """``(files copied, files skipped)`` of each copy in a flow run, from the summary artifact it published (the
    table the Prefect UI shows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    rows = []
    for artifact in artifacts:
        if artifact.type == "markdown":
            rows += [(int(a), int(b)) for a, b in re.findall(r"^\| (\d+) \| [^|]+ \| (\d+) \(", artifact.data, re.M)]
    return rows


def test_worker_killed_mid_copy_then_copy_again(worker_cluster, ssh_server, s3_server, s3_bucket, tmp_path):
    import s3fs

    from rh_prefect.runtime import worker

    cluster, info = worker_cluster
    expected = make_tree(tmp_path / "src", small=300, big=4, big_size=2 * 2**20)
    rel = f"rh-test/faults-{uuid.uuid4().hex[:10]}"
    src = rh.folder(path=f"{rel}/src", system=cluster).put(str(tmp_path / "src"))
    s3 = get_system("s3", credentials=S3Credentials(aws_access_key_id=s3_server.access_key,
                                                   aws_secret_access_key=s3_server.secret_key,
                                                   endpoint_url=s3_server.endpoint_url))
    direct = s3fs.S3FileSystem(key=s3_server.access_key, secret=s3_server.secret_key,
                               endpoint_url=s3_server.endpoint_url, skip_instance_cache=True)
    root = f"{s3_bucket}/ckpt"
    listing, digest = bucket_listing(direct, root, "ETag", "LastModified"), bucket_digest(direct, root)
    killed: list[int] = []

    def kill_copying_process() -> None:
        killed.extend(flow_run_processes(info.pid))
        for pid in killed:
            os.kill(pid, signal.SIGKILL)

    worker.wait_online(cluster.work_queue)
    try:
        with Watcher(listing, digest, expected, trigger_at=20, fault=kill_copying_process) as watcher:
            with pytest.raises(TransferError) as crashed:
                src.to(s3, f"/{s3_bucket}/ckpt", via="worker")
            again = src.to(s3, f"/{s3_bucket}/ckpt", via="worker")  # the user starts the copy again

        watcher.assert_clean()
        assert len(killed) == 1, f"expected one flow-run process copying, found {killed}"
        message = str(crashed.value)
        assert "on the cluster's worker ended Crashed" in message and "SIGKILL" in message, message
        assert f"on work queue {cluster.work_queue!r}" in message
        assert again.flow_run.state.is_completed()
        assert again.flow_run.work_queue_name == cluster.work_queue
        assert_equal_to_source(listing(), digest, expected)

        # Not transferred again: one upload per file committed before the kill (moto's log), and the re-run's summary
        # (its artifact in the UI) counts them as skipped.
        committed = sorted(watcher.committed_before_fault)
        assert len(committed) >= 20
        puts = moto_uploads(s3_server.log_path, s3_bucket, "ckpt")
        assert {k: puts[k] for k in committed} == {k: 1 for k in committed}
        [(copied, skipped)] = copy_summaries(again.flow_run.id)
        assert skipped >= len(committed) and copied >= 1 and copied + skipped == len(expected)
        print(f"\nworker kill: flow-run process {killed} killed with {len(committed)} files committed; the re-run "
              f"copied {copied}, skipped {skipped}; {sum(puts.values())} uploads for {len(expected)} files")
    finally:
        shutil.rmtree(ssh_server.home / rel, ignore_errors=True)
