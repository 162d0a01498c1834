"""Ask again soon when a SQLite-backed Prefect server is busy, not two seconds later.

A Prefect server on SQLite (the default of a local server, ``rh-prefect server up``) answers a write with 503
when another write got there first (SQLite's "database is locked": a transaction that read, then wants to
write, after another one committed). Prefect's client then waits ``2 ** attempt`` seconds (not configurable)
and sends it again. Measured with copies dispatched to a cluster's worker (``tests/bench/bench_colocated.py``):
4 of 14 copies on an unshaped link waited 2.3-2.5 s that way once, on a call that otherwise takes ~0.1 s, because
the server's own services (events, state changes of the copy just finished) were writing at that moment.

:class:`BusyRetryTransport` is an httpx transport that sends such a request again after 20, 50, 100, 200 and
400 ms before handing the 503 back to Prefect's own retries. A 503 means the server did nothing (its
transaction rolled back), which is why Prefect retries it too; only requests whose body can be sent again
(bytes, as every Prefect API call's JSON) are retried here.

It is used for the long-lived API client of this process (``_prefect_private.with_shared_client``: dispatched
copies, and the flow runs of the in-process worker) when the API is plain HTTP (a local or self-hosted
server): handing Prefect a transport of our own means its TLS settings would not reach it, so an HTTPS API keeps
Prefect's own transport.
"""

from __future__ import annotations

import asyncio
import time
from typing import Optional

import httpx

#: pauses before each quick retry of a 503, in seconds (0.77 s in all), then Prefect's own retries
DELAYS = (0.02, 0.05, 0.1, 0.2, 0.4)


class BusyRetryTransport(httpx.BaseTransport):
    """``inner`` (an ``httpx.HTTPTransport`` with Prefect's 3 connection retries by default), with a 503
    answered by sending the request again after each of ``delays``."""

    def __init__(self, inner: Optional[httpx.BaseTransport] = None, delays: tuple[float, ...] = DELAYS,
                 http2: bool = False) -> None:
        self._inner = inner if inner is not None else httpx.HTTPTransport(retries=3, http2=http2)
        self._delays = delays
        self.retried = 0  # how many times a 503 was sent again (for tests and curiosity)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if isinstance(request.stream, httpx.ByteStream):  # the body can be sent again
            for delay in self._delays:
                response = self._inner.handle_request(request)
                if response.status_code != 503:
                    return response
                response.read()
                response.close()
                self.retried += 1
                time.sleep(delay)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


class AsyncBusyRetryTransport(httpx.AsyncBaseTransport):
    """:class:`BusyRetryTransport` for asynchronous clients (a worker's own API client)."""

    def __init__(self, inner: Optional[httpx.AsyncBaseTransport] = None, delays: tuple[float, ...] = DELAYS,
                 http2: bool = False) -> None:
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport(retries=3, http2=http2)
        self._delays = delays
        self.retried = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if isinstance(request.stream, httpx.ByteStream):
            for delay in self._delays:
                response = await self._inner.handle_async_request(request)
                if response.status_code != 503:
                    return response
                await response.aread()
                await response.aclose()
                self.retried += 1
                await asyncio.sleep(delay)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def httpx_settings(api_url: Optional[str], http2: bool = False, asynchronous: bool = False) -> Optional[dict]:
    """The ``httpx_settings`` for a Prefect client of ``api_url`` (``asynchronous``: an async client): the
    quick-retry transport for a plain-HTTP API, None (Prefect's defaults) otherwise."""
    if not api_url or not str(api_url).startswith("http://"):
        return None
    return {"transport": AsyncBusyRetryTransport(http2=http2) if asynchronous else BusyRetryTransport(http2=http2)}
