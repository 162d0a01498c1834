"""The contract every storage system fulfils, and the registry that finds a system by name.

A :class:`System` turns (system name, credentials) into an fsspec filesystem plus a few capabilities the copy
engine asks about. Backend knowledge (bucket rules, SSH host keys, git refs) lives in the modules of this
package and nowhere else: code above this layer never compares system names.

Paths: users write *system paths* (``/my-bucket/a/b`` on S3, ``/home/me/data`` or ``~/data`` on a cluster,
``org/repo@main/docs`` on GitHub); :meth:`System.fs_path` turns them into the filesystem's own paths and
:meth:`System.user_path` back.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import os
import posixpath
import socket
import uuid
from datetime import datetime, timezone
from abc import ABC, abstractmethod
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Optional
from urllib.parse import urlsplit

from rh_prefect import settings
from rh_prefect.errors import Cancelled, InvalidPath, ReadOnlySystem, RhError, SystemUnavailable, UnknownSystem

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem  # fsspec itself is imported when a filesystem is made

_REGISTRY: dict[str, type["System"]] = {}
#: the modules of the systems, imported (and so registered) by :func:`load_backends` when a system is looked up by
#: name: a process that only lists a local path imports none of the others
BACKENDS = ("rh_prefect.systems.local", "rh_prefect.systems.ssh", "rh_prefect.systems.object_store",
            "rh_prefect.systems.github")
#: the end of the name of the hidden directory that holds a Blob's immutable versions, beside the blob's file
#: (``.<name>.rh-versions``): defined here because listings and copies must leave it out on every system
VERSIONS_SUFFIX = ".rh-versions"


class System(ABC):
    """One storage system: where bytes live and how to reach them."""

    #: canonical name stored in blocks ("file", "s3", "gs", "ssh", "github")
    name: ClassVar[str]
    #: other names users may type
    aliases: ClassVar[tuple[str, ...]] = ()
    #: False for systems that can only be read (GitHub)
    writable: ClassVar[bool] = True
    #: True when a single write becomes visible all at once (object stores); else the engine writes a
    #: temporary name and renames it
    atomic_writes: ClassVar[bool] = False
    #: True when paths are on this machine's own disk
    is_local: ClassVar[bool] = False
    #: transfer concurrency that suits this backend
    max_concurrency: ClassVar[int] = 8

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            for key in (cls.name, *cls.aliases):
                _REGISTRY[key] = cls

    # -- identity -----------------------------------------------------------------------------------------
    @abstractmethod
    def identity(self) -> tuple:
        """Hashable description of the endpoint (not the secrets): equal identities share one store."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, System) and self.identity() == other.identity()

    def __hash__(self) -> int:
        return hash(self.identity())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    def describe(self) -> str:
        """Short human description used in messages (never contains secrets)."""
        return self.name

    # -- filesystem ---------------------------------------------------------------------------------------
    @cached_property
    def fs(self) -> AbstractFileSystem:
        """The fsspec filesystem for this system (created on first use)."""
        return self._make_fs()

    @abstractmethod
    def _make_fs(self) -> AbstractFileSystem: ...

    def __getstate__(self) -> dict[str, Any]:
        # A System sent to another process (a Dask worker) travels without its live filesystem and reconnects
        # there on first use: open connections and event loops cannot be pickled.
        state = dict(self.__dict__)
        state.pop("fs", None)
        state.pop("_fs", None)
        return state

    def reset(self) -> None:
        """Forget the filesystem (and its connections) so the next use reconnects, e.g. before a retry."""
        self.__dict__.pop("fs", None)

    def fs_path(self, path: str) -> str:
        """System path -> filesystem path."""
        return path

    def user_path(self, fs_path: str) -> str:
        """Filesystem path -> system path (inverse of :meth:`fs_path`)."""
        return fs_path

    def normalize(self, path: str) -> str:
        """Canonical system path as stored in a block. Must not touch the network."""
        return str(path)

    def url(self, path: str) -> str:
        """A URL for messages and the CLI, e.g. ``s3://bucket/key``."""
        return f"{self.name}://{self.fs_path(path).lstrip('/')}"

    @abstractmethod
    def default_root(self) -> Optional[str]:
        """Where resources without an explicit path go, or None when a path must be given."""

    def default_root_hint(self) -> str:
        """What to do when :meth:`default_root` is None."""
        return f"pass path=... for system {self.name!r}"

    # -- capabilities the copy engine asks about -----------------------------------------------------------
    def same_store(self, other: "System") -> bool:
        """True when a copy from ``self`` to ``other`` can run server-side (no bytes through this process)."""
        return False

    def server_side_copy(self, src_fs_path: str, dst_fs_path: str, size: Optional[int] = None) -> None:
        """Copy one object within the store without downloading it (``size``: from the listing, if known)."""
        self.fs.copy(src_fs_path, dst_fs_path)

    def rm_tree(self, fs_path: str) -> None:
        """Delete a file, or a directory and everything under it. Raises FileNotFoundError if nothing is there."""
        self.fs.rm(fs_path, recursive=True)

    async def server_side_copy_async(self, src_fs_path: str, dst_fs_path: str, size: Optional[int] = None) -> None:
        """:meth:`server_side_copy` as a coroutine on an asynchronous filesystem's event loop (used for many
        small objects at once); only called when ``fs.async_impl`` is true."""
        await self.fs._cp_file(src_fs_path, dst_fs_path)

    def check_writable(self, path: str) -> None:
        if not self.writable:
            raise ReadOnlySystem(
                f"{self.describe()} is read-only, so {path!r} cannot be written; copy the data to a writable "
                "system first, e.g. folder.to(system='file')."
            )

    # -- errors -------------------------------------------------------------------------------------------
    @classmethod
    def is_transient(cls, exc: BaseException) -> Optional[bool]:
        """Whether a retry can cure ``exc``, judged by its type (and status or error code), never by its text:
        True or False for the exceptions of this system's client library, None for any other ("not mine").
        The package's one retry policy (:func:`rh_prefect.runtime.tasks.is_transient`) asks every system class."""
        return None

    @classmethod
    def connection_errors(cls) -> tuple[type[BaseException], ...]:
        """The exception types of this system's client that mean a connection failed, was lost or timed out."""
        return (ConnectionError, TimeoutError)

    def translate(self, exc: BaseException, what: str) -> Optional[Exception]:
        """One of our errors for a backend error (with advice), or None to let the original through.

        The base rule: a connection that fails or times out (:meth:`connection_errors`) means the system is
        unavailable, for now: an endpoint that never answered has already failed with its own error (see
        :func:`first_contact_error`), so this one answered before and a retry may succeed.
        """
        if isinstance(exc, self.connection_errors()):
            return SystemUnavailable(
                f"{self.describe()} could not be reached for {what!r} ({type(exc).__name__}: {str(exc)[:200]}); "
                "check that it is up and the endpoint is right, then try again."
            )
        return None

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run a backend call, turning backend errors into rh errors via :meth:`translate`.

        ``FileNotFoundError`` passes through so callers can say which file or folder is missing.
        """
        try:
            yield
        except (RhError, FileNotFoundError):
            raise
        except Exception as exc:  # backend-specific types (botocore, aiohttp, asyncssh): classified below
            mapped = self.translate(exc, what)
            if mapped is None:
                raise
            raise mapped from exc

    def ensure_container(self, path: str, create: bool = False) -> None:
        """Make sure the place that will hold ``path`` exists (a bucket); create it when ``create``."""

    def makedirs(self, fs_dir: str) -> None:
        """Create a directory (and parents) where the store has real directories; object stores need none."""
        if not self.atomic_writes:
            self.fs.makedirs(fs_dir, exist_ok=True)

    def remove_empty_dir(self, fs_dir: str) -> None:
        """Remove the directory ``fs_dir`` if it is empty; OSError when it is not empty or not there. Nothing to
        do on stores without real directories."""
        if not self.atomic_writes:
            self.fs.rmdir(fs_dir)

    @staticmethod
    def mtime(info: dict[str, Any]) -> Optional[float]:
        """Modification time of a listing entry as epoch seconds, whatever the backend calls it."""
        for key in ("mtime", "LastModified", "updated", "last_modified", "modified", "created"):
            value = info.get(key)
            if value is None:
                continue
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, datetime):
                return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
            if isinstance(value, str):
                try:
                    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError:
                    continue
                return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
        return None

    @classmethod
    def fingerprint(cls, info: dict[str, Any]) -> tuple[Any, ...]:
        """What tells a listed file's content apart without reading it: size, modification time and the store's
        own content tag when its listing has one (S3 ETag, GCS md5/crc32c, GitHub blob sha). A rewrite with the
        same size inside the store's time resolution and no content tag (a second over SFTP) looks unchanged."""
        tags = tuple(str(info[k]) for k in ("ETag", "etag", "md5Hash", "crc32c", "sha") if info.get(k))
        return int(info.get("size") or 0), cls.mtime(info), tags

    def temp_path(self, fs_path: str) -> str:
        """A hidden sibling name used while a file is being written, renamed to ``fs_path`` on commit."""
        head, tail = posixpath.split(fs_path)
        return posixpath.join(head, f".{tail}.rh-tmp-{uuid.uuid4().hex[:12]}")

    def commit_temp(self, tmp: str, fs_path: str) -> None:
        """Rename the finished temporary file ``tmp`` (from :meth:`temp_path`) to ``fs_path`` in one step,
        replacing a file already there."""
        self.fs.mv(tmp, fs_path)

    @staticmethod
    def is_temp_name(fs_path: str) -> bool:
        """True for the hidden names rh-prefect keeps to itself, which listings and copies leave out: unfinished
        writes (a hidden temporary file, anything inside a staging directory) and a Blob's directory of
        versions (``.<name>.rh-versions/``, see :mod:`rh_prefect.blob_store`) with everything in it."""
        if ".rh-tmp-" in fs_path:
            return True
        return VERSIONS_SUFFIX in fs_path and any(
            part.startswith(".") and part.endswith(VERSIONS_SUFFIX) for part in fs_path.split("/"))

    #: True when the system can receive many local files in one stream (:meth:`bulk_upload`)
    bulk_writes: ClassVar[bool] = False
    #: True when the system can send many files in one stream to local disk (:meth:`bulk_download`)
    bulk_reads: ClassVar[bool] = False

    def bulk_upload(self, local_root: str, keys: list[str], dst_root: str) -> None:
        """Write many small local files (``local_root/key`` -> ``dst_root/key``) in one round trip, each file
        appearing atomically. Only called when :attr:`bulk_writes` is True."""
        raise NotImplementedError

    def bulk_download(self, src_root: str, keys: list[str], local_root: str) -> None:
        """Read many small files (``src_root/key`` -> local ``local_root/key``) in one round trip, each file
        appearing atomically. Only called when :attr:`bulk_reads` is True."""
        raise NotImplementedError

    def bulk_read(self, src_root: str, keys: list[str], handle: Any) -> None:
        """Read many small files (``src_root/key``) in one round trip, calling ``handle(key, content)`` for each
        as it arrives (an exception from ``handle`` stops the stream and is raised). Only called when
        :attr:`bulk_reads` is True."""
        raise NotImplementedError

    def put_options(self, size: Optional[int] = None) -> dict[str, Any]:
        """Keyword arguments for ``fs.put_file`` of a ``size``-byte file (when known) that keep memory bounded
        (part size, parts in flight)."""
        return {}

    def put_file(self, local_path: str, fs_path: str, size: Optional[int] = None) -> None:
        """Upload the local file ``local_path`` (``size`` bytes, when known) to ``fs_path`` with bounded memory."""
        self.fs.put_file(local_path, fs_path, **self.put_options(size))

    def get_options(self, size: Optional[int] = None) -> dict[str, Any]:
        """Keyword arguments for ``fs.get_file`` of a ``size``-byte file (when known) that keep memory bounded."""
        return {}

    async def get_file_async(self, fs_path: str, local_path: str, size: Optional[int] = None) -> int:
        """Download ``fs_path`` to the local file ``local_path`` (whose directory exists) as a coroutine on an
        asynchronous filesystem's event loop, and return how many bytes were written. Used for many small
        files at once; only called when ``fs.async_impl`` is true. ``size``: from the listing, if known."""
        await self.fs._get_file(fs_path, local_path, **self.get_options(size))
        return os.path.getsize(local_path)

    async def cat_file_async(self, fs_path: str, size: Optional[int] = None) -> bytes:
        """The whole content of the small file ``fs_path``, as a coroutine on an asynchronous filesystem's event
        loop (many small files at once between two remote systems). ``size``: from the listing, if known."""
        return await self.fs._cat_file(fs_path)

    def find_files(self, fs_root: str) -> dict[str, dict[str, Any]]:
        """``{path: info}`` of every file under ``fs_root`` (``fs_root`` itself when it is a file), as
        ``fs.find(detail=True)`` gives it; empty or ``FileNotFoundError`` when nothing is there."""
        return self.fs.find(fs_root, detail=True, withdirs=False)

    def ls(self, fs_path: str) -> list[dict[str, Any]]:
        """The entries directly under the directory ``fs_path`` (or the file itself), as ``fs.ls(detail=True)``
        gives them; ``FileNotFoundError`` when nothing is there."""
        return self.fs.ls(fs_path, detail=True)

    def exists(self, fs_path: str) -> bool:
        return self.fs.exists(fs_path)

    def isdir(self, fs_path: str) -> bool:
        return self.fs.isdir(fs_path)

    def iter_files(self, fs_root: str) -> Iterator[dict[str, dict[str, Any]]]:
        """What :meth:`find_files` returns, in pages as the listing arrives, so that a copy can start before a
        long listing ends. This default yields the whole listing as one page; systems whose servers list in
        pages (object stores) yield each. ``FileNotFoundError`` when nothing is there."""
        yield self.find_files(fs_root)

    def open_read(self, fs_path: str, size: Optional[int] = None) -> Any:
        """A binary file object for reading ``fs_path`` once from start to end (streaming copies)."""
        return self.fs.open(fs_path, "rb", block_size=settings.current().chunk_size)

    def open_upload(self, fs_path: str, block_size: int, size: Optional[int] = None) -> Any:
        """On :attr:`atomic_writes` systems: a binary file object whose bytes appear under ``fs_path`` only when
        ``close()`` succeeds; ``discard()`` abandons it. ``size``: the total to be written, when known."""
        return self.fs.open(fs_path, "wb", block_size=block_size)

    def block_fields(self) -> dict[str, Any]:
        """The fields a resource block stores to find this system again."""
        return {"system": self.name}


#: The methods a copy calls once per file (or per batch of small files) on the systems it writes to and reads from:
#: where a stopped copy stops (see :func:`stoppable`). Listing and clean-up calls are not among them.
STOP_POINTS = ("makedirs", "temp_path", "commit_temp", "put_options", "put_file", "get_options", "open_read",
               "open_upload", "server_side_copy", "server_side_copy_async", "get_file_async", "cat_file_async",
               "bulk_upload", "bulk_download", "bulk_read")
_STOPPABLE: dict[type, type] = {}


def stoppable(system: "System", stop: Any, why: str) -> "System":
    """A view of ``system`` that refuses new work once ``stop`` (a ``threading.Event``) is set: each of its
    :data:`STOP_POINTS` raises :class:`~rh_prefect.errors.Cancelled` (with ``why``) instead of starting a file.

    The view is the same store (same identity, same connections); a copy through it stops at file boundaries:
    what is in flight completes or is discarded, and no file is left half-written because every write commits
    atomically. Used for copies that run inside a long-lived process, where nothing can be killed.
    """
    cls = type(system)
    view_cls = _STOPPABLE.get(cls)
    if view_cls is None:
        view_cls = _STOPPABLE[cls] = type(f"Stoppable{cls.__name__}", (cls,),
                                          {name: _stop_point(getattr(cls, name)) for name in STOP_POINTS})
    view = copy.copy(system)
    view.__class__ = view_cls
    view._stop, view._stop_why = stop, why
    return view


def _stop_point(method: Any) -> Any:
    def check(self: "System") -> None:
        if self._stop.is_set():
            raise Cancelled(f"{self._stop_why} The copy to {self.describe()} stopped before its next file; what it "
                            "committed stays and nothing is half-written. Run the copy again to resume it.")

    import inspect  # here: only a stoppable view (a long-lived worker's copy) needs it

    if inspect.iscoroutinefunction(method):
        async def checked_async(self: "System", *args: Any, **kwargs: Any) -> Any:
            check(self)
            return await method(self, *args, **kwargs)

        return functools.wraps(method)(checked_async)

    def checked(self: "System", *args: Any, **kwargs: Any) -> Any:
        check(self)
        return method(self, *args, **kwargs)

    return functools.wraps(method)(checked)


def load_backends() -> None:
    """Import every system's module, which registers its class. By name (a plugin registry): the modules import
    this one, and are imported only when a system is looked up by name or every system is asked something."""
    import importlib

    for module in BACKENDS:
        importlib.import_module(module)


def system_classes() -> list[type[System]]:
    """Every registered system class, once each (in the order they were defined)."""
    load_backends()
    return list(dict.fromkeys(_REGISTRY.values()))


def system_class(name: str) -> type[System]:
    """Look up a system class by name or alias (``"sftp"`` -> the SSH system)."""
    load_backends()
    if not isinstance(name, str):
        raise UnknownSystem(f"system must be a name such as 's3' or a Cluster, got {type(name).__name__}.")
    key = name.strip().lower()
    if key not in _REGISTRY:
        known = ", ".join(sorted(k for k, v in _REGISTRY.items() if k == v.name))
        raise UnknownSystem(f"Unknown system {name!r}; use one of: {known}, or pass a Cluster object.")
    return _REGISTRY[key]


def check_path(path: Any) -> str:
    """Validate a resource path as the user typed it: no NUL or newline (no system stores them safely, and
    remote commands would split on them). Returns it as a string."""
    text = str(path)
    if any(c in text for c in "\x00\n\r"):
        raise InvalidPath(f"Path {text!r} contains a NUL or newline character; remove it.")
    return text


def check_relative_key(key: str) -> str:
    """Validate a file key inside a folder: relative, no ``..``, no NUL or newline. Returns it normalised.

    Keys are '/'-separated on every system; a backslash is an ordinary character of a name (as in POSIX file
    names and object keys), so a name listed by ``ls()`` or copied from elsewhere reads, writes and removes
    as itself."""
    if not isinstance(key, str) or not key:
        raise InvalidPath(f"A file name inside a folder must be a non-empty string, got {key!r}.")
    if any(c in key for c in "\x00\n\r"):
        raise InvalidPath(f"File name {key!r} contains a NUL or newline character; remove it.")
    if key.startswith("/"):
        raise InvalidPath(f"File name {key!r} is absolute; give a path relative to the folder, e.g. 'a/b.txt'.")
    parts = key.split("/")
    if any(p == ".." for p in parts):
        raise InvalidPath(f"File name {key!r} contains '..'; keys must stay inside the folder.")
    clean = "/".join(p for p in parts if p not in ("", "."))
    if not clean:
        raise InvalidPath(f"File name {key!r} names the folder itself; give a file name.")
    return clean


# -- endpoints that cannot be reached ----------------------------------------------------------------------
#: endpoints that answered at least once in this process, as their systems name them in messages (e.g.
#: ``"S3 endpoint http://10.0.0.5:9000"``, ``"cluster 'rh-cpu' (me@10.0.0.5:22)"``)
_ANSWERED: set[str] = set()


def answered(endpoint: str) -> None:
    """Record that ``endpoint`` answered: from now on, failing to connect to it is an outage that a retry may
    outlast, not a wrong address (see :func:`first_contact_error`)."""
    _ANSWERED.add(endpoint)


def first_contact_error(endpoint: str, exc: BaseException, check: str) -> Optional[SystemUnavailable]:
    """A :class:`SystemUnavailable` that is not transient when ``endpoint`` could not be connected to (``exc``:
    refused, no route, no answer within the settings' ``connect_timeout``, a name that does not resolve) and has
    never answered in this process; None when it answered before: then the client's and the task's retries ride
    out the outage.

    Why the first contact is not retried: a wrong endpoint or a host that is down does not come back within a
    retry's back-off, and the storage clients' own retries (gcsfs: 6 with back-off, ~35 s per request) plus the
    task's (4) would make the user wait minutes for the same answer. ``check``: what the user should check.
    """
    if endpoint in _ANSWERED:
        return None
    return SystemUnavailable(f"{endpoint} could not be reached ({_connect_failure(exc)}). {check}", transient=False)


def probe(url: str, what: str, check: str) -> None:
    """Open (and close) one TCP connection to the host and port of ``url`` unless it answered before in this
    process: a :func:`first_contact_error` if that fails. For clients whose own requests cannot fail at once
    without being retried (``what`` names the store in the message, ``check`` says what to check)."""
    parts = urlsplit(url)
    endpoint = f"{what} {parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    if endpoint in _ANSWERED:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=settings.current().connect_timeout).close()
    except OSError as exc:  # refused, no route, no answer (socket.timeout is TimeoutError), no such name
        raise first_contact_error(endpoint, exc, check) from exc  # type: ignore[misc]  # not answered: never None
    answered(endpoint)


def _connect_failure(exc: BaseException) -> str:
    """Why a connection could not be made, in words, from the exception's type and errno."""
    os_error = getattr(exc, "os_error", None)  # aiohttp's ClientConnectorError wraps the socket's error
    if isinstance(os_error, OSError):
        exc = os_error
    if isinstance(exc, TimeoutError):
        return f"no answer within {settings.current().connect_timeout:g} s, the connect_timeout setting"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens on that port"
    if isinstance(exc, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN,
                                                  errno.EHOSTDOWN):
        return "no route to the host"
    return type(exc).__name__


def request_limit(nbytes: int) -> float:
    """Seconds a request moving ``nbytes`` may take: the settings' ``request_deadline`` plus its bytes at
    ``request_min_rate``. Without a deadline a connection whose path went silent (no reset, no FIN) blocks an upload
    forever: storage clients time out reading an answer, not sending a body into a stalled window."""
    tuning = settings.current()
    return tuning.request_deadline + max(0, nbytes) / tuning.request_min_rate


async def within_deadline(coro: Any, nbytes: int, what: str) -> Any:
    """Await ``coro`` (a request moving ``nbytes``); a TimeoutError, which the retry policy treats as transient,
    when it takes longer than its deadline: :func:`request_limit`."""
    import asyncio  # here: code that never awaits (a local listing) need not import it

    limit = request_limit(nbytes)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        return await asyncio.wait_for(coro, limit)
    except TimeoutError:
        if loop.time() - started < limit:
            raise  # the request's own timeout, with its own message
        raise TimeoutError(
            f"{what}: no answer within {limit:.0f} s for {nbytes} bytes; the network path may have gone silent. "
            "The copy retries it (running it again resumes)."
        ) from None
