"""``rh-prefect``: the command line.

Arguments that name data accept a saved resource name (``my-folder``, ``/ds/bert_preproc``) or a URL
(``s3://bucket/key``, ``gs://bucket/key``, ``ssh://user@host:22/path``, ``ssh://rh-cpu/path`` for a saved
cluster, ``github://org/repo@ref/dir``, or a local path). Errors go to stderr with exit code 1; usage errors
exit with 2.
"""

from __future__ import annotations

import json
import os
import posixpath
import sys
from typing import Any, Optional

import typer

from rh_prefect import local_server

app = typer.Typer(
    name="rh-prefect",
    help="Store, list and move data between local disk, SSH clusters, S3, GCS and GitHub, named in Prefect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
server_app = typer.Typer(help="The embedded local Prefect server (SQLite, 127.0.0.1).", no_args_is_help=True)
worker_app = typer.Typer(help="Prefect workers on clusters.", no_args_is_help=True)
app.add_typer(server_app, name="server")
app.add_typer(worker_app, name="worker")


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"rh-prefect: error: {message}", err=True)
    raise typer.Exit(code)


@app.callback()
def _main(ctx: typer.Context) -> None:
    # Everything but `server` talks to the registry: pick the Prefect server before prefect is imported.
    if ctx.invoked_subcommand not in (None, "server"):
        # Prefect's per-task INFO lines are noise on a command line; results are printed by the commands.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        local_server.ensure()


def _resolve(target: str) -> tuple[Any, str, Any]:
    """``(System, fs path, resource or None)`` for a name or URL."""
    from rh_prefect import names, registry
    from rh_prefect.errors import InvalidName
    from rh_prefect.systems import from_url

    if "://" not in target:
        try:
            rname = names.parse(target)
        except InvalidName:  # not a valid name: it can only be a path
            rname = None
        if rname is not None and registry.exists(target):
            res = registry.load(target)
            if not hasattr(res, "fs_path"):
                _fail(f"{target!r} is a {type(res).__name__}, which holds no data.")
            return res.sys, res.fs_path, res
    system, path = from_url(target)
    return system, system.fs_path(path), None


def _run(fn: Any) -> Any:
    from rh_prefect.errors import RhError

    try:
        return fn()
    except RhError as exc:
        _fail(str(exc))
    except FileNotFoundError as exc:
        _fail(f"not found: {exc}")


@app.command()
def ls(
    target: str = typer.Argument(..., help="A saved name or a URL."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="List every file below, not just the top."),
    long: bool = typer.Option(False, "--long", "-l", help="Show sizes."),
) -> None:
    """List a folder.

    Example: rh-prefect ls s3://my-bucket/data -r
    """
    from rh_prefect import transfer

    def go() -> None:
        system, root, _ = _resolve(target)
        if recursive:
            entries = sorted(transfer.list_files(system, root).items())
        else:
            entries = []
            for info in system.fs.ls(root, detail=True):
                base = posixpath.basename(info["name"].rstrip("/"))
                if base and not system.is_temp_name(base):
                    entries.append((base + ("/" if info.get("type") == "directory" else ""), info))
            entries.sort(key=lambda e: e[0])
        for key, info in entries:
            typer.echo(f"{int(info.get('size') or 0):>12}  {key}" if long else key)

    _run(go)


@app.command()
def cp(
    src: str = typer.Argument(..., help="Source: a saved name or a URL (folder or file)."),
    dst: str = typer.Argument(..., help="Destination URL (or saved folder name)."),
    overwrite: bool = typer.Option(True, help="Replace changed files at the destination."),
) -> None:
    """Copy a folder or a file between any two systems (unchanged files are skipped).

    Example: rh-prefect cp ./data s3://my-bucket/data
    """
    from rh_prefect import tasks

    def go() -> None:
        s_sys, s_path, _ = _resolve(src)
        d_sys, d_path, _ = _resolve(dst)
        d_sys.ensure_container(d_path)
        if s_sys.fs.isfile(s_path):
            if dst.endswith("/") or d_sys.fs.isdir(d_path):
                d_path = posixpath.join(d_path, posixpath.basename(s_path))
            tasks.run(tasks.copy_file_task, s_sys, s_path, d_sys, d_path)
            typer.echo(f"copied 1 file to {d_sys.describe()}:{d_path}")
            return
        report = tasks.run(tasks.copy_tree_task, s_sys, s_path, d_sys, d_path, overwrite=overwrite)
        typer.echo(report.summary())

    _run(go)


@app.command()
def cat(target: str = typer.Argument(..., help="A file URL or a saved Blob name.")) -> None:
    """Write a file's bytes to stdout, streaming.

    Example: rh-prefect cat s3://my-bucket/data/a.txt
    """
    from rh_prefect import transfer

    def go() -> None:
        system, path, _ = _resolve(target)
        out = sys.stdout.buffer
        with system.fs.open(path, "rb", block_size=transfer.CHUNK_SIZE) as f:
            while chunk := f.read(transfer.CHUNK_SIZE):
                out.write(chunk)
        out.flush()

    _run(go)


@app.command()
def rm(
    target: str = typer.Argument(..., help="A saved name or a URL."),
    keep_data: bool = typer.Option(False, "--keep-data", help="For a saved name: forget the name, keep the data."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete data (and, for a saved name, its registry entry).

    Example: rh-prefect rm s3://my-bucket/tmp -y
    """
    from rh_prefect import registry

    def go() -> None:
        system, path, res = _resolve(target)
        what = f"{target} ({system.describe()}:{path})"
        if not keep_data and not yes and not typer.confirm(f"Delete {what}?"):
            raise typer.Exit(1)
        if not keep_data:
            system.check_writable(path)
            if system.fs.exists(path):
                system.fs.rm(path, recursive=True)
        if res is not None:
            registry.delete(target)
        typer.echo(f"removed {what}" if not keep_data else f"forgot {target}; data kept at {system.url(path)}")

    _run(go)


@app.command()
def info(name: str = typer.Argument(..., help="A saved resource name.")) -> None:
    """What the registry knows about a resource: type, system, path, size, schema.

    Example: rh-prefect info my-folder
    """
    from rh_prefect import registry

    def go() -> None:
        res = registry.load(name)
        data: dict[str, Any] = {"name": name, "type": type(res).__name__, "block": res._block_document_name}
        data.update(res.model_dump(mode="json", exclude={"cluster", "credentials"}))
        if getattr(res, "cluster", None) is not None:
            data["cluster"] = res.cluster.name or f"{res.cluster.host}:{res.cluster.port}"
        if hasattr(res, "url"):
            data["url"] = res.url
        typer.echo(json.dumps(data, indent=2, default=str))

    _run(go)


@app.command("list")
def list_(
    namespace: Optional[str] = typer.Argument(None, help="Only names inside this namespace, e.g. /ds."),
    recursive: bool = typer.Option(False, "--recursive", "-r"),
) -> None:
    """List saved resources.

    Example: rh-prefect list /ds
    """
    from rh_prefect import registry

    def go() -> None:
        for full, kind in registry.list_names(namespace, recursive=recursive or namespace is None):
            typer.echo(f"{kind:<10} {full}")

    _run(go)


@app.command()
def register() -> None:
    """Register the block types (Folder, Table, Blob, Cluster, credentials) with the Prefect server.

    Example: rh-prefect register
    """
    from rh_prefect.blocks import register_all

    for slug in _run(register_all):
        typer.echo(f"registered {slug}")


@server_app.command("up")
def server_up(port: int = typer.Option(local_server.DEFAULT_PORT, help="Port on 127.0.0.1.")) -> None:
    """Start the embedded Prefect server in the background (or show the running one).

    Example: rh-prefect server up && export PREFECT_API_URL=http://127.0.0.1:4200/api
    """
    info_ = _run(lambda: local_server.up(port=port))
    typer.echo(f"Prefect server running (pid {info_.pid}): UI {info_.ui_url}")
    typer.echo(f"export PREFECT_API_URL={info_.api_url}")


@server_app.command("down")
def server_down() -> None:
    """Stop the embedded Prefect server.

    Example: rh-prefect server down
    """
    typer.echo("stopped" if local_server.down() else "no embedded server was running")


@server_app.command("status")
def server_status() -> None:
    """Show whether the embedded Prefect server runs; exit 1 if not.

    Example: rh-prefect server status
    """
    info_ = local_server.status()
    if info_ is None:
        typer.echo("not running")
        raise typer.Exit(1)
    typer.echo(f"running (pid {info_.pid}) at {info_.api_url}")


@worker_app.command("start")
def worker_start(cluster: str = typer.Option(..., "--cluster", "-c", help="Name of a saved Cluster.")) -> None:
    """Start a Prefect worker for the cluster's work queue on the cluster itself (over SSH).

    Example: rh-prefect worker start --cluster rh-cpu
    """
    from rh_prefect.systems.ssh import Cluster

    def go() -> None:
        c = Cluster._load_named(cluster)
        if not hasattr(c, "start_worker"):
            _fail("this version cannot start workers on clusters.")
        typer.echo(str(c.start_worker()))

    _run(go)


if __name__ == "__main__":  # pragma: no cover
    app()
