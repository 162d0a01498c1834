"""What Folder, Table and Blob share: a place (system + path) and the rules for default places."""

from __future__ import annotations

import posixpath
from abc import ABC
import uuid
from typing import Any, Literal, Optional, TypeVar, Union

from pydantic import Field, PrivateAttr, field_validator

from rh_prefect import names

from rh_prefect.runtime import events, registry
from rh_prefect.errors import InvalidArgument, InvalidPath, NotFound, ReadOnlyVersion, UnknownSystem
from rh_prefect.runtime.registry import Resource
from rh_prefect.resources.cluster import Cluster
from rh_prefect.runtime import worker
from rh_prefect.systems import (
    ClusterDisk, GCSCredentials, GitHubCredentials, S3Credentials, System, check_path, get_system, system_class,
)

SystemArg = Union[str, Cluster, System, None]
S = TypeVar("S", bound="StoredResource")


class StoredResource(Resource, ABC):
    """A named resource whose data lives at ``path`` on ``system``. Not a block type by itself."""

    path: Optional[str] = Field(default=None, title="Path", description="Where the data lives on the system.")
    # A choice list in the Prefect UI's block form (an enum in the block schema); aliases such as "sftp" and
    # any spelling of a known name are accepted from Python and stored as the canonical name.
    system: Literal["file", "s3", "gs", "github", "ssh"] = Field(
        default="file",
        title="System",
        description="Where the data lives: file, s3, gs, github or ssh (ssh needs a Cluster).",
    )
    cluster: Optional[Cluster] = Field(
        default=None, title="Cluster", description="The cluster holding the data when the system is ssh."
    )
    credentials: Optional[Union[S3Credentials, GCSCredentials, GitHubCredentials]] = Field(
        default=None,
        title="Credentials",
        description="Credentials for s3, gs or github; empty to use the environment's default credentials.",
    )
    _sys: Optional[System] = PrivateAttr(default=None)
    _last_report: Any = PrivateAttr(default=None)
    _flow_run: Any = PrivateAttr(default=None)
    # loaded with version=V: it reads V and refuses every write (Table and Blob)
    _pinned: bool = PrivateAttr(default=False)
    # lineage events: (resource id, version) this object last announced, and the event resource of what it was
    # copied from (a save under a name then names that source)
    _announced: Optional[tuple[str, str]] = PrivateAttr(default=None)
    _copied_from: Optional[dict[str, str]] = PrivateAttr(default=None)

    @field_validator("system", mode="before")
    @classmethod
    def _canonical_system(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return system_class(value).name
            except UnknownSystem as exc:
                raise ValueError(str(exc)) from None
        return value

    @property
    def last_copy(self) -> Any:
        """What the ``.to()`` that made this resource did: a :class:`rh_prefect.transfer.CopyReport` (files and
        bytes copied or skipped, ``summary()``), or None when it was not made by a copy in this process."""
        return self._last_report

    @property
    def flow_run(self) -> Any:
        """The Prefect flow run that made this copy on a cluster's worker (``.to(..., via="worker")``), or None."""
        return self._flow_run

    @property
    def sys(self) -> System:
        """The :class:`System` object for this resource's location (cached)."""
        if self._sys is None:
            self._sys = get_system(self.system, cluster=self.cluster, credentials=self.credentials)
        return self._sys

    def _relocate(self, system: System, path: str) -> None:
        fields = system.block_fields()
        self.system = fields["system"]
        self.cluster = fields.get("cluster")
        self.credentials = fields.get("credentials")
        self.path = system.normalize(path)
        self._sys = system

    def relocated(self: S, system: System, path: str) -> S:
        """This resource's block, unsaved, describing the same data at ``path`` on ``system`` (a copy's result,
        or a view of the same bytes through another system). It keeps the name; nothing is read or written."""
        new = self.model_copy(deep=False)  # not deep: that would copy live connections
        new._relocate(system, path)
        new._block_document_id = None
        new._block_document_name = None
        new._rh_name = self._rh_name
        new._last_report = None
        new._flow_run = None
        new._announced = None
        new._copied_from = None
        self._relocated_extra(new)
        return new

    def _relocated_extra(self, new: Any) -> None:
        """Hook for subclasses: state of their own that a relocated copy must not share (see :meth:`relocated`)."""

    def from_cluster(self: S, cluster: Cluster, path: Optional[str] = None) -> S:
        """This resource addressed through ``cluster`` (Runhouse's ``from_cluster``); with ``path``, a local copy.

        Without ``path``: a view of the same data, nothing copied. The resource's path is read on ``cluster`` -
        over SSH from elsewhere, straight from the disk in a process running on that cluster's worker (the view
        still records the cluster, so saved it means the same data to everyone). The data must be on
        ``cluster``, or on a local disk (its path is then taken as a path on the cluster, as Runhouse does). A
        saved resource keeps its name, and its registry entry when the view is of the same stored data.

        With ``path``: the data is copied from the cluster down to that local path, and the local resource is
        returned (same name, not registered).

        Example:
            ```python
            c = rh.cluster("^rh-cpu").up_if_not()
            cluster_folder = local_folder.to(system=c).from_cluster(c)
            print(cluster_folder.ls(full_paths=False))
            local_copy = cluster_folder.from_cluster(c, path="folder_back")   # copied down to ./folder_back
            ```
        """
        if not isinstance(cluster, Cluster):
            raise InvalidArgument(
                f"from_cluster() takes a Cluster, such as rh.cluster('rh-cpu'), not {type(cluster).__name__} "
                f"{cluster!r:.60}; nothing was changed."
            )
        if not self.path:
            raise InvalidPath(f"{self._label()} has no path, so it has nothing on a cluster; store it first, "
                              "e.g. with .to(cluster).")
        through = get_system(cluster)
        on_it = worker.runs_on(through)  # this process is the cluster's worker: its files are on this disk
        if self.system == through.name:  # on a cluster: it must be this one (same host, port and user)
            same_data = self.cluster is not None and get_system(self.cluster) == through
        else:  # on a local disk, which is the cluster's only when this process runs there
            same_data = self.sys.is_local and on_it
        if not same_data and not self.sys.is_local:
            raise InvalidArgument(
                f"{self._label()} is on {self.sys.describe()}, not on {through.describe()}: from_cluster() only "
                f"addresses data already on that cluster. Copy it there with .to(system=cluster) first; nothing "
                "was changed."
            )
        target = ClusterDisk(cluster) if on_it else through
        view = self.relocated(target, target.normalize(self.path))
        if path is not None:
            return view.to("file", path, via="local")  # down to this machine, whatever worker serves the cluster
        if same_data:  # the same stored data: its registry entry still describes the view
            view._block_document_id = self._block_document_id
            view._block_document_name = self._block_document_name
        return view

    def _refuse_if_pinned(self, action: str) -> None:
        if self._pinned:
            factory = type(self).get_block_type_slug().replace("-", ".", 1)  # rh-table -> rh.table (every kind)
            raise ReadOnlyVersion(
                f"{self._label()} was loaded at version {getattr(self, 'version', None)}, so it only reads that "
                f"version and cannot {action}. Load it without version= ({factory}(name=...)) to write to it, or "
                f"make this version current with .rollback({getattr(self, 'version', None)!r}) on the one loaded "
                "without version=. Nothing was changed."
            )

    def has_unwritten_data(self) -> bool:
        """True when this object holds data in memory that is not stored yet (it is written from this process)."""
        return False

    # -- lineage events (see rh_prefect.runtime.events) ----------------------------------------------------------
    def is_saved(self) -> bool:
        """True when this object was loaded from or saved to the registry under its name."""
        return self._block_document_id is not None and bool(self.name)

    def event_resource(self) -> dict[str, str]:
        """This resource as the resource of an rh event: ``rh.<type>.<canonical name>`` when saved, else
        ``rh.<type>.<url>``; with its type, name, URL and version labels (:func:`rh_prefect.runtime.events.resource`)."""
        kind = type(self).get_block_type_slug().removeprefix("rh-")
        return events.resource(kind, self.full_name if self.is_saved() else None, self.url,
                               getattr(self, "version", None))

    def cluster_related(self) -> list[dict[str, str]]:
        """The cluster holding the data as a related resource of an event (none when the data is elsewhere)."""
        if self.system != "ssh" or self.cluster is None:
            return []
        c = self.cluster
        name = getattr(c, "full_name", None) if getattr(c, "_block_document_id", None) is not None else None
        who = f"{c.user}@" if c.user else ""
        return [events.cluster(name or f"ssh://{who}{c.host}:{c.port}")]

    def _announce(self, event: str, source: Union["StoredResource", dict[str, str], None] = None, *,
                  asset: bool = False, flow_run: Any = None, payload: Optional[dict[str, Any]] = None) -> None:
        """Send ``event`` about this resource (its ``source``: a resource or an event resource; its cluster, run
        and, for a write, what the flow run read before) and, with ``asset``, the same in Prefect's asset terms.
        Never raises: see events.emit."""
        try:
            res = self.event_resource()
            related: list[dict[str, str]] = []
            if flow_run is not None:  # a worker's flow run did the work (see remote.run_on_worker)
                related.append(events.flow_run(flow_run.id, flow_run.name))
            src = source.event_resource() if isinstance(source, StoredResource) else source
            if src is not None:
                related.append(events.as_related(src, events.ROLE_SOURCE))
                if isinstance(source, StoredResource):
                    related += source.cluster_related()
            related += self.cluster_related()
            related += events.run_related()
            inputs = [] if src is not None or event == events.DELETED else [
                r for r in events.reads() if r["prefect.resource.id"] != res["prefect.resource.id"]]
            related += [events.as_related(r, events.ROLE_INPUT) for r in inputs]
            events.emit(event, res, related, payload)
            self._announced = (res["prefect.resource.id"], res[events.LABEL_VERSION])
            if asset:
                upstream = [src[events.LABEL_URL]] if src is not None else [r[events.LABEL_URL] for r in inputs]
                version = res[events.LABEL_VERSION]
                events.emit_asset(self.url, self.full_name if self.is_saved() else None, upstream,
                                  {events.LABEL_VERSION: version} if version else None)
        except Exception as exc:  # pragma: no cover - events.emit never raises; this guards building the labels
            events.logger.warning("could not announce %s of %s: %s", event, self._label(), exc)

    def _note_read(self) -> None:
        """Inside a flow run: remember that this resource (at its version) was read, for a later write's inputs."""
        try:
            events.note_read(self.event_resource())
        except Exception as exc:  # pragma: no cover - bookkeeping only
            events.logger.debug("could not note a read of %s: %s", self._label(), exc)

    def announce_copy(self, source: "StoredResource", flow_run: Any = None) -> None:
        """Announce that this resource was made by copying ``source`` (``rh.resource.copied``, and Prefect's asset
        terms for a Table or Blob); ``flow_run``: the worker's flow run that copied it, when it ran on one. The
        copy methods call it; a save of this object under a name then names ``source`` too."""
        self._copied_from = source.event_resource()
        self._announce(events.COPIED, source, asset=self._has_versions(), flow_run=flow_run)

    def _has_versions(self) -> bool:
        """True for the resources stored as versions (Table, Blob): their writes are also Prefect asset events."""
        return "version" in type(self).model_fields

    def save(self: S, name: Optional[str] = None, overwrite: Optional[bool] = None) -> S:  # type: ignore[override]
        """Register the resource by name and return it (see :meth:`rh_prefect.runtime.registry.Resource.save`).

        A save that points the name at a version not announced under it yet (a copy saved under a name, a table
        written before it was named) announces ``rh.resource.written`` for the name, naming the copy's source."""
        super().save(name, overwrite)
        self._announce_saved()
        return self

    def _announce_saved(self) -> None:
        version = getattr(self, "version", None)
        if version is None or not self.is_saved():
            return
        if self._announced == (self.event_resource()["prefect.resource.id"], version):
            return
        self._announce(events.WRITTEN, self._copied_from, payload={"saved": True})

    def to(self: S, system: "SystemArg", path: Optional[str] = None, via: str = "auto", **options: Any) -> S:
        """Copy to another system (or place) and return the resource there; see the subclass's ``to``.

        ``via``: where the bytes flow - ``"worker"`` (a flow run on the worker of the cluster holding the data),
        ``"local"`` (this process) or ``"auto"`` (the worker when one is online); see
        :mod:`rh_prefect.resources.remote`.
        """
        from rh_prefect.resources import remote

        moved = remote.route(self, system, path, via=via, **options)
        return moved if moved is not None else self.copy_to(system, path, **options)

    def copy_to(self: S, system: "SystemArg", path: Optional[str] = None, **options: Any) -> S:
        """Copy through this process (no worker) and return the resource there: what ``to(via="local")`` does."""
        raise NotImplementedError

    @property
    def fs_path(self) -> str:
        """The path as the system's fsspec filesystem spells it."""
        if not self.path:
            raise InvalidPath(f"{type(self).__name__} {self.name!r} has no path.")
        return self.sys.fs_path(self.path)

    @property
    def url(self) -> str:
        """Where the data lives, as a URL (``s3://bucket/key``, ``ssh://host:22/path``, a local path)."""
        return self.sys.url(self.path or "")

    def is_local(self) -> bool:
        return self.sys.is_local and self.sys.writable

    def is_writable(self) -> bool:
        return self.sys.writable

    def _leaf(self) -> str:
        """The last component a copy of this resource is named after: its path's, else its name's."""
        leaf = posixpath.basename((self.path or "").rstrip("/"))
        if leaf:
            return leaf
        return names.parse(self.name).leaf if self.name else type(self).__name__.lower()

    def _label(self) -> str:
        return f"{type(self).__name__} {self.name!r} ({self.url})" if self.name else f"{type(self).__name__} {self.url}"

    def destination(self, system: "SystemArg", path: Optional[str]) -> tuple[System, str]:
        """Where ``.to(system, path)`` puts the copy: ``path``, or the same leaf under the system's default root."""
        dst_sys = get_system(system)
        if path is None:
            root = dst_sys.default_root()
            if root is None:
                raise InvalidPath(f"Copying {self._label()} to {dst_sys.describe()} needs a path: "
                                  f"{dst_sys.default_root_hint()}.")
            path = posixpath.join(root, self._leaf())
        return dst_sys, dst_sys.normalize(check_path(path))

    @property
    def local_path(self) -> Optional[str]:
        """The local filesystem path, when the data is on this machine."""
        return self.fs_path if self.sys.is_local else None


def place(
    name: Optional[str], system: SystemArg, path: Optional[str], *, cluster: Optional[Cluster] = None,
    credentials: Any = None, kind: str = "rh"
) -> tuple[System, str]:
    """Decide where a new resource's data goes: ``(System, system path)``.

    An explicit path wins. Otherwise a resource in a folder namespace (``/ds/x``) goes under that folder's path
    on that folder's system; anything else goes to the system's default root, under its name.
    """
    if name is not None and path is None:
        rname = names.parse(name)
        if rname.namespace not in (names.DEFAULT_NAMESPACE, "/"):
            parent = _namespace_folder(rname.namespace)
            if parent is not None and (system is None or get_system(system, cluster=cluster, credentials=credentials) == parent.sys):
                return parent.sys, posixpath.join(parent.path, rname.leaf)
    sys = get_system(system, cluster=cluster, credentials=credentials)
    if path is None:
        root = sys.default_root()
        if root is None:
            raise InvalidPath(f"No path given for {name or 'this ' + kind} on {sys.describe()}: {sys.default_root_hint()}.")
        leaf = names.parse(name).leaf if name else f"{kind}-{uuid.uuid4().hex[:8]}"
        path = posixpath.join(root, leaf)
    return sys, sys.normalize(check_path(path))


def _namespace_folder(namespace: str) -> Optional["StoredResource"]:
    try:
        found = registry.load(namespace)
    except NotFound:
        return None
    return found if isinstance(found, StoredResource) else None
