"""Object stores addressed as ``/bucket/key``: S3 (and S3-compatible stores) and Google Cloud Storage."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
import threading
from collections import deque
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, AsyncIterator, ClassVar, Iterator, Optional

from fsspec import AbstractFileSystem

from rh_prefect import settings
from rh_prefect.errors import CredentialsError, IntegrityError, NotFound
from rh_prefect.systems.base import System, probe, request_limit, within_deadline
from rh_prefect.systems.redact import redact_in_logs

logger = logging.getLogger("rh_prefect.systems")


class ObjectStoreSystem(System):
    """Common rules of bucket stores: the first path component is the bucket, writes are atomic objects."""

    atomic_writes = True
    max_concurrency = 16
    #: the credentials block class (in :mod:`rh_prefect.systems.credentials`) this store takes. By name: those
    #: classes are Prefect blocks, and a store used with the environment's credentials must not import Prefect
    #: (a command-line copy starts faster without it)
    credentials_type: ClassVar[str]
    #: environment variable naming a default bucket when no credentials block sets one
    default_bucket_env: ClassVar[str]

    def __init__(self, credentials: Any = None, **_: object) -> None:
        if credentials is not None:
            from rh_prefect.systems import credentials as blocks

            if not isinstance(credentials, getattr(blocks, self.credentials_type)):
                raise CredentialsError(
                    f"system {self.name!r} needs a {self.credentials_type} block, got {type(credentials).__name__}."
                )
        self.credentials = credentials

    def storage_options(self) -> dict[str, Any]:
        return self.credentials.storage_options() if self.credentials else {}

    def fs_path(self, path: str) -> str:
        path = str(path)
        for prefix in (f"{self.name}://", *(f"{a}://" for a in self.aliases)):
            if path.startswith(prefix):
                path = path[len(prefix) :]
        return path.strip("/")

    def user_path(self, fs_path: str) -> str:
        return "/" + fs_path.strip("/")

    def normalize(self, path: str) -> str:
        return self.user_path(self.fs_path(path))

    def url(self, path: str) -> str:
        return f"{self.name}://{self.fs_path(path)}"

    def bucket_of(self, path: str) -> str:
        return self.fs_path(path).split("/", 1)[0]

    def default_root(self) -> Optional[str]:
        bucket = (self.credentials and self.credentials.default_bucket) or os.environ.get(self.default_bucket_env)
        return f"/{bucket.strip('/')}" if bucket else None

    def default_root_hint(self) -> str:
        return (
            f"pass path='/my-bucket/...' (the first component is the bucket), or set a default bucket with "
            f"{self.default_bucket_env} or {self.credentials_type}(default_bucket=...)"
        )

    def same_store(self, other: System) -> bool:
        return type(other) is type(self) and other.identity() == self.identity()

    def block_fields(self) -> dict[str, Any]:
        return {"system": self.name, "credentials": self.credentials}

    def server_side_copy(self, src_fs_path: str, dst_fs_path: str, size: Optional[int] = None) -> None:
        self.fs.cp_file(src_fs_path, dst_fs_path)

    def iter_files(self, fs_root: str) -> Iterator[dict[str, dict[str, Any]]]:
        """Each page of the store's listing under ``fs_root`` as it arrives (up to ``settings.list_page_size`` objects),
        entries as ``find_files`` gives them, without directory placeholders (names ending in "/"). When the
        prefix holds nothing, ``fs_root`` may be one object (yielded as the only entry), an empty "directory"
        (nothing), or nothing at all (``FileNotFoundError``)."""
        bucket, _, key = fs_root.strip("/").partition("/")
        pages = self._object_pages(bucket, key.strip("/") + "/" if key.strip("/") else "")
        if pages is None:
            yield from super().iter_files(fs_root)
            return
        found = False
        try:
            while True:
                try:
                    page = _sync(self.fs.loop, pages.__anext__)
                except StopAsyncIteration:
                    break
                if page:
                    found = True
                    yield page
        finally:
            _sync(self.fs.loop, pages.aclose)
        if not found:  # one request more, not fsspec's find, which would list the prefix again first
            info = self.fs.info(fs_root)
            yield {info["name"]: info} if info.get("type") == "file" else {}

    def _object_pages(self, bucket: str, prefix: str) -> Optional[AsyncIterator[dict[str, dict[str, Any]]]]:
        """An async iterator over the listing pages of ``prefix`` in ``bucket``; None to list in one piece."""
        return None

    def ensure_container(self, path: str, create: bool = False) -> None:
        bucket = self.bucket_of(path)
        if not bucket:
            raise NotFound(f"No bucket in path {path!r}; {self.default_root_hint()}.")
        # Not fs.exists(): it answers False for refused credentials and unreachable endpoints too, which would
        # send the user looking for a bucket that is there. info() raises, and only "not found" means missing.
        try:
            with self.guard(bucket):
                self.fs.info(bucket)
            return
        except FileNotFoundError:
            pass
        if not create:
            raise NotFound(
                f"Bucket {bucket!r} does not exist on {self.describe()}; create it, or call folder.mkdir() to "
                "create it for you."
            )
        self.fs.mkdir(bucket)
        self.fs.invalidate_cache()

    def translate(self, exc: BaseException, what: str) -> Optional[Exception]:
        """Refused or missing credentials, and unreachable endpoints, as our errors with advice."""
        if isinstance(exc, PermissionError) or self.refused_access(exc):
            return CredentialsError(
                f"{self.describe()} refused access to {what!r} ({type(exc).__name__}); check the credentials "
                f"({self.credentials_type} block or environment)."
            )
        return super().translate(exc, what)

    @classmethod
    def refused_access(cls, exc: BaseException) -> bool:
        """True when ``exc`` (of this store's client) says credentials are missing, wrong or not allowed."""
        return False

    @classmethod
    def is_transient(cls, exc: BaseException) -> Optional[bool]:
        """aiohttp's errors (the HTTP client under both s3fs and gcsfs): a response by its status, a connection
        that failed or dropped, a body cut short or a timeout are transient; TLS failures and bad URLs are not."""
        aiohttp = sys.modules.get("aiohttp")  # not imported: none of its exceptions can exist
        if aiohttp is None or not isinstance(exc, aiohttp.ClientError):
            return None
        if isinstance(exc, aiohttp.ClientResponseError):
            return exc.status in TRANSIENT_STATUS
        if isinstance(exc, (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch, aiohttp.InvalidURL)):
            return False
        return isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))

    @classmethod
    def connection_errors(cls) -> tuple[type[BaseException], ...]:
        import aiohttp

        return (*super().connection_errors(), aiohttp.ClientConnectionError)


#: HTTP statuses a retry can cure: request timeout, too many requests, server errors (as s3fs, gcsfs and
#: botocore's retry handlers count them)
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def _status(code: Any) -> Optional[int]:
    """An HTTP status given as a number or its digits (gcsfs keeps whichever the answer had), else None."""
    try:
        return int(code)
    except (TypeError, ValueError):
        return None


#: environment variables a botocore session reads its credentials and settings from
_SESSION_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_DATA_PATH", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_EC2_METADATA_DISABLED")
_SESSIONS: dict[str, Any] = {}
_SESSIONS_LOCK = threading.Lock()


def _s3_code_and_status(exc: Any) -> tuple[Optional[str], Optional[int]]:
    """``(Error.Code, HTTP status)`` of a botocore ClientError (either may be None)."""
    response = exc.response if isinstance(getattr(exc, "response", None), dict) else {}
    error = response.get("Error") if isinstance(response.get("Error"), dict) else {}
    meta = response.get("ResponseMetadata") if isinstance(response.get("ResponseMetadata"), dict) else {}
    status = meta.get("HTTPStatusCode")
    return error.get("Code"), status if isinstance(status, int) else None


def _aio_session() -> Any:
    """The botocore session of this process for the current AWS environment. Building a session and the first
    client from it costs ~0.2 s of CPU (botocore registers ~130 handlers and parses its JSON service
    descriptions); with the session shared, a further S3 client costs ~0.03 s. A changed environment
    (credentials, profile, region) gets a session of its own, as does a forked child process."""
    import hashlib

    from aiobotocore.session import AioSession

    env = repr([(os.getpid(),)] + [(k, os.environ.get(k)) for k in _SESSION_ENV]).encode()
    key = hashlib.sha256(env).hexdigest()
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            session = _SESSIONS[key] = AioSession()
            # botocore's own timestamp parser (dateutil) is half the CPU of parsing a listing
            session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_parse_timestamp)
            # after botocore's own handler (a more specific event name would run before it)
            session.get_component("event_emitter").register_last("before-call.s3", _no_expect_for_small_bodies)
        return session


#: bodies up to this size are sent with their headers, without waiting for "100 Continue" first
EXPECT_CONTINUE_FROM = 2**20


def _no_expect_for_small_bodies(params: dict[str, Any], **_: Any) -> None:
    """botocore asks for ``Expect: 100-continue`` on every upload, and aiohttp then holds the body back until
    the server answers "100 Continue": one more round trip, and one more read and write on both ends, for each
    small file (2000 x 4 KiB to moto: the server's CPU per upload was ~2 ms). Waiting can only spare sending a
    body the server will refuse (a redirect, a bad signature); for a small one sending it costs less than the wait,
    so it is kept only for bodies over 1 MiB. rclone's uploads do not ask for it at all."""
    from botocore.utils import determine_content_length

    headers = params.get("headers") or {}
    if headers.get("Expect") == "100-continue":
        length = determine_content_length(params.get("body"))
        if length is not None and length <= EXPECT_CONTINUE_FROM:
            del headers["Expect"]


def _parse_timestamp(value: Any) -> Any:
    """ISO 8601 (listings) and RFC 1123 (headers) timestamps with the standard library; anything else, or a
    zone-less result, by botocore's parser."""
    import botocore.utils

    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value) if "T" in value else parsedate_to_datetime(value)
            if parsed.tzinfo is not None:
                return parsed
        except (TypeError, ValueError, IndexError):
            pass
    return botocore.utils.parse_timestamp(value)


class S3System(ObjectStoreSystem):
    """Amazon S3 or an S3-compatible endpoint."""

    name = "s3"
    aliases = ("s3a",)
    credentials_type = "S3Credentials"
    default_bucket_env = "RH_PREFECT_S3_BUCKET"

    def _endpoint(self) -> Optional[str]:
        if self.credentials and self.credentials.endpoint_url:
            return self.credentials.endpoint_url
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")

    def identity(self) -> tuple:
        key_id = self.credentials.aws_access_key_id if self.credentials else os.environ.get("AWS_ACCESS_KEY_ID")
        return ("s3", self._endpoint(), key_id)

    def describe(self) -> str:
        endpoint = self._endpoint()
        return f"s3 ({endpoint})" if endpoint else "s3"

    #: S3 error codes a retry can cure (botocore's retry handlers' throttling and transient codes, and a body
    #: corrupted in transit, which s3fs retries)
    TRANSIENT_CODES: ClassVar[frozenset[str]] = frozenset({
        "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException", "SlowDown",
        "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestThrottled",
        "ProvisionedThroughputExceededException", "LimitExceededException", "PriorRequestNotComplete",
        "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable",
        "XAmzContentSHA256Mismatch",
    })
    #: S3 error codes of missing, wrong or insufficient credentials
    ACCESS_CODES: ClassVar[frozenset[str]] = frozenset({
        "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
        "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "InvalidSecurity",
    })

    @classmethod
    def is_transient(cls, exc: BaseException) -> Optional[bool]:
        """botocore's errors: an error answer by its ``Error.Code`` and HTTP status (as botocore's and s3fs's retry
        rules do); connection failures, timeouts and cut responses are transient; missing credentials, invalid
        parameters and TLS failures are not. Then s3fs's retryable types and aiohttp's errors."""
        boto = sys.modules.get("botocore.exceptions")
        if boto is not None and isinstance(exc, boto.ClientError):
            code, status = _s3_code_and_status(exc)
            return code in cls.TRANSIENT_CODES or status in TRANSIENT_STATUS
        if boto is not None and isinstance(exc, boto.BotoCoreError):
            if isinstance(exc, boto.SSLError):
                return False
            return isinstance(exc, (boto.ConnectionError, boto.HTTPClientError, boto.IncompleteReadError))
        s3fs = sys.modules.get("s3fs.core")
        if s3fs is not None and isinstance(exc, s3fs.S3_RETRYABLE_ERRORS):
            return True
        return super().is_transient(exc)

    @classmethod
    def refused_access(cls, exc: BaseException) -> bool:
        boto = sys.modules.get("botocore.exceptions")
        if boto is None:
            return False
        if isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError)):
            return True
        if isinstance(exc, boto.ClientError):
            code, status = _s3_code_and_status(exc)
            return code in cls.ACCESS_CODES or status in (401, 403)
        return False

    @classmethod
    def connection_errors(cls) -> tuple[type[BaseException], ...]:
        import botocore.exceptions

        return (*super().connection_errors(), botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)

    def _make_fs(self) -> AbstractFileSystem:
        import s3fs

        from aiobotocore.httpsession import AIOHTTPSession

        from rh_prefect.systems._s3tls import SSL_CONTEXTS, PlainHTTPSession, SharedTLSHTTPSession

        SSL_CONTEXTS.usable(AIOHTTPSession)  # checked (and the way taken logged) once

        opts = self.storage_options()
        if self.credentials is None:  # the environment chain: botocore's debug logs must not show these either
            redact_in_logs([os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN")])
        # botocore reads AWS_ENDPOINT_URL_S3 itself, but s3fs builds some URLs from its own endpoint_url.
        opts.setdefault("endpoint_url", self._endpoint())
        # Checksums "when required" (botocore's default before 1.36): a CRC per request costs CPU on both ends
        # and S3-compatible stores differ in what they accept; integrity is checked by size and our own sha256.
        # The CA bundle is loaded once per process for all clients, and not at all for a plain-HTTP endpoint:
        # see _s3tls.
        plain = str(opts.get("endpoint_url") or "").lower().startswith("http://")
        # An endpoint that does not answer fails within connect_timeout (s3fs's default is 5 s, then botocore
        # retries); one that never answered is not retried (see _s3tls). aiohttp rounds deadlines of 5 s and more up
        # to the next whole second of its clock: ask for a second less there, so the setting is an upper bound.
        connect = settings.current().connect_timeout
        connect = connect - 1 if connect >= 6 else connect
        opts.setdefault(
            "config_kwargs",
            {"max_pool_connections": 32, "request_checksum_calculation": "when_required",
             "response_checksum_validation": "when_required", "connect_timeout": connect,
             "http_session_cls": PlainHTTPSession if plain else SharedTLSHTTPSession},
        )
        if "session" not in opts:
            opts["session"] = _aio_session()
        # A private instance, not fsspec's shared one: the shared cache is keyed by arguments only, so it would
        # hand back a client built from other environment credentials, or the broken session reset() dropped.
        return s3fs.S3FileSystem(skip_instance_cache=True, **opts)


    def server_side_copy(self, src_fs_path: str, dst_fs_path: str, size: Optional[int] = None) -> None:
        """One CopyObject for objects up to S3's 5 GiB limit (what rclone and the AWS SDKs' copy do), a
        multipart copy above it. s3fs's cp_file would first HEAD the source and switch to a serial 50 MiB
        part-by-part copy from 150 MiB on: 256 MiB took 2.4-3.5 s against moto instead of 0.6-0.9 s."""
        from fsspec.asyn import sync

        sync(self.fs.loop, self.server_side_copy_async, src_fs_path, dst_fs_path, size)

    async def server_side_copy_async(self, src_fs_path: str, dst_fs_path: str, size: Optional[int] = None) -> None:
        from rh_prefect.systems import _s3_private

        if size is None:
            await self.fs._cp_file(src_fs_path, dst_fs_path)
        else:
            await _s3_private.copy_object(self.fs, src_fs_path, dst_fs_path, size)

    # Uploads: upload_part parts (8 MiB), upload_parts_in_flight (4) at once: ~32 MiB per file in transit instead
    # of s3fs's default 10 x 50 MiB.
    def put_options(self, size: Optional[int] = None) -> dict[str, Any]:
        tuning = settings.current()
        return {"chunksize": tuning.upload_part, "max_concurrency": tuning.upload_parts_in_flight}

    # Streaming copies to another store: one GET read from start to end. s3fs's file object reads in ranged
    # GETs instead (one per 8 MiB block), and moto does work proportional to the whole object for each: a
    # 256 MiB object took ~10 s that way and ~0.7 s as one GET. rclone reads with one GET too.
    def open_read(self, fs_path: str, size: Optional[int] = None) -> Any:
        return _S3StreamReader(self.fs, fs_path)

    async def cat_file_async(self, fs_path: str, size: Optional[int] = None) -> bytes:
        # One GET. s3fs's _cat_file first asks for the size to choose ranged GETs, which is a HEAD per file
        # unless its directory cache happens to hold the listing; only small files come this way.
        from rh_prefect.systems import _s3_private

        return await _s3_private.cat_file(self.fs, fs_path)

    def _object_pages(self, bucket: str, prefix: str) -> Optional[AsyncIterator[dict[str, dict[str, Any]]]]:
        fs = self.fs
        if fs.version_aware:  # versions are listed another way; s3fs's find knows it
            return None

        async def pages() -> AsyncIterator[dict[str, dict[str, Any]]]:
            from rh_prefect.systems import _s3_private

            async for contents in _s3_private.list_pages(fs, bucket, prefix, settings.current().list_page_size):
                page = {}
                for item in contents:
                    if not item["Key"].endswith("/"):
                        info = _s3_private.file_info(item, bucket)
                        page[info["name"]] = info
                yield page

        return pages()

    # Streaming uploads of known, large size: parts uploaded concurrently (like put_file), not one at a time as
    # s3fs's file object does; the object still appears only when the upload completes.
    def open_upload(self, fs_path: str, block_size: int, size: Optional[int] = None) -> Any:
        tuning = settings.current()
        if size is None or size <= 2 * tuning.upload_part:
            return super().open_upload(fs_path, block_size, size)
        part = max(tuning.upload_part, -(-size // 9000))  # S3 allows 10,000 parts
        return _S3ParallelUpload(self.fs, fs_path, part, tuning.upload_parts_in_flight)

    # Downloads: one streamed GET (64 KiB reads). s3fs's default ranged GETs (10 x 50 MiB) held 418 MB for a
    # 256 MiB file and were 3x slower here (1.5 s vs 0.54 s); parallelism comes from copying files concurrently.
    def get_options(self, size: Optional[int] = None) -> dict[str, Any]:
        return {"max_concurrency": 1}


_GCS_CHECK = ("Check the endpoint (endpoint_url of the GCSCredentials block, or STORAGE_EMULATOR_HOST) and that the "
              "server is up.")


class GCSSystem(ObjectStoreSystem):
    """Google Cloud Storage (or fake-gcs-server via STORAGE_EMULATOR_HOST / endpoint_url)."""

    name = "gs"
    aliases = ("gcs", "gcp")
    credentials_type = "GCSCredentials"
    default_bucket_env = "RH_PREFECT_GS_BUCKET"

    def _endpoint(self) -> Optional[str]:
        if self.credentials and self.credentials.endpoint_url:
            return self.credentials.endpoint_url
        return os.environ.get("STORAGE_EMULATOR_HOST")

    def identity(self) -> tuple:
        return ("gs", self._endpoint(), self.credentials.project if self.credentials else None)

    def describe(self) -> str:
        endpoint = self._endpoint()
        return f"gs ({endpoint})" if endpoint else "gs"

    @classmethod
    def is_transient(cls, exc: BaseException) -> Optional[bool]:
        """gcsfs's errors as gcsfs's own retry rule (``gcsfs.retry.is_retriable``) judges them, by type and
        status code: an error answer with status 408, 429 or 5xx, a checksum mismatch (bytes corrupted in transit),
        a network error of google-auth (a token refresh that could not reach its server) or of requests (gcsfs
        turns a 502 into a ProxyError); then aiohttp's errors. A refused or missing credential is not transient."""
        retry = sys.modules.get("gcsfs.retry")
        if retry is not None:
            if isinstance(exc, retry.HttpError):
                return _status(exc.code) in TRANSIENT_STATUS
            if isinstance(exc, retry.ChecksumError):
                return True
            if isinstance(exc, retry.NonRetryableError):
                return False
        auth = sys.modules.get("google.auth.exceptions")
        if auth is not None and isinstance(exc, auth.GoogleAuthError):
            return isinstance(exc, auth.TransportError)
        requests = sys.modules.get("requests.exceptions")
        if requests is not None and isinstance(exc, requests.RequestException):
            return isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.ChunkedEncodingError)) \
                and not isinstance(exc, requests.SSLError)
        return super().is_transient(exc)

    @classmethod
    def refused_access(cls, exc: BaseException) -> bool:
        retry = sys.modules.get("gcsfs.retry")
        if retry is not None and isinstance(exc, retry.HttpError):
            return _status(exc.code) in (401, 403)
        auth = sys.modules.get("google.auth.exceptions")
        return auth is not None and isinstance(exc, auth.GoogleAuthError) and not isinstance(exc, auth.TransportError)

    @classmethod
    def connection_errors(cls) -> tuple[type[BaseException], ...]:
        import requests.exceptions

        return (*super().connection_errors(), requests.exceptions.ConnectionError, requests.exceptions.Timeout)

    def _make_fs(self) -> AbstractFileSystem:
        # Without this gcsfs probes a gRPC bucket API first and each bucket costs a minute of retries
        # against emulators; it must be set before gcsfs is imported.
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        import gcsfs

        opts = self.storage_options()
        endpoint = self._endpoint()
        if endpoint and not self.credentials:
            opts.update(endpoint_url=endpoint, token="anon")
        opts.setdefault("project", os.environ.get("GOOGLE_CLOUD_PROJECT", "rh-prefect"))
        # A connection that is not answered fails within connect_timeout (gcsfs sets none: aiohttp's default is
        # 30 s, and gcsfs makes 6 attempts with back-off); no total timeout, as gcsfs's own default (None) has none.
        import aiohttp

        opts.setdefault("requests_timeout", aiohttp.ClientTimeout(total=None,
                                                                  sock_connect=settings.current().connect_timeout))
        # An endpoint that never answered fails now, at once, instead of through gcsfs's retries (~35 s a
        # request). A probe, not a check inside gcsfs's requests: aiohttp turns any OSError raised there (ours
        # is a ConnectionError) into a ClientOSError, which gcsfs retries.
        location = endpoint or opts.get("endpoint_url") or "https://storage.googleapis.com"
        probe(location if "://" in location else f"http://{location}", "GCS endpoint", _GCS_CHECK)
        return gcsfs.GCSFileSystem(skip_instance_cache=True, **opts)  # private instance: see S3System._make_fs

    def put_options(self, size: Optional[int] = None) -> dict[str, Any]:
        return {"chunksize": 8 * 2**20}

    def _object_pages(self, bucket: str, prefix: str) -> Optional[AsyncIterator[dict[str, dict[str, Any]]]]:
        fs = self.fs

        async def pages() -> AsyncIterator[dict[str, dict[str, Any]]]:
            from rh_prefect.systems import _gcs_private

            async for infos in _gcs_private.list_pages(fs, bucket, prefix, settings.current().list_page_size):
                yield {info["name"]: info for info in infos if not info["name"].endswith("/")}

        return pages()

    # Large objects: 4 ranged GETs in flight. Smaller ones (gcsfs only goes concurrent from 100 MB anyway): one
    # plain GET; the concurrent path first fetches the object's metadata, a second request per file.
    def get_options(self, size: Optional[int] = None) -> dict[str, Any]:
        if size is not None and size < 100 * 2**20:
            return {"concurrency": 1}
        return {"concurrency": 4, "chunk_size": 8 * 2**20}

    # Small files to local disk: one media GET each through gcsfs's own session, read whole and written in one
    # go. gcsfs's _get_file costs about twice the CPU per file (a retry decorator that binds its signature on
    # every call, directory checks and makedirs per file, 128 KiB reads); with thousands of small files that
    # is what bounds a copy, not the network.
    async def get_file_async(self, fs_path: str, local_path: str, size: Optional[int] = None) -> int:
        from rh_prefect.systems import _gcs_private

        fs = self.fs
        if (size is None or size > GCS_DIRECT_GET_MAX or fs.consistency not in (None, "none")
                or not _gcs_private.direct_http(fs)):
            return await super().get_file_async(fs_path, local_path, size)
        try:
            data = await _gcs_media_get(fs, fs_path)
        except (TypeError, AttributeError) as exc:  # gcsfs changed under us: its public path from now on
            _gcs_private.direct_http_broke(fs, exc)
            return await super().get_file_async(fs_path, local_path, size)
        with open(local_path, "wb") as f:
            f.write(data)
        return len(data)

    # Uploads of known size above one chunk: one resumable-upload session whose bytes all go in a single streamed
    # request (_GCSStreamedUpload), as Google recommends when the size is known: chunking adds a round trip and an
    # offset query per chunk. gcsfs (like rclone) sends 8-16 MiB chunks, and fake-gcs-server rewrites the object so
    # far on each one: 256 MiB took 4.6-6.6 s in 16 MiB chunks there and 1.8 s as one request. Unknown sizes, and
    # filesystems that verify checksums themselves (consistency=...), keep gcsfs's chunked file object.
    def _streams(self, size: Optional[int]) -> bool:
        import gcsfs

        from rh_prefect.systems import _gcs_private

        return (size is not None and size > GCS_STREAMED_UPLOAD_MIN and self.fs.consistency in (None, "none")
                and type(self.fs) is gcsfs.GCSFileSystem  # not a subclass such as gcsfs's zonal-bucket (gRPC) one
                and _gcs_private.direct_http(self.fs))

    def _streamed_upload(self, fs_path: str, size: int) -> Optional[_GCSStreamedUpload]:
        """A streamed upload, or None when gcsfs's private parts it needs turned out to have changed."""
        from rh_prefect.systems import _gcs_private

        try:
            return _GCSStreamedUpload(self.fs, fs_path, size)
        except (TypeError, AttributeError) as exc:
            _gcs_private.direct_http_broke(self.fs, exc)
            return None

    def open_upload(self, fs_path: str, block_size: int, size: Optional[int] = None) -> Any:
        upload = self._streamed_upload(fs_path, size) if self._streams(size) else None
        if upload is not None:
            return upload
        if size is not None and size > GCS_UPLOAD_CHUNK:
            block_size = max(block_size, GCS_UPLOAD_CHUNK)
        return super().open_upload(fs_path, block_size, size)

    def put_file(self, local_path: str, fs_path: str, size: Optional[int] = None) -> None:
        if not self._streams(size):
            return super().put_file(local_path, fs_path, size)
        with open(local_path, "rb") as f:
            # what the file holds now, as fsspec's put_file would send (it may have changed since it was listed);
            # a change while it is read fails the upload instead of storing a mix of old and new bytes
            upload = self._streamed_upload(fs_path, os.fstat(f.fileno()).st_size)
            if upload is None:
                return super().put_file(local_path, fs_path, size)
            try:
                while chunk := f.read(GCS_STREAM_PIECE):
                    upload.write(chunk)
                upload.close()
            except BaseException:
                upload.discard()
                raise


def _sync(loop: Any, func: Any, *args: Any) -> Any:
    """fsspec's ``sync`` (run a coroutine on the filesystem's loop from this thread), except that a TimeoutError
    raised by the coroutine comes out as itself: ``sync`` turns it into an FSTimeoutError without its message."""
    from fsspec.asyn import FSTimeoutError, sync

    try:
        return sync(loop, func, *args)
    except FSTimeoutError as exc:
        if isinstance(exc.__cause__, TimeoutError):
            raise exc.__cause__ from None
        raise


#: objects up to this size are read whole by one GET when copied to local disk (GCSSystem.get_file_async)
GCS_DIRECT_GET_MAX = 8 * 2**20


async def _gcs_media_get(fs: Any, fs_path: str) -> bytes:
    """The content of one object: a media GET through the gcsfs filesystem's session, headers (credentials)
    and parameters (requester pays), retried on the errors and with the backoff gcsfs's own requests use."""
    import random

    from gcsfs.retry import is_retriable, validate_response

    from rh_prefect.systems import _gcs_private

    session = await _gcs_private.session(fs)
    url = fs.url(fs_path)
    params = _gcs_private.params(fs)
    for attempt in range(fs.retries):
        if attempt:
            await asyncio.sleep(min(random.random() + 2 ** (attempt - 1), 32))
        try:
            async with session.get(url, params=params, headers=_gcs_private.headers(fs, None),
                                      timeout=fs.requests_timeout) as r:
                data = await r.read()
                if r.status >= 400:
                    validate_response(r.status, data, fs_path)
                return data
        except FileNotFoundError:
            raise
        except Exception as exc:  # gcsfs's rule decides (HTTP 5xx/408/429, connection errors, expired tokens)
            if attempt == fs.retries - 1 or not is_retriable(exc):
                raise
            logger.debug("GET %s failed (%s: %s); retrying", fs_path, type(exc).__name__, exc)
    raise AssertionError("unreachable")


class _UploadFile(io.RawIOBase):
    """A write-only file object of an upload that is published only by ``close()`` and abandoned by ``discard()``
    (see ``System.open_upload``). Subclasses keep their state in ``_closed``; bytes go out as they are written, so
    ``flush()`` has nothing to do."""

    _closed = False

    # io.IOBase's ``closed`` is read-only; the engine marks a discarded file closed (see transfer.open_write)
    @property
    def closed(self) -> bool:  # type: ignore[override]
        return self._closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self._closed = value

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass


#: resumable-upload chunk of GCS uploads of unknown size (gcsfs's file object)
GCS_UPLOAD_CHUNK = 16 * 2**20
#: objects of known size above this go up as one streamed request (GCSSystem._streams)
GCS_STREAMED_UPLOAD_MIN = 8 * 2**20
#: a streamed upload's pieces: at most GCS_STREAM_QUEUE of them wait for the connection
GCS_STREAM_PIECE = 8 * 2**20
GCS_STREAM_QUEUE = 2


class _GCSStreamedUpload(_UploadFile):
    """A write-only file object for an object of known ``size``: one resumable-upload session, all of whose bytes
    go in a single streamed request as they are written. At most :data:`GCS_STREAM_QUEUE` written pieces wait for
    the connection, so memory stays bounded whatever the size.

    The object appears only when the request completes with every byte; :meth:`discard` (and any failure in
    :meth:`close`) cancels the request and deletes the session, so nothing partial is ever visible. A failure
    mid-request fails the whole upload (the copy's retry sends it again) rather than resuming it: the written bytes
    are not kept. A path that goes silent mid-request (no piece taken by the connection within
    the settings' ``request_deadline`` plus its bytes at ``request_min_rate``, or no answer ``request_deadline``
    after the last byte) ends as a TimeoutError, which the retry policy treats as transient."""

    def __init__(self, fs: Any, path: str, size: int, content_type: str = "application/octet-stream") -> None:
        super().__init__()
        self._sync = _sync
        self.fs, self.path, self.size, self.content_type = fs, path, size, content_type
        self.bucket, self.key, generation = fs.split_path(path)
        if generation:
            raise ValueError(f"cannot write to a specific generation of {path}")
        self.written = 0
        self._closed = False
        self._location: Optional[str] = None
        self._queue: Optional[asyncio.Queue] = None
        self._request: Optional[asyncio.Future] = None
        self._piece_since: Optional[tuple[float, int]] = None  # (when handed to the connection, bytes) until taken
        self._all_sent_at: Optional[float] = None
        self._sync(fs.loop, self._start)

    async def _start(self) -> None:
        from rh_prefect.systems import _gcs_private

        self._location = await _gcs_private.initiate_upload(self.fs, self.bucket, self.key, self.content_type)
        self._queue = asyncio.Queue(maxsize=GCS_STREAM_QUEUE)
        self._request = asyncio.ensure_future(self._watched())

    async def _body(self) -> Any:
        loop = asyncio.get_running_loop()
        while True:
            piece = await self._queue.get()
            if piece is None:
                self._all_sent_at = loop.time()
                return
            self._piece_since = (loop.time(), len(piece))
            yield piece
            self._piece_since = None  # the connection took it

    async def _send(self) -> Any:
        import json

        import aiohttp
        from gcsfs.retry import validate_response

        from rh_prefect.systems import _gcs_private

        session = await _gcs_private.session(self.fs)
        headers = _gcs_private.headers(self.fs, {"Content-Type": self.content_type,
                                                 "Content-Length": str(self.size),
                                                 "Content-Range": f"bytes 0-{self.size - 1}/{self.size}"})
        # no total timeout (the session's default is 5 min, too short for a large object on a slow link): _watched
        # decides when the path has gone silent
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.current().connect_timeout)
        async with session.put(self._location, data=self._body(), headers=headers, timeout=timeout) as r:
            text = await r.read()
            if r.status not in (200, 201):
                validate_response(r.status, text, self.path)
                raise OSError(f"GCS upload of {self.path} ended with HTTP {r.status} after {self.written} of "
                              f"{self.size} bytes; copy again.")
        return json.loads(text) if text else None

    async def _watched(self) -> Any:
        loop = asyncio.get_running_loop()
        request = asyncio.ensure_future(self._send())
        try:
            while True:
                done, _ = await asyncio.wait({request}, timeout=1.0)
                if done:
                    return request.result()
                now, piece = loop.time(), self._piece_since
                if piece is not None and now - piece[0] > request_limit(piece[1]):
                    raise TimeoutError(f"GCS upload of {self.path}: the connection took no bytes for "
                                       f"{now - piece[0]:.0f} s; the network path may have gone silent. The copy "
                                       "retries it.")
                if self._all_sent_at is not None and now - self._all_sent_at > request_limit(0):
                    raise TimeoutError(f"GCS upload of {self.path}: no answer {now - self._all_sent_at:.0f} s after "
                                       "the last byte; the network path may have gone silent. The copy retries it.")
        finally:
            if not request.done():
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)

    async def _offer(self, piece: Optional[bytes]) -> None:
        put = asyncio.ensure_future(self._queue.put(piece))
        await asyncio.wait({put, self._request}, return_when=asyncio.FIRST_COMPLETED)
        if put.done():
            return
        put.cancel()
        self._request.result()  # the request's own error
        raise OSError(f"GCS upload of {self.path} ended after {self.written} of {self.size} bytes; copy again.")

    def write(self, data: Any) -> int:  # type: ignore[override]
        if self._closed:
            raise ValueError("write to a closed upload")
        n = len(data)
        if self.written + n > self.size:
            raise IntegrityError(f"{self.path}: more bytes than the {self.size} announced (did the source change "
                                 "while it was copied?); nothing was uploaded, copy again.")
        if n:
            self._sync(self.fs.loop, self._offer, data if isinstance(data, bytes) else bytes(data))
            self.written += n
        return n

    async def _finish(self) -> None:
        await self._offer(None)
        await self._request

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self.written != self.size:
                raise IntegrityError(f"{self.path}: {self.written} bytes written, {self.size} announced (did the "
                                     "source change while it was copied?); nothing was uploaded, copy again.")
            self._sync(self.fs.loop, self._finish)
        except BaseException:
            self.discard()
            raise
        self._closed = True
        self.fs.invalidate_cache(self.path)

    async def _abandon(self) -> None:
        if self._request is not None and not self._request.done():
            self._request.cancel()
        if self._request is not None:
            await asyncio.gather(self._request, return_exceptions=True)
        if self._location is not None:
            location, self._location = self._location, None
            try:  # an unfinished session is never visible as an object; deleting it frees its storage sooner
                from rh_prefect.systems import _gcs_private

                await asyncio.wait_for(_gcs_private.delete_upload_session(self.fs, location), ABANDON_SECONDS)
            except Exception as exc:
                logger.debug("could not cancel the upload session of %s: %s", self.path, type(exc).__name__)

    def discard(self) -> None:
        """Abandon the upload: cancel the request and delete the session (best effort)."""
        self._closed = True
        self._sync(self.fs.loop, self._abandon)


#: at most this long is spent deleting an abandoned upload session (the error that abandoned it matters more)
ABANDON_SECONDS = 30


class _S3StreamReader(io.RawIOBase):
    """Reads one S3 object through a single streamed GET. A dropped stream is reopened where it broke (a ranged
    GET from the current offset), as s3fs's own get_file does, up to the filesystem's retry count."""

    def __init__(self, fs: Any, path: str) -> None:
        super().__init__()
        self._sync = _sync
        self.fs = fs
        self.bucket, self.key, self.version = fs.split_path(path)
        self.pos = 0
        self.body: Any = None
        self._sync(self.fs.loop, self._open)

    async def _open(self) -> None:
        kw = {"Range": f"bytes={self.pos}-"} if self.pos else {}
        from rh_prefect.systems import _s3_private

        resp = await _s3_private.call(self.fs, "get_object", Bucket=self.bucket, Key=self.key,
                                      **({"VersionId": self.version} if self.version else {}), **kw)
        self.body = resp["Body"]

    async def _read(self, n: int) -> bytes:
        from s3fs.core import S3_RETRYABLE_ERRORS

        pieces: list[bytes] = []
        got, failures = 0, 0
        while n < 0 or got < n:
            want = 2**20 if n < 0 else min(2**20, n - got)
            try:
                piece = await self.body.read(want)
            except S3_RETRYABLE_ERRORS:
                failures += 1
                if failures >= self.fs.retries:
                    raise
                self.body.close()
                await asyncio.sleep(min(1.7**failures * 0.1, 15))
                await self._open()
                continue
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
            self.pos += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        return self._sync(self.fs.loop, self._read, -1 if n is None else n)

    def readinto(self, buffer: Any) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    async def _close_body(self) -> None:
        self.body.close()

    def close(self) -> None:
        if not self.closed and self.body is not None:
            self._sync(self.fs.loop, self._close_body)  # aiohttp objects belong to the loop's thread
        super().close()


class _S3ParallelUpload(_UploadFile):
    """A write-only file object: a multipart upload whose parts go up concurrently (``in_flight`` at most, so
    memory stays at about ``(in_flight + 1) * part`` bytes). The object appears only when :meth:`close`
    completes the upload; :meth:`discard` (or a failure in close) aborts it, so no partial object is ever
    visible."""

    def __init__(self, fs: Any, path: str, part: int, in_flight: int) -> None:
        super().__init__()
        self._sync = _sync
        self.fs = fs
        self.path = path
        self.bucket, self.key, _ = fs.split_path(path)
        self.part, self.in_flight = part, in_flight
        self.buffer = bytearray()
        self.pending: deque = deque()  # (part number, concurrent future), in part order
        self.parts: list[dict[str, Any]] = []
        self.upload_id: Optional[str] = None
        self._closed = False

    def _call(self, method: str, nbytes: int = 0, **kwargs: Any) -> Any:
        from rh_prefect.systems import _s3_private

        request = _s3_private.call(self.fs, method, Bucket=self.bucket, Key=self.key, **kwargs)
        return self._sync(self.fs.loop, within_deadline, request, nbytes, f"S3 {method} of {self.path}")

    def write(self, data: Any) -> int:  # type: ignore[override]
        if self._closed:
            raise ValueError("write to a closed upload")
        n = len(data)
        if not self.buffer and n == self.part and isinstance(data, bytes):
            self._send(data)  # the usual case: the engine writes whole parts, so no copy
            return n
        self.buffer += data
        while len(self.buffer) >= self.part:
            self._send(bytes(self.buffer[: self.part]))
            del self.buffer[: self.part]
        return n

    def _send(self, chunk: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = self._call("create_multipart_upload")["UploadId"]
        number = len(self.parts) + len(self.pending) + 1
        from rh_prefect.systems import _s3_private

        coro = within_deadline(_s3_private.call(self.fs, "upload_part", Bucket=self.bucket, Key=self.key,
                                                PartNumber=number, UploadId=self.upload_id, Body=chunk),
                               len(chunk), f"S3 upload of part {number} of {self.path}")
        self.pending.append((number, asyncio.run_coroutine_threadsafe(coro, self.fs.loop)))
        while len(self.pending) >= self.in_flight:
            self._collect_oldest()

    def _collect_oldest(self) -> None:
        number, future = self.pending.popleft()
        self.parts.append({"PartNumber": number, "ETag": future.result()["ETag"]})

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self.upload_id is None:
                self._call("put_object", len(self.buffer), Body=bytes(self.buffer))
            else:
                if self.buffer:
                    self._send(bytes(self.buffer))
                while self.pending:
                    self._collect_oldest()
                self._call("complete_multipart_upload", UploadId=self.upload_id,
                           MultipartUpload={"Parts": self.parts})
        except BaseException:
            self.discard()
            raise
        finally:
            self._closed = True
            self.buffer = bytearray()
        self.fs.invalidate_cache(self.path)

    def discard(self) -> None:
        """Abort: wait for parts in flight, then abort the multipart upload (best effort)."""
        self._closed = True
        self.buffer = bytearray()
        while self.pending:
            _, future = self.pending.popleft()
            future.cancel()
            try:
                future.result()
            except BaseException:  # cancelled or failed: either way the upload is being aborted
                pass
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            try:
                self._call("abort_multipart_upload", UploadId=upload_id)
            except Exception as exc:  # an unfinished multipart upload is never visible as an object
                logger.warning("could not abort the multipart upload of %s: %s", self.path, type(exc).__name__)
