"""A new user's first hour: `rh-prefect server up`, then Python and the CLIs all use that server, no export.

Runs in a fresh HOME (its own ~/.prefect profiles and ~/.rh-prefect server), without PREFECT_API_URL, the way a
user's shell is after `pip install rh-prefect`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from infra import free_port

pytestmark = pytest.mark.servers  # starts its own Prefect server through `rh-prefect server up`

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _first_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


@pytest.fixture
def fresh_user(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RH_PREFECT_"))}
    env.update(HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    port = free_port()
    yield env, home, port
    subprocess.run([str(BIN / "rh-prefect"), "server", "down"], env=env, capture_output=True, timeout=120)


def _run(cmd, env, cwd=None, timeout=300):
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_server_up_makes_python_and_both_clis_use_one_server(fresh_user, tmp_path):
    env, home, port = fresh_user
    up = _run([str(BIN / "rh-prefect"), "server", "up", "--port", str(port)], env)
    api = f"http://127.0.0.1:{port}/api"
    assert f"API {api}" in up.stdout
    assert "Prefect profile 'rh-prefect' is now active (it was 'ephemeral')" in up.stdout, up.stdout

    # Prefect's own CLI sees the same server through the active profile.
    view = _run([str(BIN / "prefect"), "config", "view"], env)
    assert f"PREFECT_API_URL='{api}'" in view.stdout, view.stdout

    # The README's first example, as written, in a fresh process with no PREFECT_API_URL.
    workdir = tmp_path / "work"
    workdir.mkdir()
    block = _first_python_block()
    done = _run([sys.executable, "-c", block], env, cwd=workdir)
    assert "sample_file_0.txt" in done.stdout and "database is locked" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr

    # ... saved into the rh-prefect server: the block document is there, pointing at the folder it wrote.
    body = json.dumps({"block_documents": {"name": {"any_": ["my-folder"]}}, "include_secrets": False}).encode()
    request = urllib.request.Request(f"{api}/block_documents/filter", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        docs = json.loads(resp.read())
    assert [d["block_type"]["slug"] for d in docs] == ["rh-folder"]
    assert docs[0]["data"]["path"] == str(workdir / "folder_tmp")
    assert sorted(os.listdir(workdir / "folder_tmp")) == [f"sample_file_{i}.txt" for i in range(3)]

    # rh-prefect's CLI finds it by name on the same server.
    info = _run([str(BIN / "rh-prefect"), "info", "my-folder"], env)
    assert str(workdir / "folder_tmp") in info.stdout

    # `server down` switches the profile back.
    _run([str(BIN / "rh-prefect"), "server", "down"], env)
    profiles = (home / ".prefect" / "profiles.toml").read_text()
    assert 'active = "ephemeral"' in profiles, profiles


def test_a_process_without_a_server_adopts_the_running_one(fresh_user, tmp_path):
    """No profile, no PREFECT_API_URL, but an rh-prefect server runs: the library uses it, not a temporary one.
    If Prefect was imported first (its settings are read at import), the error says how to fix it."""
    env, home, port = fresh_user
    _run([str(BIN / "rh-prefect"), "server", "up", "--port", str(port)], env)
    (home / ".prefect" / "profiles.toml").write_text('active = "ephemeral"\n')  # as if the user switched back
    api = f"http://127.0.0.1:{port}/api"
    script = textwrap.dedent(f"""
        import rh_prefect as rh
        f = rh.folder(name="adopted", path={str(tmp_path / 'adopted')!r}).save()
        import prefect.settings
        print("API", prefect.settings.PREFECT_API_URL.value())
    """)
    done = _run([sys.executable, "-c", script], env)
    assert f"API {api}" in done.stdout, done.stdout + done.stderr

    late = _run([sys.executable, "-c", "import prefect, rh_prefect as rh\n"
                 "from rh_prefect.errors import SystemUnavailable\n"
                 "try:\n    rh.folder\nexcept SystemUnavailable as e:\n    print('ERR', e)\n"], env)
    assert f"An rh-prefect server is running at {api}" in late.stdout, late.stdout
    assert "prefect profile use rh-prefect" in late.stdout


def test_version_is_printed_by_the_cli():
    from importlib.metadata import version

    import rh_prefect

    done = _run([str(BIN / "rh-prefect"), "--version"], dict(os.environ))
    assert done.stdout == f"rh-prefect {rh_prefect.__version__}\n" and done.stderr == ""
    assert version("rh-prefect") == rh_prefect.__version__


def test_an_ssh_url_naming_no_saved_cluster_says_exactly_that(cli, prefect_server):
    result = cli("ls", "ssh://rh-nowhere-cluster/data")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "rh-prefect: error: No cluster named 'rh-nowhere-cluster' is saved (and it is not a host name that "
        "resolves). Save one with rh.cluster(name='rh-nowhere-cluster', host=..., user=...).save(), or give the "
        "host as ssh://user@host:port/path."
    )
