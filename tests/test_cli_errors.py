"""Every CLI command reports a storage problem the same way: one ``rh-prefect: error: ...`` line, exit code 1, no
traceback (``--debug`` adds it). Checked with the exact output, as a user sees it in a shell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra import free_port

BIN = Path(sys.executable).parent / "rh-prefect"


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def no_s3_credentials(s3_server, prefect_server, tmp_path):
    """A shell with the S3 endpoint set but no credentials anywhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL_S3=s3_server.endpoint_url, AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), PREFECT_API_URL=prefect_server.api_url)
    return env


@pytest.mark.parametrize("command", [["ls", "s3://some-bucket/data"], ["cat", "s3://some-bucket/data/a.txt"],
                                     ["rm", "-y", "s3://some-bucket/data"], ["info", "s3://some-bucket/data"]])
def test_s3_without_credentials_is_one_line(no_s3_credentials, s3_server, command):
    done = _cli(command, no_s3_credentials)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"rh-prefect: error: s3 ({s3_server.endpoint_url}) refused access to '{command[-1]}' (NoCredentialsError); "
        "check the credentials (S3Credentials block or environment).\n"
    )


def test_debug_adds_the_traceback(no_s3_credentials):
    done = _cli(["--debug", "ls", "s3://some-bucket/data"], no_s3_credentials)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "NoCredentialsError" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1].startswith("rh-prefect: error: s3 (")


@pytest.mark.parametrize("command", [["ls"], ["cat"], ["rm", "-y"], ["info"]])
def test_ssh_without_network_is_one_line(prefect_server, command, tmp_path):
    port = free_port()  # nothing listens there
    url = f"ssh://nobody@127.0.0.1:{port}/data"
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "known_hosts").write_text("")  # host keys are checked first; here the network fails
    env = {**os.environ, "PREFECT_API_URL": prefect_server.api_url, "HOME": str(tmp_path)}
    done = _cli([*command, url], env)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"rh-prefect: error: cluster (nobody@127.0.0.1:{port}) could not be reached (connection refused: nothing "
        "listens on that port). Is the host up and the port right? Try `cluster.up_if_not()`.\n"
    )
