"""The Prefect UI, in a real browser: rh block types in the catalog, a Folder made through the UI form and used
from Python, secrets masked, and the transfer deployment run from the UI with block pickers.

Headless Chromium from Debian, driven by playwright (see tests/ui_helpers.py). Every request the page makes is
recorded; anything not on 127.0.0.1 is aborted unsent, and the tests assert what tried. Screenshots of a failed
test land in tests/artifacts/ui/ (set RH_UI_SCREENSHOTS=1 to keep one per step of passing tests too).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest
from prefect import flow

import rh_prefect as rh
from helpers import wait_for
from ui_helpers import Browser, api, flow_run_state, is_loopback, off_loop

pytestmark = pytest.mark.slow
KEEP_SHOTS = os.environ.get("RH_UI_SCREENSHOTS") == "1"
PROJECT = Path(__file__).resolve().parents[1]


def ui_name(prefix: str) -> str:
    # Names typed into the UI are plain block names; avoid "-0" (the escape of rh_prefect.names).
    return f"{prefix}-x{uuid.uuid4().hex[:10]}"


@pytest.fixture
def browser(prefect_server, request) -> Iterator[Browser]:
    failed_before = request.session.testsfailed
    b = Browser(prefect_server.ui_url)
    try:
        yield b
    finally:
        # The call phase's report is counted before teardown: a higher count means this test failed.
        if request.session.testsfailed > failed_before:
            path = b.screenshot(f"FAILED-{request.node.name}")
            sys.stderr.write(f"\nscreenshot of the failed page: {path}\n")
        b.close()


def shot(browser: Browser, name: str) -> None:
    if KEEP_SHOTS:
        browser.screenshot(name)


def rh_block_types():
    from rh_prefect.blocks import BLOCK_TYPES

    return BLOCK_TYPES


def prefect_builtin_logos(prefect_server) -> set[str]:
    """Logo URLs of the block types Prefect itself ships (AWS, Slack, ...): they point at the internet."""
    rh_slugs = {b.get_block_type_slug() for b in rh_block_types()}
    types = api(prefect_server.api_url, "POST", "/block_types/filter", {})
    return {t["logo_url"] for t in types if t["slug"] not in rh_slugs and t["logo_url"]}


def assert_nothing_left_loopback(browser: Browser, prefect_server) -> None:
    """No response came from outside 127.0.0.1, and the only requests that tried were for the logos of
    Prefect's own built-in block types (shown in the catalog); they were aborted unsent. Nothing rh_prefect
    puts on a page points outside."""
    assert browser.requests, "the page made no requests at all: the recorder is not working"
    assert browser.responses_from_outside == []
    assert [u for u in browser.websockets if not is_loopback(u)] == []
    foreign = set(browser.blocked) - prefect_builtin_logos(prefect_server)
    assert not foreign, f"requests to outside 127.0.0.1: {sorted(foreign)}"


# --------------------------------------------------------------------------- block types, without a browser


def test_every_block_type_has_name_description_example_and_documented_fields():
    from pydantic import SecretStr

    types = rh_block_types()
    names = {b.__name__ for b in types}
    assert names == {"Folder", "Table", "Blob", "Cluster", "S3Credentials", "GCSCredentials", "GitHubCredentials"}
    for block in types:
        label = block.__name__
        assert block.get_block_type_name().startswith("rh "), label
        assert len(block.get_description() or "") > 20, label
        example = block.get_code_example()
        # Taken from the docstring's "Example:" section, not Prefect's generated `X.load("BLOCK_NAME")`.
        assert example != block._generate_code_example(), label
        assert example.startswith("```python") and "rh_prefect" in example, label
        assert block._logo_url is None, f"{label}: a logo URL would be fetched from the internet"
        schema = block.model_json_schema()
        for field, prop in schema["properties"].items():
            assert prop.get("title"), f"{label}.{field} has no title"
            assert prop.get("description"), f"{label}.{field} has no description"
        secret = {n for n, f in block.model_fields.items()
                  if SecretStr in getattr(f.annotation, "__args__", (f.annotation,))}
        assert secret <= set(schema["secret_fields"]), label
    from rh_prefect import Cluster, GitHubCredentials, S3Credentials

    assert set(S3Credentials.model_json_schema()["secret_fields"]) == {"aws_secret_access_key", "aws_session_token"}
    assert set(GitHubCredentials.model_json_schema()["secret_fields"]) == {"token"}
    assert "ssh_key" in Cluster.model_json_schema()["secret_fields"]


def test_register_commands_register_every_type_and_no_abstract_base(prefect_server):
    from rh_prefect.runtime.registry import Resource
    from rh_prefect.resources.base import StoredResource

    prefect = str(Path(sys.executable).parent / "prefect")
    out = subprocess.run([prefect, "block", "register", "-m", "rh_prefect.blocks"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"Successfully registered {len(rh_block_types())} blocks" in out.stdout
    types = {t["slug"]: t for t in api(prefect_server.api_url, "POST", "/block_types/filter", {})}
    for block in rh_block_types():
        server = types[block.get_block_type_slug()]
        assert server["name"] == block.get_block_type_name()
        assert server["description"] == block.get_description()
        assert server["code_example"] == block.get_code_example()
        assert server["logo_url"] is None
    assert Resource.get_block_type_slug() not in types
    assert StoredResource.get_block_type_slug() not in types
    ours = {b.get_block_type_slug() for b in rh_block_types()}
    assert sorted(s for s in types if s.startswith("rh-")) == sorted(ours)


# --------------------------------------------------------------------------- in the browser


def test_block_catalog_shows_rh_types_with_examples_and_no_internet(browser, prefect_server):
    from rh_prefect.blocks import register_all

    off_loop(register_all)
    browser.goto("/blocks/catalog")
    # The unfiltered catalog shows Prefect's built-in types too, whose logos are internet URLs: the browser
    # tries them, and the recorder stops them (this proves it sees such attempts).
    wait_for(lambda: browser.blocked, 15, "the built-in logos to be requested and stopped", interval=0.2)
    browser.page.get_by_placeholder("Search blocks").fill("rh ")
    for block in rh_block_types():
        heading = browser.page.locator(".block-type-card-preview__name", has_text=re.compile(
            rf"^\s*{re.escape(block.get_block_type_name())}\s*$"))
        card = browser.page.locator(".block-type-card-preview", has=heading)
        assert card.count() == 1, block.get_block_type_name()
        assert (block.get_description() or "")[:30] in card.inner_text()
        assert card.locator("img").count() == 0  # no logo image: the UI draws its own block icon
        assert card.locator(".block-type-card-preview__icon").count() == 1
    shot(browser, "catalog-rh")

    from rh_prefect import Folder, S3Credentials

    for block in (Folder, S3Credentials):  # a type's page shows the example from its docstring
        browser.goto(f"/blocks/catalog/{block.get_block_type_slug()}", idle=False)
        browser.page.get_by_text("Example", exact=True).wait_for()
        line = block.get_code_example().splitlines()[1]
        # the code block is there before its highlighted text: wait for the text, then check it
        code = wait_for(lambda: (t := browser.page.locator("pre, code").first.inner_text()) and line in t and t,
                        15, f"the example of {block.__name__} to show", interval=0.2)
        assert line in code, block.__name__
        shot(browser, f"catalog-{block.get_block_type_slug()}-example")

    types = api(prefect_server.api_url, "POST", "/block_types/filter", {})
    rh_slugs = {b.get_block_type_slug() for b in rh_block_types()}
    assert all(t["logo_url"] is None for t in types if t["slug"] in rh_slugs)
    assert_nothing_left_loopback(browser, prefect_server)  # only those built-in logos tried to leave


def test_create_folder_in_ui_then_use_it_from_python(browser, prefect_server, s3_bucket, s3_env):
    import rh_prefect as rh

    name = ui_name("ui-folder")
    page = browser.page
    browser.goto("/blocks/catalog")
    page.get_by_placeholder("Search blocks").fill("rh folder")
    card = page.locator(".block-type-card-preview", has_text="rh Folder")
    card.get_by_role("button", name="Create").click()
    page.wait_for_url("**/blocks/catalog/rh-folder/create")
    browser.labelled_input("Block Name").fill(name)
    browser.any_of("Path").locator("textarea").fill(f"/{s3_bucket}/from-ui")
    # The system is a choice list, not free text.
    assert browser.choose("System", "s3") == ["file", "s3", "gs", "github", "ssh"]
    browser.any_of("Cluster").get_by_role("button", name="null", exact=True).click()
    browser.any_of("Credentials").get_by_role("button", name="null", exact=True).click()
    shot(browser, "folder-form-filled")
    page.get_by_role("button", name="Create", exact=True).click()
    page.wait_for_url(re.compile(r".*/blocks/block/[0-9a-f-]{36}$"))
    page.get_by_text("Block created successfully").first.wait_for()
    # The block's page lists the saved values (a re-render after the URL changes: wait for the value itself).
    page.get_by_text(f"/{s3_bucket}/from-ui", exact=True).wait_for()
    assert page.get_by_text("s3", exact=True).count() >= 1
    shot(browser, "folder-created")

    def use_it_from_python():
        folder = rh.folder(name=name)  # loads the block the UI saved
        assert type(folder).__name__ == "Folder"
        assert (folder.system, folder.path, folder.url) == ("s3", f"/{s3_bucket}/from-ui", f"s3://{s3_bucket}/from-ui")
        folder.put({"hello.txt": b"made in the UI", "sub/x.bin": bytes(range(256))})
        assert folder.ls(full_paths=False, recursive=True) == ["hello.txt", "sub/x.bin"]
        assert rh.folder(name=name).get("sub/x.bin") == bytes(range(256))
        assert rh.exists(name)

    off_loop(use_it_from_python)
    assert_nothing_left_loopback(browser, prefect_server)


def test_cluster_form_shows_ssh_settings_before_worker_settings(browser, prefect_server):
    page = browser.page
    browser.goto("/blocks/catalog/rh-cluster/create")
    browser.labelled_input("Block Name").wait_for()
    labels = browser.field_labels()
    shot(browser, "cluster-form")
    ssh = ["Host", "Port", "User", "SSH private key", "known_hosts file", "Pinned host key", "Verify host key",
           "Default root"]
    workers = ["Work queue", "Work pool", "prefect executable", "Python", "Working directory", "Prefect API URL"]

    def where(title: str) -> int:
        found = [i for i, text in enumerate(labels) if text.startswith(title)]
        assert found, f"no field {title!r} in {labels}"
        return found[0]

    assert [where(t) for t in ssh] == sorted(where(t) for t in ssh)
    assert max(where(t) for t in ssh) < min(where(t) for t in workers), labels
    assert page.get_by_text("Where resources without a path are stored.").count() >= 1


def test_secret_fields_are_masked_in_the_ui(browser, prefect_server):
    from rh_prefect import S3Credentials

    secret = f"very-secret-{uuid.uuid4().hex}"
    creds = S3Credentials(aws_access_key_id="AKIAUITEST", aws_secret_access_key=secret,
                          endpoint_url="http://127.0.0.1:9")
    off_loop(creds.save, ui_name("ui-creds"))
    browser.goto(f"/blocks/block/{creds._block_document_id}")
    browser.page.get_by_text("AKIAUITEST", exact=True).wait_for()
    assert browser.page.get_by_text(re.compile(r"^\*{8,}$")).count() >= 1  # the secret, masked
    assert secret not in browser.page.content()
    browser.goto(f"/blocks/block/{creds._block_document_id}/edit")
    assert secret not in browser.page.content()
    shot(browser, "credentials-masked")
    assert_nothing_left_loopback(browser, prefect_server)


# --------------------------------------------------------------------------- the transfer deployment


@contextmanager
def process_worker(pool: str, queue: str, log_path: Path) -> Iterator[subprocess.Popen]:
    """A Prefect process worker on this machine (stopped by its process group when done)."""
    env = dict(os.environ, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5")
    cmd = [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", pool, "--work-queue", queue,
           "--type", "process", "--name", f"rh-ui-test-{uuid.uuid4().hex[:6]}"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=PROJECT)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_transfer_deployment_runs_from_ui_with_block_pickers(browser, prefect_server, s3_bucket, s3_env, tmp_path):
    import rh_prefect as rh
    from rh_prefect.resources import remote
    from rh_prefect.runtime import worker

    files = {"a.txt": b"alpha", "nested/b.bin": os.urandom(4096)}
    src_name = ui_name("ui-src")
    run_name = ui_name("ui-run")
    dest = f"/{s3_bucket}/copied-from-ui"
    # The worker starts first: its start-up overlaps with the set-up below.
    with process_worker(worker.DEFAULT_POOL, "default", tmp_path / "worker.log"):
        off_loop(lambda: rh.folder(name=src_name, path=f"/{s3_bucket}/src", system="s3").save().put(files))
        registered = off_loop(remote.register_deployments, worker.DEFAULT_POOL, only=["rh-copy-folder"])
        assert registered == ["rh-copy-folder/rh-transfer"]
        dep = api(prefect_server.api_url, "GET", "/deployments/name/rh-copy-folder/rh-transfer")
        assert (dep["work_pool_name"], dep["work_queue_name"]) == (worker.DEFAULT_POOL, "default")

        page = browser.page
        browser.goto(f"/deployments/deployment/{dep['id']}")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("Custom run").click()
        page.wait_for_url(re.compile(r".*/deployments/deployment/[0-9a-f-]+/run.*"))
        page.wait_for_load_state("networkidle")
        browser.labelled_input("Run Name").fill(run_name)
        browser.pick_block(browser.run_form_property("source"), src_name)
        browser.run_form_property("system").locator("textarea, input").first.fill("s3")
        path_prop = browser.run_form_property("path")
        path_prop.get_by_role("button", name="str", exact=True).click()
        path_prop.locator("textarea, input").first.fill(dest)
        shot(browser, "deployment-run-form")
        page.get_by_role("button", name="Submit", exact=True).click()

        def submitted():
            runs = api(prefect_server.api_url, "POST", "/flow_runs/filter",
                       {"flow_runs": {"name": {"any_": [run_name]}}})
            return runs[0] if runs else None

        try:
            run = wait_for(submitted, 15, f"flow run {run_name} to be created by the UI")
        except AssertionError:
            # The UI shows "Something went wrong" when an API call fails with a 5xx or gets no answer, and then no
            # run may exist; a person presses Submit again. The test does too, unless the server answered the
            # create call: a 4xx (the parameters refused) or a 2xx without the run are failures of the product.
            answered = [a for a in browser.answers if "create_flow_run" in a]
            sent = [u for u in browser.requests if "create_flow_run" in u]
            seen = (f"no flow run; create calls sent {sent}, answered {answered}; failed calls "
                    f"{browser.failed_responses}; console errors {browser.console_errors[-5:]}; page errors "
                    f"{browser.page_errors[-5:]}")
            assert not any(a.startswith(("2", "4")) for a in answered), seen
            shot(browser, "deployment-run-form-first-submit-failed")
            failed = seen
            page.get_by_role("button", name="Submit", exact=True).click()
            run = wait_for(submitted, 30, f"flow run {run_name} after a second Submit (first: {failed})")
        # The picker sends a reference to the saved block (secrets stay on the server), not a copy of it.
        doc = f"/block_types/slug/rh-folder/block_documents/name/{src_name}"
        block_id = api(prefect_server.api_url, "GET", doc)["id"]
        assert run["parameters"]["source"] == {"$ref": {"block_document_id": block_id}}
        assert run["parameters"]["path"] == dest
        state = wait_for(lambda: (s := flow_run_state(prefect_server.api_url, run["id"])) in
                         ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and s, 120, "the flow run to finish")
        assert state == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]

    def landed():
        copied = rh.folder(path=dest, system="s3")
        return copied.ls(full_paths=False, recursive=True), {k: copied.get(k) for k in files}

    assert off_loop(landed) == (sorted(files), files)

    browser.goto(f"/runs/flow-run/{run['id']}")
    page.get_by_text("Completed").first.wait_for()
    page.get_by_text("Artifacts", exact=True).first.click()
    # The copy's artifacts (issue point 3): a progress artifact and the markdown summary; open the summary.
    page.get_by_text(re.compile(r"^\s*progress\s*$", re.I)).first.wait_for()
    shot(browser, "deployment-run-completed")
    page.get_by_text(re.compile(r"^\s*markdown\s*$", re.I)).first.click()
    page.get_by_text("files copied").first.wait_for()
    assert page.get_by_role("cell", name="2", exact=True).count() >= 1  # files copied: 2
    shot(browser, "deployment-run-summary-artifact")
    assert_nothing_left_loopback(browser, prefect_server)


# --------------------------------------------------------------------------- an on_update automation


@flow(name="rh-ui-on-update")
def fine_tune(table: rh.Table, version: Optional[str] = None, note: str = "") -> Optional[str]:
    """The flow an on_update automation runs (never run here)."""
    return version


def test_on_update_automation_is_listed_and_edited_in_the_ui(browser, prefect_server, tmp_path):
    import pyarrow as pa

    table_name = f"/ds/{ui_name('ui-trig')}"

    def make():
        dep_name = f"{fine_tune.name}/{ui_name('dep')}"
        fine_tune.to_deployment(name=dep_name.split("/")[1]).apply()  # Prefect's default: parameters enforced
        table = rh.table(data=pa.table({"a": [1]}), name=table_name, path=tmp_path / "t").save()
        return table, rh.on_update(table_name, deployment=dep_name, parameters={"note": "from python"})

    table, auto = off_loop(make)
    page = browser.page
    browser.goto("/automations", idle=False)  # listed by name, with what it does
    page.get_by_text(auto.description, exact=True).first.wait_for()
    shot(browser, "automations-list")
    page.get_by_role("link", name=auto.name, exact=True).click()
    page.wait_for_url(f"**/automations/automation/{auto.id}")

    browser.goto(f"/automations/automation/{auto.id}/edit", idle=False)
    page.get_by_text("rh.resource.written", exact=True).first.wait_for()  # the trigger: event and resource
    page.get_by_text(f"rh.table.{table_name}", exact=True).first.wait_for()
    shot(browser, "automation-edit-trigger")
    page.get_by_role("button", name="Next", exact=True).click()
    page.get_by_text("Run a deployment").first.wait_for()  # the action, with the table picked by reference
    assert browser.run_form_property("table").get_by_text(table.document_name).count() >= 1
    assert browser.run_form_property("version").get_by_text('{{ event.resource["rh.version"] }}').count() >= 1
    browser.run_form_property("note").locator("textarea, input").first.fill("edited in the UI")
    shot(browser, "automation-edit-action")
    page.get_by_role("button", name="Next", exact=True).click()
    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url(re.compile(r".*/automations$"))

    saved = api(prefect_server.api_url, "GET", f"/automations/{auto.id}")
    assert saved["actions"][0]["parameters"] == {
        "note": "edited in the UI",
        "table": {"$ref": {"block_document_id": str(table._block_document_id)}},
        "version": {"__prefect_kind": "jinja", "template": '{{ event.resource["rh.version"] }}'},
    }
    assert saved["trigger"]["match"] == {"prefect.resource.id": f"rh.table.{table_name}"}
    off_loop(auto.delete)
    off_loop(rh.delete, table_name)
    assert_nothing_left_loopback(browser, prefect_server)
