"""A second "host" on this machine for tests: a network namespace with its own address and sshd.

``NetnsLab`` creates a namespace and a veth pair with a private /30 (``10.213.K.1`` on the host side,
``10.213.K.2`` inside), ``NetnsSSHServer`` runs a private sshd inside it, and ``TcpRelay`` makes a server
that listens on the host's loopback reachable from the namespace through the host-side veth address (a plain
TCP relay process; it carries only what is sent to that port).

Everything is created with names unique to this process and removed by ``down()`` / ``stop()`` - namespace,
veth, and any process still running inside the namespace (all of them ours: the namespace is ours).

Run ``python tests/netns.py relay LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT`` to relay by hand.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from infra import LOCALHOST, MotoS3Server, SSHServer, _Server, free_port  # noqa: E402


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be used here (no permission, no `ip`, no veth support)."""


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


class NetnsLab:
    """A network namespace joined to the host by a veth pair on a private /30."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
        self.name = f"rh-{tag}"
        self.veth_host = f"rhh{tag}"  # interface names: at most 15 characters
        self.veth_ns = f"rhn{tag}"
        self.subnet = self._free_subnet()
        self.host_ip = f"10.213.{self.subnet}.1"
        self.ns_ip = f"10.213.{self.subnet}.2"
        self.created = False

    @staticmethod
    def _free_subnet() -> int:
        used = _ip("-4", "-o", "addr").stdout if _has_ip() else ""
        free = [k for k in range(1, 255) if f"10.213.{k}." not in used]
        if not free:
            raise NetnsUnavailable("no free 10.213.K.0/30 subnet left on this host")
        return random.choice(free)

    def up(self) -> "NetnsLab":
        """Create namespace + veth; raise NetnsUnavailable (having cleaned up) when the host does not allow it."""
        if not _has_ip():
            raise NetnsUnavailable("the `ip` command (iproute2) is not installed")
        steps = [
            ("netns", "add", self.name),
            ("link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns),
            ("link", "set", self.veth_ns, "netns", self.name),
            ("addr", "add", f"{self.host_ip}/30", "dev", self.veth_host),
            ("link", "set", self.veth_host, "up"),
            ("netns", "exec", self.name, "ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.veth_ns),
            ("netns", "exec", self.name, "ip", "link", "set", self.veth_ns, "up"),
            ("netns", "exec", self.name, "ip", "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = _ip(*step)
            if step[:2] == ("netns", "add") and done.returncode == 0:
                self.created = True
            if done.returncode != 0:
                self.down()
                raise NetnsUnavailable(f"`ip {' '.join(step)}` failed: {done.stderr.strip()}")
        return self

    def argv(self, *command: str) -> list[str]:
        """``command`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *command]

    def shape(self, mbit: float, both_ways: bool = True) -> None:
        """Limit the link to ``mbit`` Mbit/s with a token bucket (``tc tbf``; this kernel has no netem, so no added
        latency): what leaves the namespace, and with ``both_ways`` what enters it too (each end shapes what it
        sends)."""
        rate = f"{mbit}mbit"
        # Bursts must hold a whole GSO segment (up to 64 KiB on a veth) or tbf drops it.
        burst = str(max(256 * 1024, int(mbit * 1e6 / 8 / 100)))
        tbf = ("root", "tbf", "rate", rate, "burst", burst, "latency", "100ms")
        commands = [self.argv("tc", "qdisc", "replace", "dev", self.veth_ns, *tbf)]
        if both_ways:
            commands.append(["tc", "qdisc", "replace", "dev", self.veth_host, *tbf])
        for argv in commands:
            subprocess.run(argv, check=True, capture_output=True, text=True)

    def unshape(self) -> None:
        """Remove what :meth:`shape` set (no error when nothing was set)."""
        subprocess.run(self.argv("tc", "qdisc", "del", "dev", self.veth_ns, "root"), capture_output=True)
        subprocess.run(["tc", "qdisc", "del", "dev", self.veth_host, "root"], capture_output=True)

    def pids(self) -> list[int]:
        """PIDs of every process inside the namespace."""
        out = _ip("netns", "pids", self.name).stdout if self.created else ""
        return [int(p) for p in out.split()]

    def down(self) -> None:
        """Kill what still runs inside, delete the namespace and the veth pair. Safe to call twice."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # exited meanwhile
                continue
        if self.created:
            _ip("netns", "del", self.name)  # also removes the peer inside, which removes the host end
            self.created = False
        if _ip("link", "show", self.veth_host).returncode == 0:
            _ip("link", "del", self.veth_host)

    def __enter__(self) -> "NetnsLab":
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


def _has_ip() -> bool:
    return subprocess.run(["sh", "-c", "command -v ip"], capture_output=True).returncode == 0


class NetnsSSHServer(SSHServer):
    """The test sshd, listening on the namespace's address, running inside the namespace."""

    def __init__(self, lab: NetnsLab, user: str | None = None) -> None:
        super().__init__(user=user, host=lab.ns_ip)
        self.lab = lab

    def _pick_port(self) -> int:
        return free_port(LOCALHOST)  # any port: nothing else listens inside a fresh namespace

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        super()._spawn(self.lab.argv(*argv), env)


class NetnsMotoServer(MotoS3Server):
    """moto, listening on the namespace's address, running inside the namespace (S3 next to the cluster)."""

    def __init__(self, lab: NetnsLab, spill_dir: str | Path | None = None) -> None:
        super().__init__(host=lab.ns_ip, spill_dir=spill_dir)
        self.lab = lab

    def _pick_port(self) -> int:
        return free_port(LOCALHOST)  # any port: nothing else listens inside a fresh namespace

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        super()._spawn(self.lab.argv(*argv), env)


class TcpRelay(_Server):
    """Listens on ``host`` (e.g. the host-side veth address) and relays each connection to ``target``."""

    name = "relay"

    def __init__(self, host: str, target_host: str, target_port: int) -> None:
        super().__init__(host)
        self.target = (target_host, target_port)

    def _launch(self) -> None:
        self._spawn([sys.executable, __file__, "relay", self.host, str(self.port), self.target[0],
                     str(self.target[1])])

    def _is_ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False


# ----------------------------------------------------------------------------- the relay process


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close: the other direction may still be talking
    except (ConnectionError, OSError):  # one side went away: the other pipe notices and ends too
        writer.close()


async def _relay(listen_host: str, listen_port: int, target_host: str, target_port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        for w in (writer, up_writer):
            w.close()

    server = await asyncio.start_server(handle, listen_host, listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "relay":
        asyncio.run(_relay(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])))
    else:
        print(__doc__)
        sys.exit(2)


__all__ = ["NetnsLab", "NetnsMotoServer", "NetnsSSHServer", "NetnsUnavailable", "TcpRelay"]
