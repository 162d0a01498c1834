"""aiobotocore's HTTP session with one TLS context per process instead of one per S3 client, and endpoints that
cannot be reached failing at once.

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
from urllib.parse import urlsplit

from aiobotocore.httpsession import AIOHTTPSession

from rh_prefect.systems._private import Private

#: aiobotocore's private hook that builds a client's TLS context (2.x builds it elsewhere, without a hook): where
#: it is missing or changed, every client builds its own context, as aiobotocore does
SSL_CONTEXTS = Private(
    "aiobotocore", "AIOHTTPSession._build_ssl_contexts", params=("proxy_url",),
    fallback="a TLS context per client (aiobotocore's own way, ~0.07 s of CPU each)",
    why="one TLS context per process instead of one per S3 client",
)

_S3_CHECK = ("Check the endpoint (endpoint_url of the S3Credentials block, or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL) "
             "and that the server is up.")

#: built contexts by the client's ``verify`` setting (True, False or a CA bundle path)
_CONTEXTS: dict[Any, Any] = {}
_LOCK = threading.Lock()


def _could_not_connect(exc: BaseException) -> bool:
    """True when aiohttp could not open a connection (refused, no route, no answer within the connect timeout, a
    name that does not resolve), as opposed to one that broke after the endpoint answered: a TLS handshake that
    failed means it answered."""
    import socket

    import aiohttp

    return (isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, socket.gaierror))
            and not isinstance(exc, aiohttp.ClientSSLError))



class SharedTLSHTTPSession(AIOHTTPSession):
    async def send(self, request: Any) -> Any:
        """Send as aiobotocore does, except that an endpoint that cannot be connected to and never answered in this
        process fails at once with a SystemUnavailable naming it (see ``systems.base.first_contact_error``), which
        botocore and s3fs do not retry: their retries of a refused connection took ~6-8 s, and of one that is not
        answered, several connect timeouts."""
        from botocore.exceptions import ConnectionError as BotoConnectionError

        from rh_prefect.systems.base import answered, first_contact_error

        parts = urlsplit(request.url)
        endpoint = f"S3 endpoint {parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        try:
            response = await super().send(request)
        except BotoConnectionError as exc:  # EndpointConnectionError, ConnectTimeoutError, ...
            cause = exc.kwargs.get("error")  # aiohttp's own error: whether a connection could be opened at all
            error = first_contact_error(endpoint, cause, _S3_CHECK) if _could_not_connect(cause) else None
            if error is not None:
                raise error from exc
            raise
        answered(endpoint)
        return response

    def _build_ssl_contexts(self, proxy_url: Any) -> Any:
        # also aiobotocore's private state: a client certificate, and the verify setting
        if (not SSL_CONTEXTS.usable(AIOHTTPSession) or not hasattr(self, "_verify")
                or getattr(self, "_cert_file", None) or proxy_url):
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
        if (not SSL_CONTEXTS.usable(AIOHTTPSession) or getattr(self, "_cert_file", None) or proxy_url
                or getattr(self, "_verify", False) is False):
            return super()._build_ssl_contexts(proxy_url)
        return True, None
