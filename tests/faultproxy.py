"""A small TCP proxy for fault-injection tests: put it in front of a server, then cut the network.

    with FaultProxy(target_port=s3_server.port) as proxy:
        endpoint = f"http://127.0.0.1:{proxy.port}"
        ...
        proxy.cut(seconds=3)      # drop every open connection and refuse new ones for 3 s
        proxy.cut()               # ... or until proxy.restore()
        proxy.stall(seconds=20)   # keep connections open but pass no byte (a black-holed path: no reset, no FIN)
        proxy.stall(seconds=60, existing_only=True)  # ... only the connections open now; new ones work

While cut, accepted connections are closed at once (clients see a reset / EOF), which is what a flapping
network or a restarting load balancer looks like from the client side. moto keeps no state across a
restart, so this is how the S3 tests "lose the network" without losing the server's data.
"""

from __future__ import annotations

import socket
import threading
import time

LOCALHOST = "127.0.0.1"


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = LOCALHOST, host: str = LOCALHOST) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server((host, 0))
        self.host = host
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut_until = 0.0  # monotonic deadline; inf while cut without a deadline
        self._closed = False
        self.connections = 0  # accepted while healthy
        self.refused = 0  # accepted and dropped while cut
        self.cuts = 0
        self._stall_until = 0.0  # monotonic deadline while stalled
        self._stalled: dict[socket.socket, float] = {}  # connections stalled on their own: socket -> deadline
        self.stalled_connections = 0
        self.bytes_passed = 0  # both directions, all connections
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ control
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def is_cut(self) -> bool:
        return time.monotonic() < self._cut_until

    def cut(self, seconds: float | None = None) -> int:
        """Drop every open connection; refuse new ones for ``seconds`` (None: until restore()).

        Returns how many connections were dropped."""
        with self._lock:
            self._cut_until = float("inf") if seconds is None else time.monotonic() + seconds
            self.cuts += 1
            dropped = list(self._open)
            self._open.clear()
        for sock in dropped:
            _hard_close(sock)
        return len(dropped) // 2

    def stall(self, seconds: float, existing_only: bool = False) -> int:
        """Pass no byte in either direction for ``seconds`` while every connection stays open: what a silently
        dropped network path looks like (no reset, no FIN; the sender's window fills and its writes block).
        ``existing_only``: stall the connections open now and let new ones through (a dead route that a
        reconnect avoids). Returns how many connections were open."""
        until = time.monotonic() + seconds
        with self._lock:
            open_now = list(self._open)
            if existing_only:
                self._stalled.update((sock, until) for sock in open_now)
            else:
                self._stall_until = until
        self.stalled_connections += len(open_now) // 2
        return len(open_now) // 2

    @property
    def is_stalled(self) -> bool:
        return time.monotonic() < self._stall_until

    @property
    def holds_stalled_connections(self) -> bool:
        """True while connections stalled with ``existing_only`` are held, however long ago their stall ran out;
        :meth:`restore` lets them go. (A test asks it to tell "the client gave up on them" from "they were
        released".)"""
        with self._lock:
            return bool(self._stalled)

    def _held(self, sock: socket.socket) -> bool:
        return self.is_stalled or time.monotonic() < self._stalled.get(sock, 0.0)

    def restore(self) -> None:
        with self._lock:
            self._cut_until = 0.0
        self._stall_until = 0.0
        self._stalled.clear()

    def close(self) -> None:
        self._closed = True
        self.cut()
        try:
            self._listener.close()
        except OSError:
            pass

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.is_cut:
                self.refused += 1
                _hard_close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _hard_close(client)
                continue
            with self._lock:
                if self.is_cut:  # cut() ran while we were connecting: this connection must not survive it
                    self.refused += 1
                    dropped = True
                else:
                    self.connections += 1
                    self._open.update((client, upstream))
                    dropped = False
            if dropped:
                _hard_close(upstream)
                _hard_close(client)
                continue
            ended: list[int] = []  # directions of this connection that saw a polite end (EOF)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, ended), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, ended: list[int]) -> None:
        try:
            while True:
                while self._held(source) and not self._closed:  # read nothing: the kernel buffers fill up
                    time.sleep(0.05)
                data = source.recv(65536)
                if not data:
                    break
                while self._held(source) and not self._closed:  # ... and what was read is held back
                    time.sleep(0.05)
                sink.sendall(data)
                self.bytes_passed += len(data)  # a racy sum is fine: tests wait for "at least"
            # A polite end stays polite: pass the FIN on and let the other direction finish (a server that
            # closes after its response must not turn into a reset that destroys the response in flight).
            sink.shutdown(socket.SHUT_WR)
        except OSError:  # reset by a peer, or cut(): drop the whole connection
            polite = False
        else:
            polite = True
        with self._lock:
            if polite:
                ended.append(1)
                if len(ended) < 2:
                    return
            self._open.discard(source)
            self._open.discard(sink)
        if polite:
            source.close()
            sink.close()
        else:
            _hard_close(sink)
            _hard_close(source)


def _hard_close(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), like a dropped network path, not a polite FIN.

    close() alone does not end a connection while a pipe thread is blocked in recv() on it: the kernel keeps
    the socket (and the connection, ESTABLISHED) until that call returns, so the peer would hang instead of
    seeing a reset. shutdown(SHUT_RD) wakes the blocked recv() without sending anything; the socket is then
    released with linger 0, which sends the RST.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
