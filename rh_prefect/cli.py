"""``rh-prefect``: the command line.

Arguments that name data accept a saved resource name (``my-folder``, ``/ds/bert_preproc``) or a URL
(``s3://bucket/key``, ``gs://bucket/key``, ``ssh://user@host:22/path``, ``ssh://rh-cpu/path`` for a saved
cluster, ``github://org/repo@ref/dir``, or a local path). Results go to stdout; errors go to stderr as
``rh-prefect: error: ...`` with exit code 1; usage errors exit with 2.

Commands that touch the registry need a Prefect server: ``PREFECT_API_URL`` (environment or the active Prefect
profile) if set, else the embedded local server, started on first use (``rh-prefect server up``).

``ls``, ``cat`` and ``cp`` of URLs and local paths start without Prefect: importing it costs about a second, more
than a small copy takes, and moving or listing bytes needs none of it. Only a saved name (a Folder's, or a Cluster's
in ``ssh://NAME/...``) makes them load Prefect, to ask the registry. A copy still becomes a Prefect task run
(``rh-copy-tree`` / ``rh-copy-file``): the engine runs first, under the same retry policy, and the run is recorded
with its real times and outcome once it ended (:mod:`rh_prefect.runtime.deferred`), from a detached process
when Prefect is not loaded here, so the command returns at once.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import sys
from typing import Any, Callable, NoReturn, Optional, TypeVar

import typer

from rh_prefect.runtime import local_server

T = TypeVar("T")

app = typer.Typer(
    name="rh-prefect",
    help="Store, list and move data between local disk, SSH clusters, S3, GCS and GitHub, named in Prefect.\n\n"
    "Example: rh-prefect cp ./data s3://my-bucket/data && rh-prefect ls s3://my-bucket/data",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
server_app = typer.Typer(help="The embedded local Prefect server (SQLite, 127.0.0.1).\n\n"
                         "Example: rh-prefect server up", no_args_is_help=True)
worker_app = typer.Typer(help="Prefect workers on clusters.\n\nExample: rh-prefect worker start --cluster rh-cpu",
                         no_args_is_help=True)
app.add_typer(server_app, name="server")
app.add_typer(worker_app, name="worker")


def _version(value: bool) -> None:
    if value:
        from rh_prefect import __version__

        typer.echo(f"rh-prefect {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version of rh-prefect and exit."),
    debug: bool = typer.Option(False, "--debug", help="On an error, also print its traceback."),
) -> None:
    """Store, list and move data between local disk, SSH clusters, S3, GCS and GitHub, named in Prefect."""
    global _DEBUG
    _DEBUG = debug
    _SYSTEMS.clear()

TARGET = "NAME_OR_URL"


#: set by --debug: errors also print their traceback
_DEBUG = False
#: the systems this command resolved its targets to (their errors are translated into rh-prefect's own)
_SYSTEMS: list[Any] = []


def _fail(message: str, code: int = 1) -> NoReturn:
    if _DEBUG and sys.exc_info()[0] is not None:
        import traceback

        traceback.print_exc()
    typer.echo(f"rh-prefect: error: {message}", err=True)
    raise typer.Exit(code)


def _connect() -> None:
    """Pick the Prefect server before prefect is first imported (it reads its settings once, at import)."""
    # Prefect's per-task INFO lines are noise on a command line; results are printed by the commands.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    local_server.ensure()


def _os_message(exc: OSError) -> str:
    if exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc.args[0]) if len(exc.args) == 1 else str(exc)


def _run(fn: Callable[[], T], target: Optional[str] = None, connect: bool = True) -> T:
    """Run a command body; known errors become one ``rh-prefect: error:`` line and exit code 1.

    Anything else is a bug and keeps its traceback. Modules that import prefect are imported inside ``fn``,
    after :func:`_connect` (``connect=False``: the body calls it itself, only if it needs the registry).
    """
    from rh_prefect.errors import RhError

    # gcsfs logs each request it gives up on at ERROR, with its traceback, before raising: the error is reported
    # below, once, as one line
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    try:
        if connect:
            _connect()
        return fn()
    except RhError as exc:
        _fail(str(exc))
    except FileNotFoundError as exc:
        detail = _os_message(exc)
        if target is None or detail.strip("/") in (target.strip("/"), target.split("://")[-1].strip("/")):
            _fail(f"not found: {target or detail}")
        _fail(f"not found: {target} ({detail})")
    except OSError as exc:  # permissions, a directory where a file was expected, a refused connection
        _fail(_os_message(exc))
    except Exception as exc:  # a storage client's own error (botocore, gcsfs, asyncssh): the system says what it is
        for system in _SYSTEMS:
            mapped = system.translate(exc, target or "this command")
            if mapped is not None:
                _fail(str(mapped))
        raise  # not a storage error we know: a bug, with its traceback


def _may_be_saved(target: str) -> bool:
    """Whether ``target`` may be a saved name, which only the registry can tell (and asking it loads Prefect).

    Not a name: a URL, anything that is not a valid name (``./data``, ``~/data``, ``data/``), and an absolute path
    that exists on this machine, or whose parent directory does (a copy's new destination): ``/tmp/x`` is a path,
    even if a resource named ``/tmp/x`` was saved. Bare names (``my-folder``, which may also be a local directory)
    and namespaced names that are not paths here (``/ds/bert_preproc``) are asked for.
    """
    from rh_prefect import names
    from rh_prefect.errors import InvalidName

    if "://" in target:
        return False
    try:
        names.parse(target)
    except InvalidName:  # not a valid name: it can only be a path
        return False
    if target.startswith("/"):
        return not (os.path.exists(target) or os.path.isdir(os.path.dirname(target.rstrip("/"))))
    return True


def _resolve(target: str) -> tuple[Any, str, Any]:
    """``(System, fs path, resource or None)`` for a saved name or a URL / local path."""
    from rh_prefect.systems import from_url

    if _may_be_saved(target):
        _connect()
        from rh_prefect.runtime import registry

        if registry.exists(target):
            res = registry.load(target)
            if not hasattr(res, "fs_path"):
                _fail(f"{target!r} is a {type(res).__name__}, which holds no data; pass a folder, table or blob.")
            _SYSTEMS.append(res.sys)
            return res.sys, res.fs_path, res
    system, path = from_url(target, cluster=_saved_cluster(target))
    _SYSTEMS.append(system)
    return system, system.fs_path(path), None


def _saved_cluster(url: str) -> Any:
    """The saved Cluster an ``ssh://NAME/path`` URL names (no user or port given, NAME saved), else None.

    A NAME that is neither a saved cluster nor a host name that resolves is an error saying so, not a failed
    connection to a host called NAME."""
    import socket
    from urllib.parse import urlsplit

    if not url.startswith(("ssh://", "sftp://")):
        return None
    parts = urlsplit(url)
    if not parts.hostname or parts.username or parts.port:
        return None
    _connect()
    from rh_prefect.errors import NotFound
    from rh_prefect.resources.cluster import Cluster
    from rh_prefect.runtime import registry

    if registry.exists(parts.hostname):
        found = registry.load(parts.hostname)
        if isinstance(found, Cluster):
            return found
    try:
        socket.getaddrinfo(parts.hostname, 22)
    except OSError:
        raise NotFound(
            f"No cluster named {parts.hostname!r} is saved (and it is not a host name that resolves). Save one "
            f"with rh.cluster(name={parts.hostname!r}, host=..., user=...).save(), or give the host as "
            f"ssh://user@host:port/path."
        ) from None
    return None


@app.command()
def ls(
    target: str = typer.Argument(..., metavar=TARGET, help="A saved name or a URL."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="List every file below, not just the top."),
    long: bool = typer.Option(False, "--long", "-l", help="Show sizes in bytes."),
) -> None:
    """List a folder (directories end with '/').

    Example: rh-prefect ls s3://my-bucket/data -r -l
    """
    def go() -> None:
        from rh_prefect import transfer

        system, root, _ = _resolve(target)
        if recursive:
            entries = sorted(transfer.list_files(system, root).items())
            if not entries and not system.exists(root):
                raise FileNotFoundError(target)
        else:
            entries = []
            for info in system.ls(root):
                base = posixpath.basename(info["name"].rstrip("/"))
                if base and not system.is_temp_name(base):
                    entries.append((base + ("/" if info.get("type") == "directory" else ""), info))
            entries.sort(key=lambda e: e[0])
        for key, info in entries:
            typer.echo(f"{int(info.get('size') or 0):>12}  {key}" if long else key)

    _run(go, target, connect=False)


@app.command()
def cp(
    src: str = typer.Argument(..., metavar="SRC", help="Source: a saved name or a URL (folder or file)."),
    dst: str = typer.Argument(..., metavar="DST", help="Destination: a URL, a local path or a saved folder name."),
    overwrite: bool = typer.Option(True, help="Replace changed files at the destination."),
) -> None:
    """Copy a folder's contents, or one file, between any two systems. Unchanged files are skipped.

    A folder's files land directly under DST. A file lands at DST, or inside DST when DST ends with '/' or is
    an existing folder. Buckets must exist.

    Example: rh-prefect cp ./data s3://my-bucket/data
    """
    def go() -> None:
        from rh_prefect import transfer
        from rh_prefect.runtime import deferred

        s_sys, s_path, s_res = _resolve(src)
        d_sys, d_path, d_res = _resolve(dst)
        d_sys.check_writable(d_path)
        d_sys.ensure_container(d_path)
        systems = (s_sys, d_sys)
        if s_sys.fs.isfile(s_path):
            if dst.endswith("/") or d_sys.fs.isdir(d_path):
                d_path = posixpath.join(d_path, posixpath.basename(s_path))
            d_sys.makedirs(posixpath.dirname(d_path))
            where = d_sys.url(d_sys.user_path(d_path))
            # the engine now, the task run recorded when it ended (see the module docstring)
            deferred.run("rh-copy-file", transfer.copy_one, s_sys, s_path, d_sys, d_path, systems=systems,
                         what=f"{s_sys.url(s_sys.user_path(s_path))} -> {where}", summary=lambda n: "copied 1 file")
            _announce_cp(s_res, d_res, where)
            typer.echo(f"copied 1 file to {where}")
            return
        label = f"copy {s_sys.describe()} -> {d_sys.describe()}"
        # the run's message says what went where (the systems' URLs: never a secret)
        route = f"{s_sys.url(s_sys.user_path(s_path))} -> {d_sys.url(d_sys.user_path(d_path))}"
        report = deferred.run("rh-copy-tree", transfer.copy_tree, s_sys, s_path, d_sys, d_path, overwrite=overwrite,
                              what=route, systems=systems, summary=transfer.CopyReport.summary,
                              artifact=lambda r: {"markdown": r.markdown(label), "description": label})
        _announce_cp(s_res, d_res, d_sys.url(d_sys.user_path(d_path)))
        typer.echo(report.summary())

    _run(go, connect=False)


def _announce_cp(s_res: Any, d_res: Any, d_url: str) -> None:
    """The lineage events of a ``cp`` with a saved name on either side (see rh_prefect.runtime.events): copied, and
    written too when the destination is a saved name. A copy between two URLs names no resource: no event."""
    if s_res is None and d_res is None:
        return  # and Prefect is not imported
    from rh_prefect.runtime import events

    source = s_res.event_resource() if s_res is not None else None
    if d_res is not None:
        dest = d_res.event_resource()
    else:
        dest = events.resource(source[events.LABEL_TYPE], None, d_url, source[events.LABEL_VERSION] or None)
    related = [events.as_related(source, events.ROLE_SOURCE)] if source is not None else []
    for res in (s_res, d_res):
        if res is not None:
            related += res.cluster_related()
    events.emit(events.COPIED, dest, related, {"by": "rh-prefect cp"})
    if d_res is not None:
        events.emit(events.WRITTEN, dest, related, {"by": "rh-prefect cp"})


@app.command()
def lineage(
    name: str = typer.Argument(..., metavar="NAME", help="A saved folder, table or blob."),
    version: Optional[str] = typer.Option(None, "--version", "-v", help="Another kept version than the current one."),
    depth: int = typer.Option(10, "--depth", "-d", min=0, help="Hops to follow upstream (and levels of copies)."),
) -> None:
    """Where a saved resource's current version came from, hop by hop (written by which flow run, copied from
    which resource and version), and the copies made from it - from the Prefect server's events.

    Example: rh-prefect lineage /ds/bert_preproc
    """
    def go() -> Any:
        from rh_prefect.runtime.lineage import lineage as read_lineage

        return read_lineage(name, version=version, depth=depth)

    typer.echo(str(_run(go, name)))


@app.command()
def cat(target: str = typer.Argument(..., metavar=TARGET, help="A file URL or a saved Blob name.")) -> None:
    """Write a file's bytes to stdout, streaming.

    Example: rh-prefect cat s3://my-bucket/data/a.txt
    """
    def go() -> None:
        import contextlib

        from rh_prefect import settings

        system, path, res = _resolve(target)
        if system.isdir(path):
            _fail(f"{target} is a folder, not a file; list it with `rh-prefect ls {target}`.")
        out = sys.stdout.buffer
        chunk_size = settings.current().chunk_size
        opened: Any = None
        if res is not None:  # a saved name: Prefect is loaded already
            from rh_prefect.resources.blob import Blob

            # A saved Blob: the version its entry records (the file at its path is only the latest one published).
            opened = res.open() if isinstance(res, Blob) else None
        with opened or contextlib.nullcontext(system.open_read(path)) as f:
            while chunk := f.read(chunk_size):
                out.write(chunk)
        out.flush()

    _run(go, target, connect=False)


@app.command()
def rm(
    target: str = typer.Argument(..., metavar=TARGET, help="A saved name or a URL."),
    keep_data: bool = typer.Option(False, "--keep-data", help="For a saved name: forget the name, keep the data."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete data, and for a saved name also its registry entry. A saved Cluster is only forgotten.

    Example: rh-prefect rm s3://my-bucket/tmp -y
    """
    def go() -> None:
        from rh_prefect import names
        from rh_prefect.runtime import registry
        from rh_prefect.errors import InvalidName

        try:
            saved = "://" not in target and registry.exists(target)
        except InvalidName:
            saved = False
        if saved and not hasattr(registry.load(target), "fs_path"):  # a Cluster: nothing stored to delete
            registry.delete(target)
            typer.echo(f"forgot {names.parse(target).full}")
            return
        system, path, res = _resolve(target)
        where = system.url(system.user_path(path))
        if keep_data:
            if res is None:
                _fail(f"--keep-data only applies to saved names; {target!r} is not one.", code=2)
            registry.delete(target)
            typer.echo(f"forgot {target}; data kept at {where}")
            return
        exists = system.fs.exists(path)
        if not exists and res is None:
            raise FileNotFoundError(target)
        if not yes and not typer.confirm(f"Delete {target} ({where})?"):
            _fail("nothing deleted.")
        if res is not None:
            # The resource's own delete keeps its promises to readers: a Table removes its pointer first, so a
            # reader never meets a half-deleted table.
            res.rm()
            registry.delete(target)
        elif exists:
            system.check_writable(path)
            system.rm_tree(path)
        typer.echo(f"removed {where}" + (f" and forgot {target}" if res is not None else ""))

    _run(go, target)


@app.command()
def info(
    name: str = typer.Argument(..., metavar=TARGET, help="A saved resource name, or a URL."),
    size: bool = typer.Option(False, "--size", "-s", help="Also list the data to count its files and bytes."),
) -> None:
    """What the registry knows about a resource, as JSON: type, system, path, URL, size, schema. For a URL:
    what the store says of that path (file or folder, size).

    Example: rh-prefect info my-folder --size
    """
    def go() -> None:
        from rh_prefect import transfer
        from rh_prefect.runtime import registry

        if "://" in name:
            system, path, _ = _resolve(name)
            found = system.fs.info(path)
            data = {"url": system.url(system.user_path(path)), "type": found.get("type"), "size": found.get("size")}
            if size and found.get("type") == "directory":
                files = transfer.list_files(system, path)
                data.update(files=len(files), bytes=sum(int(i.get("size") or 0) for i in files.values()))
            typer.echo(json.dumps(data, indent=2, default=str))
            return
        res = registry.load(name)
        if hasattr(res, "sys"):
            _SYSTEMS.append(res.sys)
        data: dict[str, Any] = {"name": res.full_name, "type": type(res).__name__}
        fields = set(type(res).model_fields) - {"cluster", "credentials"}
        data.update(res.model_dump(mode="json", include=fields))  # SecretStr fields come out masked
        if getattr(res, "cluster", None) is not None:
            data["cluster"] = res.cluster.name or f"{res.cluster.host}:{res.cluster.port}"
        if getattr(res, "credentials", None) is not None:
            creds = res.credentials
            data["credentials"] = creds._block_document_name or type(creds).__name__
        if hasattr(res, "url"):
            data["url"] = res.url
        if size and hasattr(res, "fs_path"):
            files = transfer.list_files(res.sys, res.fs_path)
            data["files"] = len(files)
            data["bytes"] = sum(int(i.get("size") or 0) for i in files.values())
        data["block_document"] = res.document_name
        typer.echo(json.dumps(data, indent=2, default=str))

    _run(go, name)


@app.command("list")
def list_(
    namespace: Optional[str] = typer.Argument(None, metavar="[NAMESPACE]",
                                              help="Only names inside this namespace, e.g. /ds."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include nested namespaces."),
) -> None:
    """List saved resources: type and canonical name, one per line.

    Example: rh-prefect list /ds
    """
    def go() -> None:
        from rh_prefect.runtime import registry

        for full, kind in registry.list_names(namespace, recursive=recursive or namespace is None):
            typer.echo(f"{kind:<10} {full}")

    _run(go)


@app.command()
def register() -> None:
    """Register the block types (Folder, Table, Blob, Cluster, credentials) with the Prefect server, so their
    forms appear in the UI's block catalog. Same as `prefect block register -m rh_prefect.blocks`.

    Example: rh-prefect register
    """

    def go() -> list[str]:
        from rh_prefect.blocks import register_all

        return register_all()

    for slug in _run(go):
        typer.echo(f"registered {slug}")


@server_app.command("up")
def server_up(port: int = typer.Option(local_server.DEFAULT_PORT, help="Port on 127.0.0.1.")) -> None:
    """Start the embedded Prefect server in the background (or show the running one), and make the Prefect
    profile 'rh-prefect' active, so the library, rh-prefect and prefect commands all use it without an export.

    Its data lives in ~/.rh-prefect/server (RH_PREFECT_SERVER_HOME). `rh-prefect server down` switches back.

    Example: rh-prefect server up --port 4200
    """
    def go() -> Any:
        info = local_server.up(port=port)
        return info, local_server.use_profile(info)

    info_, before = _run(go, connect=False)
    typer.echo(f"Prefect server running (pid {info_.pid}): UI {info_.ui_url}, API {info_.api_url}")
    if before == local_server.PROFILE:
        typer.echo(f"Prefect profile '{local_server.PROFILE}' is active: Python, rh-prefect and prefect use this server.")
    else:
        typer.echo(f"Prefect profile '{local_server.PROFILE}' is now active (it was '{before}'): Python, rh-prefect "
                   f"and prefect use this server. `rh-prefect server down` switches back.")


@server_app.command("down")
def server_down() -> None:
    """Stop the embedded Prefect server.

    Example: rh-prefect server down
    """
    typer.echo("stopped" if local_server.down() else "no embedded server was running")


@server_app.command("status")
def server_status() -> None:
    """Show whether the embedded Prefect server runs; exit code 1 if not.

    Example: rh-prefect server status
    """
    info_ = local_server.status()
    if info_ is None:
        typer.echo("not running")
        raise typer.Exit(1)
    typer.echo(f"running (pid {info_.pid}) at {info_.api_url}, UI {info_.ui_url}")


@worker_app.command("start")
def worker_start(
    cluster: str = typer.Option(..., "--cluster", "-c", metavar="NAME", help="Name of a saved Cluster."),
    here: bool = typer.Option(False, "--here", help="Start it on this machine: run this on the cluster itself."),
) -> None:
    """Start a Prefect worker for the cluster's work queue on the cluster (over SSH, or --here on the cluster).

    Example: rh-prefect worker start --cluster rh-cpu          (from your laptop)
             rh-prefect worker start --cluster rh-cpu --here   (on the cluster, after pip install rh-prefect)
    """
    def go() -> None:
        import rh_prefect as rh

        c = rh.cluster(cluster)
        from rh_prefect.runtime import worker

        typer.echo(str(worker.start(c, here=here)))

    _run(go)


if __name__ == "__main__":  # pragma: no cover
    app()
