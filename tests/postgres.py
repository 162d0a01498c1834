"""A private PostgreSQL server for tests (Debian's ``postgresql`` package; no systemd, no system cluster).

``PostgresServer`` runs ``initdb`` in its own temp dir, then ``postgres`` in the foreground on 127.0.0.1 and a
free port (as the ``postgres`` user when the tests run as root: PostgreSQL refuses to run as root), creates a
database and gives an asyncpg URL for Prefect::

    with PostgresServer() as pg:
        PrefectServer(database_url=pg.url("prefect")).start()

Install on Debian/Ubuntu: ``apt-get install -y postgresql`` (the server binaries live in
/usr/lib/postgresql/<version>/bin; the package's own cluster is not used).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from infra import ServerStartError, _Server


def postgres_bindir() -> Path:
    """The newest installed PostgreSQL server's bin directory."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).parent
    raise ServerStartError("PostgreSQL is not installed: `apt-get install -y postgresql` (Debian/Ubuntu).")


class PostgresServer(_Server):
    """``postgres -D <tmp>/data`` on 127.0.0.1:<free port>, trust authentication, fsync off (tests only)."""

    name = "postgres"
    startup_timeout = 60.0

    def __init__(self, database: str = "prefect") -> None:
        super().__init__()
        self.database = database
        self.bindir = postgres_bindir()
        # PostgreSQL will not run as root; the Debian package creates the "postgres" user for it.
        self.run_as = "postgres" if os.geteuid() == 0 else None

    def url(self, database: str | None = None) -> str:
        """SQLAlchemy URL for Prefect: ``postgresql+asyncpg://postgres@127.0.0.1:PORT/prefect``."""
        return f"postgresql+asyncpg://postgres@{self.host}:{self.port}/{database or self.database}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *argv] if self.run_as else argv

    def _chown(self, path: Path) -> None:
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _launch(self) -> None:
        self.tmpdir.chmod(0o755)  # the postgres user must reach its data and socket dirs inside
        data, sock = self.tmpdir / "data", self.tmpdir / "sock"
        for d in (data, sock):
            d.mkdir(mode=0o700)
            self._chown(d)
        init = subprocess.run(
            self._as_owner([str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                            "--no-sync", "-E", "UTF8"]),
            capture_output=True, text=True, timeout=120,
        )
        if init.returncode != 0:
            raise ServerStartError(f"initdb failed: {init.stdout}\n{init.stderr}")
        self._spawn(self._as_owner([
            str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(sock),
            "-c", f"listen_addresses={self.host}", "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "max_connections=200",
        ]))

    def _is_ready(self) -> bool:
        probe = subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
                               capture_output=True, timeout=10)
        return probe.returncode == 0

    def start(self) -> "PostgresServer":
        super().start()
        made = subprocess.run(
            [str(self.bindir / "createdb"), "-h", self.host, "-p", str(self.port), "-U", "postgres", self.database],
            capture_output=True, text=True, timeout=60,
        )
        if made.returncode != 0:
            self.stop()
            raise ServerStartError(f"createdb {self.database} failed: {made.stderr}")
        return self

    def _terminate_group(self, process: subprocess.Popen) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown (SIGTERM would wait for clients to disconnect).
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:  # the base class escalates to SIGKILL
                pass
        super()._terminate_group(process)


__all__ = ["PostgresServer", "postgres_bindir"]
