"""The ``rh-prefect`` command line against the real servers: output, exit codes and error messages.

Most commands run in-process through typer's CliRunner (fast); a few run the installed ``rh-prefect`` script
as a subprocess, to check what a shell sees (exit codes, stderr, no traceback, no server started by --help).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from helpers import write_tree
from infra import free_port, http_status

RH_PREFECT = str(Path(sys.executable).parent / "rh-prefect")
COMMANDS = [["ls"], ["cp"], ["cat"], ["rm"], ["info"], ["list"], ["register"], ["server", "up"],
            ["server", "down"], ["server", "status"], ["worker", "start"], ["lineage"], ["server"], ["worker"], []]


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(3000), "sub/deeper/c.txt": b"gamma"}
    write_tree(root, files)
    return files


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "rh-prefect")
def test_help_of_every_command_shows_an_example(cli, command):
    result = cli(*command, "--help")
    assert result.exit_code == 0
    assert f"Example: rh-prefect {' '.join(command)}".rstrip() in result.stdout


def test_help_and_usage_errors_start_no_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "PREFECT_PROFILE"))}
    env.update(RH_PREFECT_SERVER_HOME=str(tmp_path / "server-home"), PREFECT_HOME=str(tmp_path / "prefect-home"))
    shown = subprocess.run([RH_PREFECT, "cp", "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "Example: rh-prefect cp" in shown.stdout
    usage = subprocess.run([RH_PREFECT, "cp", "only-one"], env=env, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "Missing argument 'DST'" in usage.stderr and usage.stdout == ""
    assert not (tmp_path / "server-home").exists()  # no embedded Prefect server was started


@pytest.mark.servers  # uses the Prefect API without a server fixture
def test_usage_errors_exit_2(cli):
    assert cli("no-such-command").exit_code == 2
    assert cli("ls").exit_code == 2
    result = cli("rm", "/tmp/not-a-saved-name-" + uuid.uuid4().hex, "--keep-data")
    assert result.exit_code == 2
    assert result.stderr.startswith("rh-prefect: error: --keep-data only applies to saved names")


# --------------------------------------------------------------------------- data on every system


def test_cp_ls_cat_rm_on_s3(cli, tmp_path, s3_bucket, s3_env):
    files = make_tree(tmp_path / "src")
    url = f"s3://{s3_bucket}/data"

    result = cli("cp", str(tmp_path / "src"), url)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("copied 3 files / ") and "skipped 0 unchanged" in result.stdout
    assert cli("cp", str(tmp_path / "src"), url).stdout.startswith("copied 0 files / 0 B, skipped 3 unchanged")

    assert cli("ls", url).stdout == "a.txt\nsub/\n"
    assert cli("ls", "-r", url).stdout == "a.txt\nsub/b.bin\nsub/deeper/c.txt\n"
    assert cli("ls", "-r", "-l", url).stdout.splitlines()[1].split() == ["3000", "sub/b.bin"]
    assert cli("cat", f"{url}/sub/b.bin").stdout_bytes == files["sub/b.bin"]

    result = cli("cat", url)
    assert result.exit_code == 1
    assert result.stderr == f"rh-prefect: error: {url} is a folder, not a file; list it with `rh-prefect ls {url}`.\n"

    # one file into a local folder that does not exist yet
    result = cli("cp", f"{url}/sub/deeper/c.txt", f"{tmp_path}/out/")
    assert result.exit_code == 0 and result.stdout == f"copied 1 file to {tmp_path}/out/c.txt\n"
    assert (tmp_path / "out" / "c.txt").read_bytes() == b"gamma"

    (tmp_path / "src" / "a.txt").write_bytes(b"changed")
    result = cli("cp", "--no-overwrite", str(tmp_path / "src"), url)
    assert result.exit_code == 1 and "already exist at the destination" in result.stderr
    assert cli("cat", f"{url}/a.txt").stdout_bytes == b"alpha\n"  # nothing was copied

    assert cli("rm", "-y", f"{url}/sub").stdout == f"removed {url}/sub\n"
    assert cli("ls", "-r", url).stdout == "a.txt\n"
    result = cli("rm", "-y", f"{url}/sub")
    assert (result.exit_code, result.stderr) == (1, f"rh-prefect: error: not found: {url}/sub\n")


@pytest.mark.servers  # uses the Prefect API without a server fixture
def test_rm_asks_first(cli, tmp_path):
    target = tmp_path / "keep-me"
    target.write_bytes(b"x")
    result = cli("rm", str(target), input="n\n")
    assert result.exit_code == 1 and "nothing deleted" in result.stderr and target.exists()
    result = cli("rm", str(target), input="y\n")
    assert result.exit_code == 0 and not target.exists()


def test_ssh_with_a_saved_cluster_name_gcs_and_s3(cli, tmp_path, rh_cluster, unique_name, gs_bucket, gcs_env,
                                                   s3_bucket, s3_env):
    files = make_tree(tmp_path / "src")
    cname = unique_name("cli-cluster")
    rh_cluster.save(cname)  # the test sshd needs a key and known_hosts: a saved Cluster stands for the host
    ssh_url = f"ssh://{cname}/~/rh-test/{uuid.uuid4().hex[:8]}"

    assert cli("cp", str(tmp_path / "src"), ssh_url).stdout.startswith("copied 3 files")
    assert cli("ls", "-r", ssh_url).stdout == "a.txt\nsub/b.bin\nsub/deeper/c.txt\n"
    assert cli("cat", f"{ssh_url}/sub/b.bin").stdout_bytes == files["sub/b.bin"]

    gs_url = f"gs://{gs_bucket}/from-ssh"
    assert cli("cp", ssh_url, gs_url).stdout.startswith("copied 3 files")
    assert cli("ls", gs_url).stdout == "a.txt\nsub/\n"
    s3_url = f"s3://{s3_bucket}/from-gs"
    assert cli("cp", gs_url, s3_url).stdout.startswith("copied 3 files")
    for key, data in files.items():
        assert cli("cat", f"{s3_url}/{key}").stdout_bytes == data

    assert cli("rm", "-y", ssh_url).exit_code == 0
    result = cli("ls", ssh_url)
    assert result.exit_code == 1 and result.stderr.startswith(f"rh-prefect: error: not found: {ssh_url}")
    assert cli("rm", cname).stdout == f"forgot @/{cname}\n"  # a Cluster holds no data: only its name goes


def test_errors_reach_the_shell_as_one_line_and_exit_1(s3_bucket, s3_env):
    url = f"s3://{s3_bucket}/missing"
    done = subprocess.run([RH_PREFECT, "ls", url], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"rh-prefect: error: not found: {url}\n")


# --------------------------------------------------------------------------- the registry


def test_saved_names_info_list_and_rm(cli, tmp_path, s3_bucket, s3_env, rh_cluster, unique_name):
    import rh_prefect as rh

    ns = "/" + unique_name("ns")
    files = make_tree(tmp_path / "src")
    rh.folder(name=f"{ns}/raw", path=f"/{s3_bucket}/raw", system="s3").save().put(str(tmp_path / "src"))
    rh.folder(name=f"{ns}/deep/one", path=str(tmp_path / "one")).save()
    rh_cluster.save(f"{ns}/gpu")

    assert cli("ls", f"{ns}/raw").stdout == "a.txt\nsub/\n"
    assert cli("list", ns).stdout.splitlines() == [f"Cluster    {ns}/gpu", f"Folder     {ns}/raw"]
    assert cli("list", ns, "-r").stdout.splitlines() == [
        f"Folder     {ns}/deep/one", f"Cluster    {ns}/gpu", f"Folder     {ns}/raw"]

    info = json.loads(cli("info", f"{ns}/raw", "--size").stdout)
    assert info == {"name": f"{ns}/raw", "type": "Folder", "path": f"/{s3_bucket}/raw", "system": "s3",
                    "url": f"s3://{s3_bucket}/raw", "files": 3, "bytes": sum(map(len, files.values())),
                    "block_document": info["block_document"]}
    cluster_info = json.loads(cli("info", f"{ns}/gpu").stdout)
    assert cluster_info["type"] == "Cluster" and cluster_info["host"] == rh_cluster.host
    assert cluster_info["ssh_key"] == "**********"  # secrets never printed

    assert cli("cp", f"{ns}/raw", str(tmp_path / "back")).exit_code == 0
    assert (tmp_path / "back" / "sub" / "b.bin").read_bytes() == files["sub/b.bin"]

    result = cli("rm", f"{ns}/raw", "--keep-data")
    assert result.stdout == f"forgot {ns}/raw; data kept at s3://{s3_bucket}/raw\n"
    result = cli("info", f"{ns}/raw")
    assert result.exit_code == 1 and result.stderr.startswith(f"rh-prefect: error: No resource named '{ns}/raw'")
    assert cli("ls", f"s3://{s3_bucket}/raw").stdout == "a.txt\nsub/\n"

    rh.folder(name=f"{ns}/raw", path=f"/{s3_bucket}/raw", system="s3").save()
    assert cli("rm", "-y", f"{ns}/raw").stdout == f"removed s3://{s3_bucket}/raw and forgot {ns}/raw\n"
    assert cli("ls", f"s3://{s3_bucket}/raw").exit_code == 1
    assert cli("list", ns).stdout.splitlines() == [f"Cluster    {ns}/gpu"]


@pytest.mark.servers  # uses the Prefect API without a server fixture
def test_info_shows_a_tables_schema_and_row_count(cli, tmp_path, unique_name):
    import pyarrow as pa

    import rh_prefect as rh

    name = unique_name("cli-table")
    rh.table(pa.table({"id": [1, 2, 3], "text": ["a", "b", "c"]}), name=name, path=str(tmp_path / "t")).save()
    info = json.loads(cli("info", name).stdout)
    assert (info["name"], info["type"], info["system"], info["row_count"]) == (f"@/{name}", "Table", "file", 3)
    assert "id: int64" in info["table_schema"] and "text: string" in info["table_schema"]


def test_register_lists_every_block_type(cli, prefect_server):
    from rh_prefect.blocks import BLOCK_TYPES

    result = cli("register")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [f"registered {b.get_block_type_slug()}" for b in BLOCK_TYPES]


@pytest.mark.servers  # uses the Prefect API without a server fixture
def test_worker_start_needs_a_saved_cluster(cli):
    assert cli("worker", "start").exit_code == 2
    name = "no-such-cluster-" + uuid.uuid4().hex[:8]
    result = cli("worker", "start", "--cluster", name)
    assert result.exit_code == 1 and result.stderr.startswith(f"rh-prefect: error: No cluster named '{name}' is saved")
    assert f"rh.cluster(name='{name}', host=" in result.stderr  # and how to save one


# --------------------------------------------------------------------------- the embedded server


def test_server_up_status_down(cli, tmp_path, monkeypatch, prefect_server):
    from rh_prefect.runtime import local_server

    monkeypatch.setenv("RH_PREFECT_SERVER_HOME", str(tmp_path / "server"))
    port = free_port()
    result = cli("server", "status")
    assert (result.exit_code, result.stdout) == (1, "not running\n")
    result = cli("server", "up", "--port", str(prefect_server.port))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"rh-prefect: error: Port {prefect_server.port} on 127.0.0.1 is taken")
    try:
        result = cli("server", "up", "--port", str(port))
        assert result.exit_code == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[1].startswith("Prefect profile 'rh-prefect' is now active (it was ")
        assert http_status(f"http://127.0.0.1:{port}/api/health") == 200
        pid = local_server.status().pid
        assert lines[0] == (f"Prefect server running (pid {pid}): UI http://127.0.0.1:{port}, "
                            f"API http://127.0.0.1:{port}/api")
        assert cli("server", "up", "--port", str(port)).stdout.splitlines()[0] == lines[0]  # the same one
        assert cli("server", "status").stdout == (
            f"running (pid {pid}) at http://127.0.0.1:{port}/api, UI http://127.0.0.1:{port}\n")
        assert cli("server", "down").stdout == "stopped\n"
        assert http_status(f"http://127.0.0.1:{port}/api/health", timeout=1) is None
        assert cli("server", "status").exit_code == 1
        assert cli("server", "down").stdout == "no embedded server was running\n"
    finally:
        local_server.down()
