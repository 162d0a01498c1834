"""Drive the Prefect UI in a real headless Chromium (Debian's ``chromium`` package) with Python playwright.

Nothing is downloaded: playwright is pointed at /usr/bin/chromium (never ``playwright install``). The browser
resolves no host name but 127.0.0.1/localhost (``--host-resolver-rules``), and every request is recorded and
checked by :class:`Browser`: requests to anything but loopback are aborted before they are sent and kept in
:attr:`Browser.blocked`, so a test can assert what tried to leave the machine (and that nothing did).

Used by tests/test_ui.py; no pytest dependency here.
"""

from __future__ import annotations

import json
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

CHROMIUM = "/usr/bin/chromium"
LOOPBACK = {"127.0.0.1", "localhost"}
#: screenshots of failed UI tests (and of every step with RH_UI_SCREENSHOTS=1) land here (gitignored)
ARTIFACTS = Path(__file__).parent / "artifacts" / "ui"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Block logos and any analytics would otherwise try the internet; this machine must not.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy


def is_loopback(url: str) -> bool:
    """True for URLs that cannot leave this machine: loopback hosts, and in-page data:/blob:/about: URLs."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "chrome-error"):
        return True
    return parts.hostname in LOOPBACK


def api(api_url: str, method: str, path: str, body: Any = None) -> Any:
    """A JSON call to the Prefect REST API (what the UI itself calls)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{api_url}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with _HTTP.open(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


class Browser:
    """One headless Chromium with one page; records every request the page makes.

    ``requests``: every URL the page asked for; ``blocked``: the non-loopback ones, aborted unsent;
    ``responses_from_outside``: responses that came from a non-loopback host (must stay empty).
    """

    def __init__(self, base_url: str) -> None:
        from playwright.sync_api import sync_playwright

        self.base_url = base_url.rstrip("/")
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.websockets: list[str] = []
        self.responses_from_outside: list[str] = []
        self.console_errors: list[str] = []
        # "STATUS METHOD URL" of API calls that failed (>= 400), or "network METHOD URL: reason" of calls that got no
        # answer at all (connection reset or refused; requests the test itself blocks are not counted)
        self.failed_responses: list[str] = []
        self.answers: list[str] = []  # "STATUS METHOD URL" of every answer from the loopback servers
        self._pw = sync_playwright().start()
        try:
            # playwright gives the browser a fresh temporary profile (its own --user-data-dir) and removes it.
            self._browser = self._pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            self.context = self._browser.new_context(viewport={"width": 1400, "height": 1000})
        except BaseException:
            self._pw.stop()
            raise
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("websocket", lambda ws: self.websockets.append(ws.url))
        self.page.on("response", self._on_response)
        self.page.on("requestfailed", self._on_request_failed)
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.page_errors: list[str] = []  # uncaught exceptions in the page's scripts
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))

    def _route(self, route: Any) -> None:
        url = route.request.url
        if is_loopback(url):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("blockedbyclient")

    def _on_response(self, response: Any) -> None:
        if not is_loopback(response.url):
            self.responses_from_outside.append(response.url)
        else:
            self.answers.append(f"{response.status} {response.request.method} {response.url}")
        if response.status >= 400:
            self.failed_responses.append(f"{response.status} {response.request.method} {response.url}")

    def _on_request_failed(self, request: Any) -> None:
        if is_loopback(request.url):
            self.failed_responses.append(f"network {request.method} {request.url}: {request.failure}")

    # -- navigation helpers ---------------------------------------------------------------------------------
    def goto(self, path: str, idle: bool = True) -> None:
        """Open a UI page; ``idle``: also wait until its API calls are done (else wait for what you need)."""
        self.page.goto(self.base_url + path)
        if idle:
            self.page.wait_for_load_state("networkidle")

    def labelled_input(self, label: str) -> Any:
        """The input or textarea of a Prefect form field whose label starts with ``label``."""
        page = self.page
        labels = page.locator("label.p-label__label", has_text=re.compile(r"^\s*" + re.escape(label)))
        return page.locator(".p-label", has=labels).locator("input, textarea").first

    def any_of(self, title: str) -> Any:
        """A block form's union field (its section header is ``title``): buttons pick the variant."""
        page = self.page
        header = page.locator("h3", has_text=re.compile(rf"^\s*{re.escape(title)}\s*$"))
        return page.locator(".schema-form-property-any-of", has=header).first

    def run_form_property(self, name: str) -> Any:
        """A parameter of a deployment's Run form (labels are the parameter names)."""
        page = self.page
        label = page.locator(".schema-form-property__label", has_text=re.compile(rf"^\s*{re.escape(name)}\b"))
        return page.locator(".schema-form-property", has=label).first

    def choose(self, label: str, option: str) -> list[str]:
        """Pick ``option`` in the choice list (an enum field) labelled ``label``; returns the options it offered."""
        page = self.page
        labels = page.locator("label.p-label__label", has_text=re.compile(r"^\s*" + re.escape(label)))
        control = page.locator(".p-label", has=labels).locator("button.p-select-button__control").first
        control.focus()
        page.keyboard.press("ArrowDown")
        page.get_by_role("option").first.wait_for()
        offered = [o.inner_text().strip() for o in page.get_by_role("option").all()]
        page.get_by_role("option", name=option, exact=True).click()
        return offered

    def field_labels(self) -> list[str]:
        """The titles of the form's fields, top to bottom: a plain field's label, or an optional (union) field's
        section header."""
        titles = self.page.locator("label.p-label__label, .schema-form-property-any-of h3").all_inner_texts()
        return [t.strip() for t in titles if t.strip() != "(Optional)"]

    def pick_block(self, prop: Any, block_name: str) -> None:
        """Choose a saved block in a block picker (the select opens from the keyboard, as a user can)."""
        prop.locator("button.p-select-button__control").first.focus()
        self.page.keyboard.press("ArrowDown")
        self.page.get_by_role("option", name=block_name, exact=True).click()

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        try:
            self.context.close()
            self._browser.close()
        finally:
            self._pw.stop()


def off_loop(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` in a fresh thread and return its result (re-raising its error).

    playwright's sync API keeps an asyncio loop running in the thread that drives the browser; Prefect's
    dual sync/async APIs (``Block.save``, ``Block.load``, ...) see that loop and return coroutines. The Python
    side of a UI test therefore runs in its own thread, as it would in a separate process.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="rh-ui-python") as pool:
        return pool.submit(fn, *args, **kwargs).result()


def flow_run_state(api_url: str, run_id: str) -> Optional[str]:
    """The state type of a flow run (``COMPLETED``, ``FAILED``, ...)."""
    run = api(api_url, "GET", f"/flow_runs/{run_id}")
    return (run.get("state") or {}).get("type")
