"""The README's examples run, so the README cannot drift from the code.

The convention (stated in the README, "Concepts"):

* every ```` ```python ```` block of README.md runs, in a fresh namespace with ``rh`` (rh_prefect) imported and
  in a fresh temporary working directory;
* ``<!-- needs: cluster, s3, gs:other-bucket -->`` on the line before a block: the test servers stand in for
  what it names - ``cluster`` the suite's sshd saved as ``rh-cpu``; ``s3`` / ``gs`` credentials in the
  environment pointing at the suite's S3 / GCS server; ``s3:NAME`` / ``gs:NAME`` also an empty bucket ``NAME``
  (the reader's own bucket). A block without the line gets no servers and no credentials;
* ``<!-- not-run: reason -->``: the block is shown, not run (e.g. it needs a real remote host and its worker);
* ``<!-- continues; needs: ... -->``: the block goes on from the block above (its names are defined there), so it
  runs after it, in the same namespace and working directory, as one test;
* ``<!-- file: NAME.py -->``: the block is a file of the reader's project (a flow to deploy): it is written to
  ``NAME.py`` in the working directory of its chain, not run; the blocks that continue it use the file;
* a statement alone on its line whose comment is a Python literal must give that value
  (``f.get("a.txt")  # b'hello'``; for ``print(x)``, what it prints); one whose comment starts with an error
  name and a colon must raise that error (``f.put(...)  # AlreadyExists: ...``).

Buckets and registry names a block creates are removed afterwards.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import rh_prefect as rh

README = Path(__file__).resolve().parents[1] / "README.md"
_NO_CHECK = object()


@dataclass
class Block:
    line: int  # README line of the block's first code line
    code: str
    needs: set[str] = field(default_factory=set)  # "cluster", "s3", "gs"
    buckets: list[tuple[str, str]] = field(default_factory=list)  # (store, bucket) to create
    not_run: str | None = None
    continues: bool = False
    file: str | None = None  # written to this file name instead of run


@dataclass
class Chain:
    """A block and the blocks that continue it: one test, one namespace."""

    blocks: list[Block]

    @property
    def line(self) -> int:
        return self.blocks[0].line

    @property
    def not_run(self) -> str | None:
        return self.blocks[0].not_run

    @property
    def needs(self) -> set[str]:
        return set().union(*(b.needs for b in self.blocks))

    @property
    def buckets(self) -> list[tuple[str, str]]:
        return [bucket for b in self.blocks for bucket in b.buckets]


def readme_blocks() -> list[Block]:
    lines = README.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```python":
            i += 1
            continue
        marker = lines[i - 1].strip() if i else ""
        start, body = i + 1, []
        i += 1
        while lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        block = Block(start + 1, "\n".join(body))
        if m := re.fullmatch(r"<!--\s*(.*?)\s*-->", marker):
            text = m.group(1)
            if "not-run:" in text:  # the reason is free text, to the end of the marker
                text, _, reason = text.partition("not-run:")
                block.not_run = reason.strip()
            for part in filter(None, (p.strip() for p in text.split(";"))):
                key, _, value = part.partition(":")
                if key == "continues" and not value:
                    block.continues = True
                elif key == "file" and re.fullmatch(r"\s*[A-Za-z_][A-Za-z0-9_]*\.py\s*", value):
                    block.file = value.strip()
                elif key == "needs":
                    for item in filter(None, re.split(r"[,\s]+", value)):
                        store, _, bucket = item.partition(":")
                        assert store in ("cluster", "s3", "gs"), f"README.md:{start}: unknown need {item!r}"
                        block.needs.add(store)
                        if bucket:
                            block.buckets.append((store, bucket))
                else:
                    raise AssertionError(f"README.md:{start - 1}: unknown marker {part!r}")
        blocks.append(block)
    return blocks


def readme_chains() -> list[Chain]:
    chains: list[Chain] = []
    for block in readme_blocks():
        if block.continues:
            assert chains, f"README.md:{block.line}: the first block cannot continue another"
            chains[-1].blocks.append(block)
        else:
            chains.append(Chain([block]))
    return chains


BLOCKS = readme_blocks()
CHAINS = readme_chains()
#: the chains that run; a block marked not-run is shown to readers only, and test_the_convention_finds_the_blocks
#: checks that it says why
RUN = [c for c in CHAINS if not c.not_run]


def comments_by_line(code: str) -> dict[int, str]:
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def expectation(comment: str | None):
    """(error class or None, expected value or _NO_CHECK) that a statement's trailing comment states."""
    if not comment:
        return None, _NO_CHECK
    if m := re.match(r"([A-Z][A-Za-z]+):", comment):
        error = getattr(rh, m.group(1), None)
        if isinstance(error, type) and issubclass(error, rh.RhError):
            return error, _NO_CHECK
    try:
        return None, ast.literal_eval(comment)
    except (ValueError, SyntaxError):
        return None, _NO_CHECK  # prose, not a value


def run_block(block: Block, namespace: dict) -> int:
    """Run ``block`` statement by statement in ``namespace``, checking what the comments state; returns the checks
    made."""
    tree = ast.parse(block.code)
    comments = comments_by_line(block.code)
    lines_used: dict[int, int] = {}
    for stmt in tree.body:
        for n in range(stmt.lineno, stmt.end_lineno + 1):
            lines_used[n] = lines_used.get(n, 0) + 1
    checks = 0
    for stmt in tree.body:
        where = f"README.md:{block.line + stmt.lineno - 1}"
        alone = lines_used[stmt.end_lineno] == 1 and not isinstance(stmt, (ast.With, ast.For, ast.If))
        error, expected = expectation(comments.get(stmt.end_lineno) if alone else None)
        code = compile(ast.Module([stmt], []), where, "exec")
        if error is not None:
            with pytest.raises(error):
                exec(code, namespace)
            checks += 1
            continue
        if expected is _NO_CHECK or not isinstance(stmt, ast.Expr):
            exec(code, namespace)
            continue
        call = stmt.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "print":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(code, namespace)
            assert out.getvalue().rstrip("\n") == str(expected), f"{where}: printed {out.getvalue()!r}"
        else:
            value = eval(compile(ast.Expression(call), where, "eval"), namespace)
            assert value == expected, f"{where}: got {value!r}, the README says {expected!r}"
        checks += 1
    return checks


def _bucket_fs(request, store: str):
    if store == "s3":
        import s3fs

        server = request.getfixturevalue("s3_server")
        return s3fs.S3FileSystem(key=server.access_key, secret=server.secret_key, endpoint_url=server.endpoint_url,
                                 skip_instance_cache=True)
    import gcsfs

    server = request.getfixturevalue("gcs_server")
    return gcsfs.GCSFileSystem(endpoint_url=server.endpoint_url, token="anon", project="test",
                               skip_instance_cache=True)


def _buckets(fs) -> set[str]:
    fs.invalidate_cache()
    return {b.rstrip("/") for b in fs.ls("")}


@pytest.mark.servers  # the Prefect server always; the others through getfixturevalue, as the block's marker asks
@pytest.mark.parametrize("block", RUN, ids=[f"line{c.line}" for c in RUN])
def test_readme_block_runs(block, request, tmp_path, monkeypatch):
    if "cluster" in block.needs:
        request.getfixturevalue("rh_cpu")
    stores = {}
    for store, env_fixture in (("s3", "s3_env"), ("gs", "gcs_env")):
        if store in block.needs:
            request.getfixturevalue(env_fixture)
            stores[store] = _bucket_fs(request, store)
    before = {store: _buckets(fs) for store, fs in stores.items()}
    for store, bucket in block.buckets:
        assert bucket not in before[store], f"bucket {bucket} exists already"
        stores[store].mkdir(bucket)
    names_before = set(rh.list_names())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"rh": rh}
    try:
        for part in block.blocks:
            if part.file:
                ast.parse(part.code)  # the reader's file must at least be Python
                (tmp_path / part.file).write_text(part.code + "\n")
            else:
                run_block(part, namespace)
    finally:
        for full, _kind in set(rh.list_names()) - names_before:
            rh.delete(full)
        for store, fs in stores.items():
            for bucket in _buckets(fs) - before[store]:
                fs.rm(bucket, recursive=True)


def test_the_convention_finds_the_blocks():
    """Blocks are found, and a block that is not run says why."""
    assert len(BLOCKS) >= 5 and any(not b.not_run for b in BLOCKS)
    assert all(b.not_run.strip() for b in BLOCKS if b.not_run is not None)
    assert all(not b.not_run for c in CHAINS for b in c.blocks[1:]), "a continuing block cannot skip on its own"
