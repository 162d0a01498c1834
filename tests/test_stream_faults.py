"""Faults during Table streams (issue 8, point 2): a connection dropped mid-stream resumes at the right row.

Real faults against the suite's real servers, nothing mocked:

* S3 (moto) reached only through :class:`faultproxy.FaultProxy`. After a fixed number of consumed batches the
  proxy drops every open connection and refuses new ones: for 2 s (the S3 client's own retries ride it out), or
  until the stream's own retry policy has seen the failure (an outage longer than the S3 client's retries, ~12 s
  here: the stream must reconnect and resume by itself);
* the SSH cluster (the suite's sshd). After a fixed number of consumed batches every SSH session process is
  killed (``SSHServer.kill_sessions``): the stream's SFTP connection dies under it.

Each table carries a ``row`` column 0..n-1 and a ``tag`` derived from it, in 40 row groups in 20 files, so the
fault lands while most of the table is still unread. The consumer must receive every row exactly once, in order,
in batches of exactly ``batch_size`` rows (no duplicates after a retry, as a replayed generator would give), and a
shuffled stream interrupted the same way must equal the uninterrupted stream with the same seed. Each test also
checks that the fault really hit the stream (reads were refused, retried and reconnected after it), so none can
pass by having read everything before the fault.
"""

from __future__ import annotations

import logging
import uuid

import pyarrow as pa
import pytest

import rh_prefect as rh
from faultproxy import FaultProxy

ROWS = 20_000
GROUP_ROWS = 500
BATCH = 64  # not a divisor of the row groups: batches straddle row groups and files
CUT_AFTER = 5  # batches consumed before the fault: row 320 of 20 000, in the first file
EXPECTED_SIZES = [BATCH] * (ROWS // BATCH) + [ROWS % BATCH]
SEED = 11


@pytest.fixture(autouse=True)
def small_groups():
    """Row groups of 500 rows in files of 2 groups: the table is 40 row groups in 20 files."""
    from helpers import small_row_groups

    with small_row_groups(GROUP_ROWS, 2):
        yield


def data(n: int = ROWS) -> pa.Table:
    return pa.table({"row": pa.array(range(n), pa.int64()), "tag": [f"r{i:06d}" for i in range(n)]})


def check_layout(t) -> None:
    manifest = t._manifest()
    assert len(manifest.files) == 20 and [len(f.row_groups) for f in manifest.files] == [2] * 20


def consume(stream, fault=None, after: int = CUT_AFTER) -> tuple[list[int], list[int]]:
    """(row ids in delivery order, batch sizes), calling ``fault()`` once ``after`` batches were consumed."""
    ids, sizes = [], []
    for i, batch in enumerate(stream):
        if i == after and fault is not None:
            fault()
        rows = batch.to_pydict()
        assert rows["tag"] == [f"r{r:06d}" for r in rows["row"]], "a batch's columns do not belong together"
        ids.extend(rows["row"])
        sizes.append(batch.num_rows)
    return ids, sizes


class StreamRetries(logging.Handler):
    """Collects the stream's own retry warnings (rh_prefect.tables.stream.RetryPolicy) and can act on the first."""

    def __init__(self, on_first=None) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.on_first = on_first

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "table read failed" not in message:
            return
        self.messages.append(message)
        if len(self.messages) == 1 and self.on_first is not None:
            self.on_first()


@pytest.fixture
def stream_retries():
    logger = logging.getLogger("rh_prefect.tables")
    handlers: list[StreamRetries] = []
    level = logger.level
    logger.setLevel(logging.WARNING)

    def attach(on_first=None) -> StreamRetries:
        handler = StreamRetries(on_first)
        logger.addHandler(handler)
        handlers.append(handler)
        return handler

    yield attach
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(level)


def assert_every_row_once(ids: list[int], sizes: list[int], reference=None) -> None:
    assert sizes == EXPECTED_SIZES  # exact batches across the fault
    if reference is None:
        assert ids == list(range(ROWS))  # every row exactly once, in order
    else:
        assert (ids, sizes) == reference  # the interrupted shuffle is the uninterrupted one
        assert sorted(ids) == list(range(ROWS)) and ids != list(range(ROWS))


# ----------------------------------------------------------------------------------------------- S3
@pytest.fixture
def s3_table(s3_server, s3_env, s3_bucket, monkeypatch):
    """A table on S3, with this process's S3 clients reaching moto only through a FaultProxy.

    Yields (proxy, table path, uninterrupted shuffled stream with SEED: (ids, sizes))."""
    with FaultProxy(target_port=s3_server.port) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        path = f"/{s3_bucket}/stream-faults"
        t = rh.table(data=data(), path=path, system="s3")
        check_layout(t)
        reference = consume(t.stream(BATCH, shuffle_seed=SEED, batch_format="pyarrow"))
        yield proxy, path, reference


def test_s3_short_network_cut_mid_stream_loses_and_repeats_no_row(s3_table, stream_retries):
    proxy, path, _ = s3_table
    retries = stream_retries()
    before = {}

    def cut():
        before["connections"] = proxy.connections
        proxy.cut(2.0)

    reader = rh.table(path=path, system="s3")  # a fresh reference: its own connections, all through the proxy
    ids, sizes = consume(reader.stream(BATCH, batch_format="pyarrow"), fault=cut)
    stats = (f"refused {proxy.refused}, connections {before['connections']} -> {proxy.connections}, "
             f"stream retries {retries.messages}")
    assert proxy.refused >= 1, f"nothing tried to reach S3 during the cut: the fault did not land ({stats})"
    assert proxy.connections > before["connections"], stats  # reconnected after it
    assert_every_row_once(ids, sizes)
    # a 2 s cut may be ridden out by the S3 client's own retries or by the stream's: either is fine


@pytest.mark.parametrize("shuffle_seed", [None, SEED], ids=["ordered", "shuffled"])
def test_s3_outage_longer_than_client_retries_resumes_at_the_right_row(s3_table, stream_retries, shuffle_seed):
    proxy, path, reference = s3_table
    # The network stays down until the S3 client has given up and the stream's own retry policy has the error;
    # it comes back during the stream's back-off, so its next attempt must reconnect and resume.
    retries = stream_retries(on_first=proxy.restore)
    reader = rh.table(path=path, system="s3")
    ids, sizes = consume(reader.stream(BATCH, shuffle_seed=shuffle_seed, batch_format="pyarrow"), fault=proxy.cut)
    assert retries.messages, "the stream's retry policy never saw the outage"
    assert all("EndpointConnectionError" in m or "onnect" in m for m in retries.messages), retries.messages
    assert proxy.refused >= 1 and not proxy.is_cut
    assert_every_row_once(ids, sizes, reference if shuffle_seed is not None else None)


# ----------------------------------------------------------------------------------------------- SSH
@pytest.mark.parametrize("shuffle_seed", [None, SEED], ids=["ordered", "shuffled"])
def test_ssh_sessions_killed_mid_stream_resume_at_the_right_row(ssh_server, rh_cluster, stream_retries,
                                                              shuffle_seed):
    base = f"rh-test/stream-faults-{uuid.uuid4().hex[:10]}"
    t = rh.table(data=data(), path=f"{base}/tbl", system=rh_cluster)
    check_layout(t)
    reference = None
    if shuffle_seed is not None:
        reference = consume(t.stream(BATCH, shuffle_seed=shuffle_seed, batch_format="pyarrow"))

    retries = stream_retries()
    killed: list[int] = []
    reader = rh.table(path=f"{base}/tbl", system=rh_cluster)
    try:
        ids, sizes = consume(reader.stream(BATCH, shuffle_seed=shuffle_seed, batch_format="pyarrow"),
                             fault=lambda: killed.extend(ssh_server.kill_sessions()))
    finally:
        rh.folder(path=base, system=rh_cluster).rm()
    assert killed, "no SSH session was open mid-stream: the fault did not land"
    assert retries.messages, "the stream never retried a read after its connection was killed"
    assert_every_row_once(ids, sizes, reference)
