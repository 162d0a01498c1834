"""Every use of a private attribute of s3fs, in one place: each checked at first use (see ``_private``), each with
its public fallback. The README's "What is still private, and why" lists them with the measured gain.

s3fs's documented async interface (``_cat_file``, ``_cp_file``, ``_find``, ``_info``, ... of fsspec's
AsyncFileSystem) is public and is used directly elsewhere; so are ``set_session()`` (documented: it returns the
aiobotocore client) and the client's own methods and paginators (aiobotocore/botocore public API).
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from rh_prefect.systems._private import Private

CALL_S3 = Private(
    "s3fs", "S3FileSystem._call_s3", params=("method",),
    fallback="the aiobotocore client from the public set_session(), errors translated by s3fs.errors",
    why="s3fs's request path: its retries of transient errors, its per-bucket regional clients and its "
        "translation of S3 errors into FileNotFoundError/PermissionError",
)
COPY_BASIC = Private(
    "s3fs", "S3FileSystem._copy_basic", params=("path1", "path2"),
    fallback="public _cp_file (one HEAD more per object)",
    why="one CopyObject without the HEAD _cp_file sends first to learn the size the listing already gave",
)
COPY_MANAGED = Private(
    "s3fs", "S3FileSystem._copy_managed", params=("path1", "path2", "size", "block"),
    fallback="public _cp_file (serial 50 MiB part copies)",
    why="a multipart copy of objects over 5 GiB in 1 GiB parts",
)


def _request_kwargs(fs: Any) -> dict[str, Any]:
    # requester_pays is s3fs's documented constructor argument, kept as an attribute of that name
    return {"RequestPayer": "requester"} if getattr(fs, "requester_pays", False) else {}


async def call(fs: Any, method: str, **kwargs: Any) -> Any:
    """One S3 API call ``method(**kwargs)`` (botocore's names), as s3fs makes its own."""
    if CALL_S3.usable(fs):
        try:
            return await fs._call_s3(method, **kwargs)
        except (TypeError, AttributeError) as exc:
            if not _changed(exc, "_call_s3"):
                raise
            CALL_S3.broke(fs, exc)
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    client = await fs.set_session()
    try:
        return await getattr(client, method)(**{**_request_kwargs(fs), **kwargs})
    except ClientError as exc:
        raise translate_boto_error(exc) from exc


def _changed(exc: BaseException, attr: str) -> bool:
    """True when a TypeError/AttributeError is about the private attribute's own call (its arguments or its
    existence), not one raised further down for another reason."""
    text = str(exc)
    return attr in text or "argument" in text


async def copy_object(fs: Any, src: str, dst: str, size: int) -> None:
    """A server-side copy of an object whose size is known (from the listing)."""
    private = COPY_BASIC if size <= 5 * 2**30 else COPY_MANAGED
    if private.usable(fs):
        try:
            if private is COPY_BASIC:
                await fs._copy_basic(src, dst)
            else:
                await fs._copy_managed(src, dst, size, block=2**30)
            return
        except (TypeError, AttributeError) as exc:
            if not _changed(exc, private.attr.rsplit(".", 1)[1]):
                raise
            private.broke(fs, exc)
    await fs._cp_file(src, dst)


async def list_pages(fs: Any, bucket: str, prefix: str, page_size: int) -> AsyncIterator[list[dict[str, Any]]]:
    """The objects under ``prefix`` page by page as S3 returns them (``Contents`` of list_objects_v2), through
    the public paginator of the client s3fs's ``set_session()`` returns. (s3fs's private ``_list_pages`` did the
    same at no measurable gain; see the README.)"""
    client = await fs.set_session()
    paginator = client.get_paginator("list_objects_v2")
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    pages = paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size},
                               **_request_kwargs(fs))
    try:
        async for out in pages:
            yield out.get("Contents", [])
    except ClientError as exc:
        raise translate_boto_error(exc) from exc


def file_info(item: dict[str, Any], bucket: str) -> dict[str, Any]:
    """A listing entry as s3fs's info/find give it (what s3fs's private ``_fill_info`` does, written out)."""
    item["size"] = item["Size"]
    item["Key"] = f"{bucket}/{item['Key']}"
    item["name"] = item["Key"]
    item["type"] = "file"
    return item


_CAT_TAKES_CONCURRENCY: dict[type, bool] = {}


async def cat_file(fs: Any, path: str) -> bytes:
    """One object's content with one GET. s3fs's public ``_cat_file`` took ``max_concurrency`` (ranged GETs after
    a HEAD) only from 2026 on; without it (2025.x) it already makes one GET."""
    import inspect

    cls = type(fs)
    takes = _CAT_TAKES_CONCURRENCY.get(cls)
    if takes is None:
        takes = _CAT_TAKES_CONCURRENCY[cls] = "max_concurrency" in inspect.signature(cls._cat_file).parameters
    return await (fs._cat_file(path, max_concurrency=1) if takes else fs._cat_file(path))
