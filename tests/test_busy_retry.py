"""A Prefect server on SQLite answers 503 when two writes meet; Prefect's client waits 2 s (then 4 s) before it
asks again. The process's long-lived API client (dispatched copies, the in-process worker's flow runs) asks again
after tens of milliseconds instead. Here a real HTTP server on 127.0.0.1 plays a busy API: it answers 503 a given
number of times, then 200, and records every request body it received.

The real Prefect server cannot be made to hit "database is locked" on demand; that it does under load was seen in
tests/bench/bench_colocated.py (3 of 14 dispatches waited 2.2-2.5 s on a 503 before this transport)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from rh_prefect.runtime import busy_retry


class BusyAPI:
    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.bodies: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                outer.bodies.append(self.rfile.read(length))
                status = 503 if outer.busy > 0 else 200
                outer.busy -= 1
                body = json.dumps({"detail": "busy"} if status == 503 else {"ok": True}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def busy_api():
    apis = []

    def make(busy: int) -> BusyAPI:
        apis.append(BusyAPI(busy))
        return apis[-1]

    yield make
    for api in apis:
        api.close()


def test_a_busy_answer_is_asked_again_within_a_fraction_of_a_second_with_the_same_body(busy_api):
    api = busy_api(busy=3)
    transport = busy_retry.BusyRetryTransport()
    with httpx.Client(transport=transport, base_url=api.url) as client:
        started = time.monotonic()
        response = client.post("/api/deployments/x/create_flow_run", json={"name": "run-1"})
        took = time.monotonic() - started
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert api.bodies == [b'{"name":"run-1"}'] * 4  # the same request, sent four times
    assert transport.retried == 3
    assert took < 1.0, took  # 20 + 50 + 100 ms of pauses; Prefect's own retry waits 2 s before the first


def test_a_server_still_busy_after_the_quick_retries_gets_its_503_back(busy_api):
    api = busy_api(busy=100)
    transport = busy_retry.BusyRetryTransport()
    with httpx.Client(transport=transport, base_url=api.url) as client:
        response = client.get("/api/hello")
    assert response.status_code == 503  # handed back: Prefect's client applies its own retries from here
    assert len(api.bodies) == len(busy_retry.DELAYS) + 1


def test_the_shared_api_client_of_a_plain_http_api_retries_quickly_and_https_keeps_prefects_transport(
        busy_api, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from rh_prefect.runtime import _prefect_private

    api = busy_api(busy=2)
    with temporary_settings({PREFECT_API_URL: api.url + "/api"}):
        started = time.monotonic()
        response = _prefect_private.with_shared_client(lambda: get_client(sync_client=True).hello())
        took = time.monotonic() - started
    assert response.status_code == 200
    assert len(api.bodies) == 3
    assert took < 1.5, took  # Prefect's own retries alone would take 2 s + 4 s
    assert busy_retry.httpx_settings("https://api.prefect.cloud/api") is None
    assert busy_retry.httpx_settings(None) is None


def test_the_async_transport_of_a_worker_client_retries_the_same_way(busy_api):
    import asyncio

    api = busy_api(busy=2)

    async def call() -> httpx.Response:
        settings = busy_retry.httpx_settings(api.url + "/api", asynchronous=True)
        async with httpx.AsyncClient(base_url=api.url, **settings) as client:
            return await client.patch("/api/flow_runs/x/labels", json={"a": "b"})

    started = time.monotonic()
    response = asyncio.run(call())
    assert response.status_code == 200
    assert api.bodies == [b'{"a":"b"}'] * 3
    assert time.monotonic() - started < 1.0
