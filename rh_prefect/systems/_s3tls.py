"""aiobotocore's HTTP session with one TLS context per process instead of one per S3 client.

Each S3 client builds its own context on its first request, and that loads the whole CA bundle: ~150
certificates through OpenSSL 3's decoder, ~240 M instructions (~0.07 s of CPU), a third of what setting up a
client costs, paid again for every S3System (a copy between two buckets has two) and every reconnect. An SSL
context is safe to share between connections and threads once built; contexts that are changed after building
(a client certificate loaded into it, a proxy's settings) are still built per client, as aiobotocore does.

A module of its own so that importing the systems package does not import aiobotocore, and so that the class
pickles by name with the filesystem's arguments.
"""

from __future__ import annotations

import threading
from typing import Any

from aiobotocore.httpsession import AIOHTTPSession

#: built contexts by the client's ``verify`` setting (True, False or a CA bundle path)
_CONTEXTS: dict[Any, Any] = {}
_LOCK = threading.Lock()


class SharedTLSHTTPSession(AIOHTTPSession):
    def _build_ssl_contexts(self, proxy_url: Any) -> Any:
        if self._cert_file or proxy_url:
            return super()._build_ssl_contexts(proxy_url)
        key = self._verify if isinstance(self._verify, (str, bool)) else repr(self._verify)
        with _LOCK:  # runs in a worker thread: clients connecting at the same time build it once
            context = _CONTEXTS.get(key)
            if context is None:
                context = _CONTEXTS[key] = super()._build_ssl_contexts(None)[0]
        return context, None


class PlainHTTPSession(SharedTLSHTTPSession):
    """For an endpoint reached over plain HTTP (``http://``, e.g. MinIO or moto on a private network): no
    request of the client uses TLS, so no CA bundle is loaded at all. Should a connection ever need TLS, aiohttp's
    default context verifies it (the system's CAs)."""

    def _build_ssl_contexts(self, proxy_url: Any) -> Any:
        if self._cert_file or proxy_url or self._verify is False:
            return super()._build_ssl_contexts(proxy_url)
        return True, None
