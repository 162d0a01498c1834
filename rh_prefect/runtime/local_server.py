"""The embedded default: a local Prefect server on SQLite, started in the background when needed.

``rh-prefect server up`` (or :func:`ensure`) starts ``prefect server start`` on 127.0.0.1 with its own
PREFECT_HOME under ``~/.rh-prefect/server`` (override with ``RH_PREFECT_SERVER_HOME``), records its PID and
port, and waits until ``/api/health`` answers. Without this, a Prefect client with no PREFECT_API_URL spawns a
temporary server in every process, which takes ~20 s each time and forgets everything.

``rh-prefect server up`` also makes the Prefect profile ``rh-prefect`` (PREFECT_API_URL = this server) the active
one (:func:`use_profile`): the library, the ``rh-prefect`` CLI and Prefect's own ``prefect`` CLI then all use the
same server without any export, the way Prefect users switch servers. ``server down`` switches back to the
profile that was active before. A process that has no server configured while the embedded one runs uses the
running one (:func:`adopt_running`), or fails with a clear message if Prefect was imported first.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rh_prefect.errors import SystemUnavailable

DEFAULT_PORT = 4200
#: The Prefect profile that ``rh-prefect server up`` creates and activates.
PROFILE = "rh-prefect"


def home() -> Path:
    return Path(os.environ.get("RH_PREFECT_SERVER_HOME", "~/.rh-prefect/server")).expanduser()


@dataclass
class ServerInfo:
    pid: int
    port: int
    home: str
    #: the Prefect profile that was active before ``server up`` activated ``rh-prefect`` (restored by ``down``)
    previous_profile: Optional[str] = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _state_file() -> Path:
    return home() / "server.json"


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    import urllib.request  # here, as the other modules below: the command line imports this module for every call

    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status() -> Optional[ServerInfo]:
    """The running embedded server, or None."""
    try:
        data = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None
    info = ServerInfo(**data)
    if _alive(info.pid) and _healthy(info.api_url):
        return info
    return None


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def up(port: int = DEFAULT_PORT, timeout: float = 120.0) -> ServerInfo:
    """Start the embedded server (or return the running one)."""
    import subprocess

    running = status()
    if running:
        return running
    if not _port_free(port):
        raise SystemUnavailable(
            f"Port {port} on 127.0.0.1 is taken by another program; pick another with `rh-prefect server up "
            "--port N`, or point PREFECT_API_URL at the server that is already there."
        )
    root = home()
    root.mkdir(parents=True, exist_ok=True)
    prefect_bin = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect_bin) if prefect_bin.exists() else "prefect", "server", "start", "--host", "127.0.0.1",
           "--port", str(port)]
    env = dict(
        os.environ,
        PREFECT_HOME=str(root),
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    env.pop("PREFECT_API_URL", None)
    log = open(root / "server.log", "ab")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    info = ServerInfo(pid=proc.pid, port=port, home=str(root))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemUnavailable(f"The Prefect server exited at start; see {root / 'server.log'}.")
        if _healthy(info.api_url):
            _state_file().write_text(json.dumps(info.__dict__))
            return info
        time.sleep(0.5)
    proc.terminate()
    raise SystemUnavailable(f"The Prefect server did not become healthy in {timeout:.0f}s; see {root / 'server.log'}.")


def down() -> bool:
    """Stop the embedded server; True if one was running. The profile active before ``use_profile`` is restored."""
    try:
        data = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return False
    restore_profile(data.get("previous_profile"))
    import signal

    pid = int(data["pid"])
    stopped = False
    if _alive(pid):
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
        stopped = True
    _state_file().unlink(missing_ok=True)
    return stopped


def use_profile(info: ServerInfo) -> Optional[str]:
    """Create (or update) the Prefect profile ``rh-prefect`` with ``PREFECT_API_URL`` = this server and make it
    the active profile; returns the profile that was active before (also kept in the server's state file)."""
    from prefect.settings import PREFECT_API_URL, load_profiles, save_profiles

    profiles = load_profiles()
    before = profiles.active_name
    profiles.update_profile(PROFILE, {PREFECT_API_URL: info.api_url})
    profiles.set_active(PROFILE)
    save_profiles(profiles)
    if before != PROFILE:
        info.previous_profile = before
        _state_file().write_text(json.dumps(info.__dict__))
    return before


def restore_profile(previous: Optional[str]) -> None:
    """If the ``rh-prefect`` profile is active, make ``previous`` (or Prefect's default) active again."""
    import tomllib

    path = _profiles_path()
    try:
        active = tomllib.loads(path.read_text()).get("active")
    except (OSError, ValueError):
        return
    if active != PROFILE:
        return  # the user switched profiles since: leave their choice alone
    from prefect.settings import load_profiles, save_profiles

    profiles = load_profiles()
    profiles.set_active(previous if previous in profiles.names else "ephemeral")
    save_profiles(profiles)


def adopt_running() -> Optional[str]:
    """For a process with no Prefect server configured: the embedded server's API URL if one is running, set as
    PREFECT_API_URL for this process and its children (instead of Prefect starting a temporary server)."""
    if os.environ.get("PREFECT_API_URL") or _profile_api_url():
        return None
    info = status()
    if info is None:
        return None
    if "prefect" in sys.modules:
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():
            return None
        raise SystemUnavailable(
            f"An rh-prefect server is running at {info.api_url}, but this process imported Prefect without a "
            f"server configured, so its calls would go to a temporary server and be lost. Run "
            f"`prefect profile use {PROFILE}` (or export PREFECT_API_URL={info.api_url}), or import rh_prefect "
            "before prefect."
        )
    os.environ["PREFECT_API_URL"] = info.api_url
    return info.api_url


def _profiles_path() -> Path:
    prefect_home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    return Path(os.environ.get("PREFECT_PROFILES_PATH", prefect_home / "profiles.toml")).expanduser()


def _profile_api_url() -> Optional[str]:
    """PREFECT_API_URL of the active Prefect profile, read without importing prefect."""
    import tomllib

    try:
        data = tomllib.loads(_profiles_path().read_text())
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active", "ephemeral")
    return (data.get("profiles", {}).get(active) or {}).get("PREFECT_API_URL")


def ensure() -> str:
    """Make sure this process talks to a persistent Prefect server; return its API URL.

    PREFECT_API_URL (environment or active profile) wins. Otherwise the embedded server is started (or
    reused) and PREFECT_API_URL is set for this process and its children. Prefect reads its settings once, at
    import, so call this before anything imports prefect.
    """
    configured = os.environ.get("PREFECT_API_URL") or _profile_api_url()
    if configured:
        return configured
    if "prefect" in sys.modules:
        raise SystemUnavailable(
            "No Prefect server configured and prefect is already imported; start one with `rh-prefect server up` "
            "and set PREFECT_API_URL, or call rh_prefect.runtime.local_server.ensure() before importing prefect."
        )
    info = up()
    os.environ["PREFECT_API_URL"] = info.api_url  # before use_profile imports prefect
    use_profile(info)
    return info.api_url
