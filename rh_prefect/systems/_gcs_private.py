"""Every use of a private attribute of gcsfs, in one place: each checked at first use (see ``_private``), each with
its public fallback. The README's "What is still private, and why" lists them with the measured gain.

gcsfs's documented async interface (fsspec's AsyncFileSystem: ``_find``, ``_get_file``, ``_cat_file``, ...) and
its file objects (``fs.open``) are public and are the fallbacks here.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from rh_prefect.systems._private import Private

LIST_PAGE = Private(
    "gcsfs", "GCSFileSystem._call_list_objects", params=("bucket",),
    fallback="public _find of the whole prefix, as one page",
    why="the listing page by page as it arrives, so a copy of a large tree starts on the first page",
)
PROCESS_OBJECT = Private(
    "gcsfs", "GCSFileSystem._process_object", params=("bucket", "object_metadata"),
    fallback="public _find", why="turns a listing entry into gcsfs's info dict (with _call_list_objects)",
)
# The HTTP session and request decoration gcsfs's own requests use: a media GET of a small object in one read, and
# an upload of known size as one streamed request. All of them or none.
SET_SESSION = Private("gcsfs", "GCSFileSystem._set_session", fallback="public _get_file / fs.open",
                      why="the aiohttp session gcsfs's requests go through (then the attribute session)")
GET_HEADERS = Private("gcsfs", "GCSFileSystem._get_headers", params=("headers",),
                      fallback="public _get_file / fs.open", why="credentials and user headers of a request")
GET_PARAMS = Private("gcsfs", "GCSFileSystem._get_params", params=("kwargs",),
                     fallback="public _get_file / fs.open", why="requester-pays parameters of a request")
CALL = Private("gcsfs", "GCSFileSystem._call", params=("method", "path"), fallback="none needed: best effort",
               why="deletes an abandoned resumable-upload session (it expires by itself within a week otherwise)")
INITIATE_UPLOAD = Private("gcsfs", "initiate_upload", params=("fs", "bucket", "key", "content_type"),
                          fallback="public fs.open (gcsfs's chunked resumable upload)",
                          why="starts the resumable-upload session of a streamed upload")

_DIRECT = (SET_SESSION, GET_HEADERS, GET_PARAMS)


def paged_listing(fs: Any) -> bool:
    return LIST_PAGE.usable(fs) and PROCESS_OBJECT.usable(fs)


async def list_pages(fs: Any, bucket: str, prefix: str, page_size: int) -> AsyncIterator[list[dict[str, Any]]]:
    """gcsfs's info dicts of the objects under ``prefix``, a page at a time (all in one page on the fallback)."""
    token = None
    while paged_listing(fs):
        try:  # each page through gcsfs's retrying request path
            out = await fs._call_list_objects(bucket, prefix=prefix or None, maxResults=page_size, pageToken=token)
            page = [fs._process_object(bucket, item) for item in out.get("items", ())]
        except (TypeError, AttributeError) as exc:
            if token is not None:  # pages already given: changing the way mid-listing would repeat them
                raise
            LIST_PAGE.broke(fs, exc)
            break
        yield page
        token = out.get("nextPageToken")
        if not token:
            return
    root = f"{bucket}/{prefix}"
    try:
        found = await fs._find(root.rstrip("/"), detail=True)
    except FileNotFoundError:
        found = {}
    # find of "b/dir" would also match "b/dir2/..." on some versions: only what lies under the prefix
    yield [info for name, info in found.items() if name.startswith(root) and info.get("type") != "directory"]


def direct_http(fs: Any) -> bool:
    """Whether gcsfs's session and request decoration can be used for requests of our own."""
    import gcsfs.core

    return all(p.usable(fs) for p in _DIRECT) and INITIATE_UPLOAD.usable(gcsfs.core)


def direct_http_broke(fs: Any, exc: BaseException) -> None:
    for p in _DIRECT:
        p.broke(fs, exc)


async def session(fs: Any) -> Any:
    await fs._set_session()
    return fs.session


def headers(fs: Any, extra: Any) -> dict[str, str]:
    return fs._get_headers(extra)


def params(fs: Any) -> Any:
    return fs._get_params({}) or None


async def initiate_upload(fs: Any, bucket: str, key: str, content_type: str) -> str:
    from gcsfs.core import initiate_upload

    return await initiate_upload(fs, bucket, key, content_type)


async def delete_upload_session(fs: Any, location: str) -> None:
    if CALL.usable(fs):
        await fs._call("DELETE", location)
