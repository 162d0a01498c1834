"""SSH hosts reached over SFTP: how to connect (:class:`SSHSettings`) and the "ssh"/"sftp" system."""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import shlex
import socket
import sys
import threading
from typing import Any, ClassVar, Optional

from fsspec import AbstractFileSystem
from fsspec.asyn import sync
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from rh_prefect import settings
from rh_prefect.errors import CredentialsError, HostKeyMismatch, SystemUnavailable
from rh_prefect.systems import _ssh_private
from rh_prefect.systems.base import System, answered, first_contact_error

_SSH_CHECK = "Is the host up and the port right? Try `cluster.up_if_not()`."

DEFAULT_ROOT = "~/.cache/rh_prefect"


class SSHSettings(BaseModel):
    """How to reach and trust an SSH host: the connection half of a Cluster (the Cluster block adds its name and
    the worker settings; see :mod:`rh_prefect.resources.cluster`).

    Host keys are always verified: from ``known_hosts`` (a file, default ``~/.ssh/known_hosts``) or a pinned
    ``host_key``. ``verify_host_key=False`` is an explicit, unsafe opt-out for throwaway hosts only.
    """

    host: str = Field(title="Host", description="Host name or IP address of the cluster's head node.")
    port: int = Field(default=22, title="Port", description="SSH port.")
    user: Optional[str] = Field(default=None, title="User", description="Login user; empty for the local user.")
    ssh_key: Optional[SecretStr] = Field(
        default=None,
        title="SSH private key",
        description="Path to a private key file, or the key itself (kept secret). Empty: ssh-agent/default keys.",
    )
    known_hosts: Optional[str] = Field(
        default=None, title="known_hosts file", description="Path of a known_hosts file; default ~/.ssh/known_hosts."
    )
    host_key: Optional[str] = Field(
        default=None,
        title="Pinned host key",
        description="The host's public key ('ssh-ed25519 AAAA...'); used instead of a known_hosts file.",
    )
    verify_host_key: bool = Field(
        default=True,
        title="Verify host key",
        description="Leave on. Turning it off accepts any host key (man-in-the-middle risk).",
    )
    default_root: str = Field(
        default=DEFAULT_ROOT, title="Default root", description="Where resources without a path are stored."
    )

    @field_validator("ssh_key", "known_hosts", mode="before")
    @classmethod
    def _paths_as_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @model_validator(mode="after")
    def _check(self) -> "SSHSettings":
        if not self.host or any(c in self.host for c in " \n\x00/"):
            raise ValueError(f"Cluster host {self.host!r} is not a valid host name or address; pass a name such as "
                             "'head.example.com' or an address such as '10.0.0.5'.")
        if not 0 < self.port < 65536:
            raise ValueError(f"Cluster port {self.port} is out of range 1-65535; the SSH port is usually 22.")
        return self

    # -- connection ----------------------------------------------------------------------------------------
    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``asyncssh.connect`` (and so ``sshfs.SSHFileSystem``)."""
        import asyncssh

        tuning = settings.current()
        opts: dict[str, Any] = {
            # an unreachable host fails within connect_timeout (SYN unanswered; a refusal fails at once)
            "port": self.port, "connect_timeout": tuning.connect_timeout,
            # A path that goes silent (no reset, no FIN: a dropped route, a dead NAT entry) would block a copy
            # forever; unanswered keepalives end the connection, and the copy's retry reconnects.
            # OpenSSH's ServerAliveInterval / ServerAliveCountMax.
            "keepalive_interval": tuning.ssh_keepalive_interval,
            "keepalive_count_max": tuning.ssh_keepalive_count_max,
        }
        ciphers = _ssh_private.cipher_preference()
        if ciphers:
            opts["encryption_algs"] = ciphers
        if self.user:
            opts["username"] = self.user
        if self.ssh_key is not None:
            value = self.ssh_key.get_secret_value()
            try:
                if "PRIVATE KEY" in value:
                    key = asyncssh.import_private_key(value)
                else:
                    key = asyncssh.read_private_key(os.path.expanduser(value))
            except (OSError, asyncssh.KeyImportError) as exc:
                raise CredentialsError(
                    f"The ssh_key of cluster {self.host}:{self.port} could not be read ({type(exc).__name__}); "
                    "pass the path of a private key file or the key text itself."
                ) from None
            opts["client_keys"] = [key]
        if not self.verify_host_key:
            # Explicit, documented user opt-out (Cluster.verify_host_key=False): accept any host key.
            opts["known_hosts"] = None
        elif self.host_key:
            try:
                pinned = asyncssh.import_public_key(self.host_key)
            except asyncssh.KeyImportError as exc:
                raise CredentialsError(f"host_key of {self.host} is not a public key line: {exc}") from None
            opts["known_hosts"] = ([pinned], [], [])
        else:
            path = os.path.expanduser(self.known_hosts or "~/.ssh/known_hosts")
            if not os.path.exists(path):
                raise HostKeyMismatch(
                    f"No known_hosts file at {path} to verify {self.host}:{self.port}. Add the host with "
                    f"`ssh-keyscan -p {self.port} {self.host} >> {path}` (and check the fingerprint), or pass "
                    "host_key='ssh-ed25519 AAAA...'."
                )
            opts["known_hosts"] = path
        return opts

    def is_up(self, timeout: float = 5.0) -> bool:
        """True if the SSH port answers."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout):
                return True
        except OSError:
            return False


# One connection per (host, port, user, key, host-key trust): reused across resources, dropped when it breaks.
_CONNECTIONS: dict[tuple, AbstractFileSystem] = {}
_CONNECTIONS_LOCK = threading.Lock()


def _closed(fs: AbstractFileSystem) -> bool:
    """True when the SSH connection under an SSHFileSystem has gone (peer closed it, network dropped)."""
    return bool(fs.client.is_closed())


class SSHSystem(System):
    """Files on an SSH host (a Cluster) over SFTP. Relative paths and ``~/...`` are under the login user's home."""

    name = "ssh"
    aliases = ("sftp",)
    max_concurrency = 8
    bulk_writes = True
    bulk_reads = True
    _home: ClassVar[dict[tuple, str]] = {}

    def __init__(self, cluster: Optional[SSHSettings] = None, **_: object) -> None:
        if cluster is None:
            raise CredentialsError(
                "system 'ssh' needs a cluster: pass system=rh.cluster('name') or cluster=... instead of a string."
            )
        self.cluster = cluster

    def identity(self) -> tuple:
        c = self.cluster
        return ("ssh", c.host, c.port, c.user)

    def describe(self) -> str:
        c = self.cluster
        who = f"{c.user}@" if c.user else ""
        name = getattr(c, "name", None)  # a saved Cluster block has one; bare SSHSettings do not
        label = f"cluster {name!r} " if name else "cluster "
        return f"{label}({who}{c.host}:{c.port})"

    def _connection_key(self) -> tuple:
        """The endpoint plus a digest of how we authenticate and verify it: a Cluster with another key or
        another trusted host key must never reuse a connection opened with different settings."""
        c = self.cluster
        secret = c.ssh_key.get_secret_value() if c.ssh_key is not None else ""
        auth = repr((secret, c.known_hosts, c.host_key, c.verify_host_key)).encode()
        return (*self.identity(), hashlib.sha256(auth).hexdigest())

    @property  # type: ignore[override]  # not cached: a dropped connection must be replaced on next use
    def fs(self) -> AbstractFileSystem:
        fs = self.__dict__.get("_fs")
        if fs is None or _closed(fs):
            fs = self.__dict__["_fs"] = self._make_fs()
        return fs

    def reset(self) -> None:
        """Drop the shared connection (after it broke) so the next use reconnects."""
        with _CONNECTIONS_LOCK:
            _CONNECTIONS.pop(self._connection_key(), None)
        self.__dict__.pop("_fs", None)

    def _make_fs(self) -> AbstractFileSystem:
        key = self._connection_key()
        with _CONNECTIONS_LOCK:
            fs = _CONNECTIONS.get(key)
            if fs is not None and not _closed(fs):
                return fs
            fs = self._connect()
            _CONNECTIONS[key] = fs
            return fs

    def _connect(self) -> AbstractFileSystem:
        import asyncssh
        from sshfs import SSHFileSystem

        c = self.cluster
        # Outside the try: a bad key or a missing known_hosts is the user's to fix, not "host unavailable".
        options = c.connect_options()
        try:
            # OpenSSH allows 10 sessions per connection (MaxSessions) and counts a finished command's session
            # until it has reaped it. sshfs keeps max_sessions - 2 SFTP channels open once a burst of requests
            # filled its pool; 5 (not 8) leave room for the tar streams (2 per copy), `cp` of server-side copies
            # and sessions not yet reaped - with 8, a `cp` right after another one failed with "open failed".
            fs = SSHFileSystem(c.host, skip_instance_cache=True, max_sessions=7, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostKeyMismatch(
                f"The host key of {self.describe()} is not the trusted one ({exc.reason}). If the host was "
                "reinstalled, verify its new key and update known_hosts/host_key; otherwise do not connect."
            ) from None
        except (asyncssh.PermissionDenied, PermissionError):  # sshfs re-raises PermissionDenied as PermissionError
            raise CredentialsError(
                f"{self.describe()} refused the login; check user and ssh_key of the Cluster block."
            ) from None
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            # OSError, TimeoutError: refused, no route, no answer within connect_timeout, a name that does not
            # resolve; asyncssh.Error: it answered, then the handshake failed (dropped, too many connections)
            first = isinstance(exc, (OSError, TimeoutError)) and first_contact_error(self.describe(), exc, _SSH_CHECK)
            raise first or SystemUnavailable(
                f"Cannot connect to {self.describe()}: {type(exc).__name__}: {exc}. {_SSH_CHECK}"
            ) from None
        answered(self.describe())
        return fs

    @classmethod
    def is_transient(cls, exc: BaseException) -> Optional[bool]:
        """asyncssh's errors by type and code: a lost connection, a disconnect for too many connections or a
        corrupted packet, a channel the server could not open for now (sshd out of sessions), an SFTP session whose
        connection is gone, a remote command whose channel closed without an exit status (the connection dropped)
        are transient; a refused login, an untrusted host key, a failed command and other SFTP errors are not."""
        asyncssh = sys.modules.get("asyncssh")
        if asyncssh is None or not isinstance(exc, asyncssh.Error):
            return None
        if isinstance(exc, TimeoutError):  # asyncssh.TimeoutError: a remote command ran out of time
            return True
        if isinstance(exc, asyncssh.DisconnectError):
            return exc.code in (asyncssh.DISC_CONNECTION_LOST, asyncssh.DISC_TOO_MANY_CONNECTIONS,
                                asyncssh.DISC_BY_APPLICATION, asyncssh.DISC_MAC_ERROR)
        if isinstance(exc, asyncssh.ChannelOpenError):
            return exc.code in (asyncssh.OPEN_CONNECT_FAILED, asyncssh.OPEN_RESOURCE_SHORTAGE)
        if isinstance(exc, (asyncssh.SFTPNoConnection, asyncssh.SFTPConnectionLost)):
            return True
        if isinstance(exc, asyncssh.ProcessError):
            return exc.exit_status is None and exc.exit_signal is None
        return False

    @classmethod
    def connection_errors(cls) -> tuple[type[BaseException], ...]:
        import asyncssh

        return (*super().connection_errors(), asyncssh.ConnectionLost, asyncssh.SFTPNoConnection,
                asyncssh.SFTPConnectionLost)

    def home(self) -> str:
        key = self.identity()
        if key not in self._home:
            fs = self.fs

            async def _realpath() -> str:
                async with fs.client.start_sftp_client() as sftp:
                    return await sftp.realpath(".")

            self._home[key] = sync(fs.loop, _realpath)
        return self._home[key]

    def normalize(self, path: str) -> str:
        path = str(path)
        if path.startswith(("ssh://", "sftp://")):
            path = "/" + path.split("://", 1)[1].split("/", 1)[1]
        if path.startswith("/") or path.startswith("~"):
            return path
        return "~/" + path

    def fs_path(self, path: str) -> str:
        path = self.normalize(path)
        if path == "~" or path.startswith("~/"):
            return posixpath.normpath(self.home() + path[1:])
        return posixpath.normpath(path)

    def url(self, path: str) -> str:
        c = self.cluster
        who = f"{c.user}@" if c.user else ""
        return f"ssh://{who}{c.host}:{c.port}/{self.normalize(path).lstrip('/')}"

    def default_root(self) -> Optional[str]:
        return self.cluster.default_root

    def ensure_container(self, path: str, create: bool = False) -> None:
        """Connect now (or reuse the connection): before a write, an unreachable host, a refused login or an
        untrusted host key fails at once with its own error instead of inside a retried task."""
        self.fs

    def same_store(self, other: System) -> bool:
        return isinstance(other, SSHSystem) and other.identity() == self.identity()

    def server_side_copy(self, src_fs_path: str, dst_fs_path: str, size: Optional[int] = None) -> None:
        self.fs.makedirs(posixpath.dirname(dst_fs_path), exist_ok=True)
        self.fs.cp_file(src_fs_path, dst_fs_path)

    def rm_tree(self, fs_path: str) -> None:
        """One ``rm -rf`` on the host: one round trip instead of one SFTP request per entry, and names SFTP
        clients refuse in a directory listing (asyncssh's rmtree rejects a backslash) are removed as well."""
        fs = self.fs
        if not fs.exists(fs_path):
            raise FileNotFoundError(fs_path)
        import asyncssh

        try:
            # asyncssh's public run (sshfs's private _execute is the same call)
            sync(fs.loop, lambda: fs.client.run(f"rm -rf -- {shlex.quote(fs_path)}", check=True))
        except asyncssh.ProcessError as exc:  # e.g. a directory without write permission: rm's own words
            reason = (exc.stderr or "").strip() if isinstance(exc.stderr, str) else ""
            raise PermissionError(f"could not delete {fs_path} on {self.describe()}: {reason or exc}") from None

    def remove_empty_dir(self, fs_dir: str) -> None:
        # sshfs's synchronous rmdir is fsspec's no-op (fsspec mirrors only the async methods it knows of), and its
        # _rmdir is private: one SFTP rmdir request through asyncssh's public SFTP client, which the server refuses
        # for a directory that is not empty. (A channel more per call; only blob retention calls this, rarely.)
        import asyncssh

        fs = self.fs

        async def rmdir() -> None:
            async with fs.client.start_sftp_client() as sftp:
                await sftp.rmdir(fs_dir)

        try:
            sync(fs.loop, rmdir)
        except asyncssh.SFTPError as exc:  # e.g. not empty: the OSError the contract promises
            raise OSError(f"could not remove {fs_dir} on {self.describe()}: {exc.reason}") from None

    def block_fields(self) -> dict[str, Any]:
        return {"system": self.name, "cluster": self.cluster}

    # 128 KiB SFTP reads: 256 MiB in 0.63 s here vs 0.86 s with sshfs's 48 KiB (OpenSSH refuses >= 256 KiB).
    def get_options(self, size: Optional[int] = None) -> dict[str, Any]:
        block = _ssh_private.read_block_size()  # None on asyncssh releases that cannot read past 64 KiB safely
        return {"block_size": block} if block else {}

    def find_files(self, fs_root: str) -> dict[str, dict[str, Any]]:
        """Like ``fs.find``, but the directories of each tree level are read concurrently (pipelined requests
        on the SFTP channels): one round trip per level instead of one per directory."""
        fs = self.fs

        async def walk() -> Optional[dict[str, dict[str, Any]]]:
            gate = asyncio.Semaphore(32)

            async def ls(path: str) -> Any:
                async with gate:
                    try:
                        return await fs._ls(path, detail=True)
                    except FileNotFoundError as exc:
                        return exc

            found: dict[str, dict[str, Any]] = {}
            level = [fs_root]
            while level:
                listings = await asyncio.gather(*(ls(d) for d in level))
                if isinstance(listings[0], FileNotFoundError) and level == [fs_root]:
                    return None  # a file, or nothing: fs.find below says which
                level = []
                for listing in listings:
                    if isinstance(listing, FileNotFoundError):
                        continue  # removed while we walked
                    for info in listing:
                        if info["type"] == "directory":
                            level.append(info["name"])
                        else:
                            found[info["name"]] = info
            return found

        found = sync(fs.loop, walk)
        return fs.find(fs_root, detail=True, withdirs=False) if found is None else found

    # The same 128 KiB requests for streaming reads (many in flight per read call); a larger block_size would
    # become the SFTP request size, which OpenSSH caps.
    def open_read(self, fs_path: str, size: Optional[int] = None) -> Any:
        block = _ssh_private.read_block_size()
        return self.fs.open(fs_path, "rb", block_size=block) if block else self.fs.open(fs_path, "rb")

    def bulk_upload(self, local_root: str, keys: list[str], dst_root: str) -> None:
        from rh_prefect.systems import _tarstream

        _tarstream.upload(self.fs, local_root, keys, dst_root)

    def bulk_download(self, src_root: str, keys: list[str], local_root: str) -> None:
        from rh_prefect.systems import _tarstream

        _tarstream.download(self.fs, src_root, keys, local_root)

    def bulk_read(self, src_root: str, keys: list[str], handle: Any) -> None:
        from rh_prefect.systems import _tarstream

        _tarstream.read_files(self.fs, src_root, keys, handle)
