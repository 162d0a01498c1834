"""Every use of a private part of sshfs and asyncssh, in one place, checked at first use (see ``_private``).

sshfs's ``SSHFileSystem.client`` (a public property: the asyncssh connection) and asyncssh's documented
connection and SFTP APIs are public and are used directly: remote commands go through ``client.run`` (what
sshfs's private ``_execute`` does, without its lock) and directory removal through an SFTP client's ``rmdir``.
"""

from __future__ import annotations

from typing import Optional

from rh_prefect.systems._private import Private

DEFAULT_CIPHERS = Private(
    "asyncssh", "encryption.get_default_encryption_algs",
    fallback="asyncssh's own cipher order (chacha20-poly1305 first)",
    why="asyncssh's default ciphers in another order, AES-GCM first: 256 MiB over SFTP in ~0.9 s instead of ~1.3 s",
)


def cipher_preference() -> Optional[list[str]]:
    """asyncssh's default ciphers with AES-GCM first, or None (asyncssh's own order) when the module function that
    lists them is gone. Only the order changes: a server without AES-GCM still gets the others."""
    try:
        from asyncssh import encryption
    except ImportError:
        return None
    if not DEFAULT_CIPHERS.usable(encryption):
        return None
    try:
        names = [a.decode() for a in encryption.get_default_encryption_algs()]
    except (TypeError, AttributeError) as exc:
        DEFAULT_CIPHERS.broke(encryption, exc)
        return None
    first = [a for a in ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com") if a in names]
    return first + [a for a in names if a not in first]


_READ_BLOCK: list[Optional[int]] = []


def read_block_size() -> Optional[int]:
    """128 KiB SFTP reads where asyncssh learns the server's limits (``SFTPClient.limits``, the
    limits@openssh.com extension, asyncssh 2.18 on): OpenSSH answers at most 64 KiB a read, and asyncssh 2.17's
    parallel reads, asked for more, returned wrong bytes (tests/test_blob.py over SSH). Without it, None: sshfs's
    own block size (48 KiB)."""
    if not _READ_BLOCK:
        import logging

        from asyncssh import SFTPClient

        size = 2**17 if hasattr(SFTPClient, "limits") else None
        logging.getLogger("rh_prefect.private").debug(
            "asyncssh SFTP reads of %s", "128 KiB" if size else "sshfs's default size (no SFTPClient.limits)")
        _READ_BLOCK.append(size)
    return _READ_BLOCK[0]
