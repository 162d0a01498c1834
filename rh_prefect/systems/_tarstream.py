"""Many small files over one SSH channel, as a tar stream.

SFTP costs a few round trips per file (open, write, close, rename), so thousands of small files crawl even with
several channels. A tar stream over a single ``exec`` channel moves them at link speed instead. Each file still
appears atomically under its final name: uploads are unpacked into a hidden staging directory next to the
destination and renamed into place (rename(2) within one filesystem); downloads are unpacked member by
member into a hidden temporary name and renamed. Member names are checked against the requested keys, so a
hostile archive cannot write outside the destination.

The remote side needs a POSIX shell with GNU tar, find, sort, xargs and mv (any Linux host).
"""

from __future__ import annotations

import os
import shlex
import tarfile
import threading
import uuid
from typing import Any, Optional

from fsspec.asyn import sync

from rh_prefect.errors import IntegrityError, TransferError

_BUF = 1 << 20

# Unpack into $S, create the directories in $D, then rename every file into place one directory at a time
# (one mv per directory, not per file). The trap removes the staging directory whatever happens.
_REMOTE_UNPACK = r"""set -e
S={stage}; D={dest}
trap 'rm -rf "$S"' EXIT
mkdir -p "$S"
tar -x --no-same-owner --no-same-permissions -C "$S" -f -
cd "$S"
find . -mindepth 1 -type d -print0 | (cd "$D" && xargs -0 -r mkdir -p)
find . -type f -printf '%h\0' | sort -zu | xargs -0 -r -n 1 sh -c 'find "$1" -maxdepth 1 -type f -print0 | xargs -0 -r mv -f -t "$0/$1"' "$D"
"""


def _produce_tar(fd: int, local_root: str, keys: list[str], errors: list[BaseException]) -> None:
    try:
        with os.fdopen(fd, "wb", buffering=_BUF) as out, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for key in keys:
                tar.add(os.path.join(local_root, key), arcname=key, recursive=False)
    except BaseException as exc:  # reported by the caller; closing the pipe early makes the remote tar fail
        errors.append(exc)


def upload(fs: Any, local_root: str, keys: list[str], dst_root: str) -> None:
    """Send ``local_root/key`` for each key to ``dst_root/key`` on the SSH host of ``fs`` (an SSHFileSystem)."""
    stage = f"{dst_root.rstrip('/')}/.rh-tmp-stage-{uuid.uuid4().hex[:12]}"
    cmd = _REMOTE_UNPACK.format(stage=shlex.quote(stage), dest=shlex.quote(dst_root))
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []
    producer = threading.Thread(target=_produce_tar, args=(write_fd, local_root, keys, errors), daemon=True)
    producer.start()
    # asyncssh closes the descriptor it reads once done; it gets a duplicate so ours is closed exactly once.
    theirs = os.dup(read_fd)
    result = None
    try:
        result = sync(fs.loop, fs.client.run, cmd, stdin=theirs, bufsize=_BUF, check=False, encoding=None)
    finally:
        os.close(read_fd)
        producer.join(timeout=None if result is not None else 30)
    if errors:
        raise errors[0]
    if result.exit_status != 0:
        raise TransferError(
            f"Unpacking {len(keys)} files on the cluster failed (exit {result.exit_status}): "
            f"{(result.stderr or b'').decode(errors='replace').strip()[:300]}; no file was left half-written."
        )


def _consume_tar(fd: int, local_root: str, keys: set[str], errors: list[BaseException], done: list[str]) -> None:
    try:
        with os.fdopen(fd, "rb", buffering=_BUF) as inp, tarfile.open(fileobj=inp, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.name not in keys:
                    raise IntegrityError(f"The cluster sent {member.name!r}, which was not asked for; stopping.")
                final = os.path.join(local_root, member.name)
                os.makedirs(os.path.dirname(final), exist_ok=True)
                tmp = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.rh-tmp-{uuid.uuid4().hex[:12]}")
                src = tar.extractfile(member)
                assert src is not None  # a regular file always has a payload
                try:
                    with open(tmp, "wb") as out:
                        while chunk := src.read(_BUF):
                            out.write(chunk)
                    if os.path.getsize(tmp) != member.size:
                        raise IntegrityError(f"{member.name}: got {os.path.getsize(tmp)} of {member.size} bytes.")
                    os.utime(tmp, (member.mtime, member.mtime))
                    os.replace(tmp, final)
                except BaseException:
                    if os.path.exists(tmp):
                        os.remove(tmp)
                    raise
                done.append(member.name)
    except BaseException as exc:  # reported by the caller
        errors.append(exc)


def download(fs: Any, src_root: str, keys: list[str], local_root: str) -> list[str]:
    """Fetch ``src_root/key`` for each key from the SSH host into ``local_root/key``; returns the keys written."""
    cmd = f"cd {shlex.quote(src_root)} && tar -c --null -T - -f -"
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []
    done: list[str] = []
    consumer = threading.Thread(target=_consume_tar, args=(read_fd, local_root, set(keys), errors, done), daemon=True)
    consumer.start()
    names = "".join(f"{k}\0" for k in keys).encode()
    result: Optional[Any] = None
    # asyncssh closes the descriptor it writes to when the channel ends; give it a duplicate so that our own
    # descriptor can always be closed here exactly once (closing a number twice could hit another stream's
    # pipe, since descriptor numbers are reused across threads).
    theirs = os.dup(write_fd)
    try:
        result = sync(fs.loop, fs.client.run, cmd, input=names, stdout=theirs, bufsize=_BUF, check=False,
                      encoding=None)
    finally:
        os.close(write_fd)
        consumer.join(timeout=None if result is not None else 30)
    if errors:
        raise errors[0]
    if result is not None and result.exit_status != 0:
        raise TransferError(
            f"Packing {len(keys)} files on the cluster failed (exit {result.exit_status}): "
            f"{(result.stderr or b'').decode(errors='replace').strip()[:300]}"
        )
    missing = set(keys) - set(done)
    if missing:
        raise IntegrityError(f"{len(missing)} files did not arrive from the cluster (e.g. {sorted(missing)[:3]}).")
    return done
