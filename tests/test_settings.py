"""rh_prefect.settings: tuning values from RH_PREFECT_* environment variables, and override() for a block of code.

No server: part of the fast tier (``-m "not servers"``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
from pydantic import ValidationError

from rh_prefect import settings
from rh_prefect.settings import Settings


def _in_a_fresh_process(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter with only ``env`` for RH_PREFECT_* variables: settings are read once per
    process, at first use."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RH_PREFECT_")}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          timeout=60)


def test_an_environment_variable_sets_a_value_for_the_process():
    probe = "from rh_prefect import settings; s = settings.current(); print(s.connect_timeout, s.retries)"
    assert _in_a_fresh_process(probe).stdout.split() == ["10.0", "4"]  # the defaults
    done = _in_a_fresh_process(probe, RH_PREFECT_CONNECT_TIMEOUT="2.5", RH_PREFECT_RETRIES="0")
    assert done.stdout.split() == ["2.5", "0"], done.stderr


def test_an_invalid_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("RH_PREFECT_CONNECT_TIMEOUT", "soon")
    with pytest.raises(ValidationError, match="connect_timeout"):
        Settings()
    monkeypatch.setenv("RH_PREFECT_CONNECT_TIMEOUT", "0")  # a deadline must be positive
    with pytest.raises(ValidationError, match="connect_timeout"):
        Settings()


def test_override_applies_inside_the_block_to_every_thread_and_restores_after():
    before = settings.current()
    seen_by_thread = []
    with settings.override(connect_timeout=3, upload_parts_in_flight=2) as inside:
        assert settings.current() is inside
        assert (inside.connect_timeout, inside.upload_parts_in_flight) == (3.0, 2)
        assert inside.request_deadline == before.request_deadline  # the others keep their values
        worker = threading.Thread(target=lambda: seen_by_thread.append(settings.current().connect_timeout))
        worker.start()
        worker.join()
    assert seen_by_thread == [3.0]  # process-wide, not per thread
    assert settings.current() is before


def test_override_restores_after_an_error_and_nests():
    before = settings.current()
    with pytest.raises(RuntimeError, match="inside"):
        with settings.override(retries=0):
            with settings.override(task_timeout=5):
                assert (settings.current().retries, settings.current().task_timeout) == (0, 5.0)
            assert (settings.current().retries, settings.current().task_timeout) == (0, before.task_timeout)
            raise RuntimeError("inside")
    assert settings.current() is before


def test_an_unknown_name_is_refused_and_changes_nothing():
    before = settings.current()
    with pytest.raises(AttributeError, match="no setting connect_timout"):
        with settings.override(connect_timout=3, retries=0):
            pytest.fail("the block must not run")
    assert settings.current() is before


@pytest.mark.parametrize("values", [{"connect_timeout": -1}, {"upload_part": 2**20}, {"retries": "many"}],
                         ids=["negative deadline", "S3 part below 5 MiB", "not a number"])
def test_an_invalid_value_is_refused_and_changes_nothing(values):
    before = settings.current()
    with pytest.raises(ValidationError, match=next(iter(values))):
        with settings.override(**values):
            pytest.fail("the block must not run")
    assert settings.current() is before


def test_readme_lists_every_setting_with_its_default():
    """README's Settings table is `python -m rh_prefect.settings`: a new or changed setting must show there."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert settings.markdown_table() in readme, "regenerate README's Settings table: python -m rh_prefect.settings"
