"""Private attribute vs its public fallback, same process, same server: listing 2000 objects (S3 and GCS) and a
server-side copy of 2000 small S3 objects. Prints seconds per run and the ratio public/private (issue 17 point 2:
a public API within 5 % replaces the private one).

    PYTHONPATH=$PWD .venv/bin/python tests/bench/private_vs_public.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from infra import FakeGCSServer, MotoS3Server  # noqa: E402

N, RUNS = 2000, 3


def timed(fs, coro_fn) -> float:
    from fsspec.asyn import sync

    t = time.perf_counter()
    sync(fs.loop, coro_fn)
    return time.perf_counter() - t


def compare(label: str, fs, private, public) -> None:
    times = {"private": [], "public": []}
    for _ in range(RUNS):  # interleaved, so drift of the machine hits both alike
        times["private"].append(timed(fs, private))
        times["public"].append(timed(fs, public))
    p, q = statistics.median(times["private"]), statistics.median(times["public"])
    print(f"{label}: private {[round(x, 3) for x in times['private']]} s, public {[round(x, 3) for x in times['public']]}"
          f" s; median ratio public/private {q / p:.3f}")


def s3_bench() -> None:
    import s3fs

    from rh_prefect.systems import _s3_private

    with MotoS3Server() as server:
        fs = s3fs.S3FileSystem(key=server.access_key, secret=server.secret_key, endpoint_url=server.endpoint_url,
                               skip_instance_cache=True)
        fs.mkdir("bench")
        fs.pipe({f"bench/src/f{i:05d}": b"x" * 100 for i in range(N)})

        async def private_list():
            n = 0
            async for out in fs._list_pages("list_objects_v2", Bucket="bench", Prefix="src/", MaxKeys=1000):
                for item in out.get("Contents", ()):
                    fs._fill_info(item, "bench")
                    n += 1
            assert n == N

        async def public_list():
            n = 0
            async for contents in _s3_private.list_pages(fs, "bench", "src/", 1000):
                n += len([_s3_private.file_info(item, "bench") for item in contents])
            assert n == N

        if hasattr(fs, "_list_pages"):
            compare(f"S3 listing of {N}", fs, private_list, public_list)

        async def copies(one):
            gate = asyncio.Semaphore(16)

            async def cp(i):
                async with gate:
                    await one(f"bench/src/f{i:05d}", f"bench/dst/f{i:05d}")
            await asyncio.gather(*(cp(i) for i in range(N)))

        async def private_copy():
            await copies(fs._copy_basic)

        async def public_copy():
            await copies(fs._cp_file)

        compare(f"S3 server-side copy of {N} x 100 B (16 at once)", fs, private_copy, public_copy)


def gcs_bench() -> None:
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    import gcsfs

    with FakeGCSServer() as server:
        fs = gcsfs.GCSFileSystem(endpoint_url=server.endpoint_url, token="anon", project="t",
                                 skip_instance_cache=True)
        fs.mkdir("bench")
        fs.pipe({f"bench/src/f{i:05d}": b"x" * 100 for i in range(N)})

        async def private_list():
            n, token = 0, None
            while True:
                out = await fs._call_list_objects("bench", prefix="src/", maxResults=1000, pageToken=token)
                n += len([fs._process_object("bench", item) for item in out.get("items", ())])
                token = out.get("nextPageToken")
                if not token:
                    break
            assert n == N

        async def public_list():
            fs.invalidate_cache()
            assert len(await fs._find("bench/src", detail=True)) == N

        if hasattr(fs, "_call_list_objects"):
            compare(f"GCS listing of {N}", fs, private_list, public_list)


if __name__ == "__main__":
    s3_bench()
    gcs_bench()
