"""The named-resource registry: rh_prefect resources saved as Prefect block documents.

The Prefect server is the single source of truth for names. Every saved resource is an ordinary block
document (so ``Folder.load("my-folder")`` and the Prefect UI keep working); this module adds the Runhouse
naming rules on top: names are unique across resource types, namespaces are folders, and names map
reversibly onto Prefect's ``[a-z0-9-]`` block names (see :mod:`rh_prefect.names`).
"""

from __future__ import annotations

from abc import ABC
from typing import Any, Optional, TypeVar

from prefect.blocks.core import Block, schema_extra
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from pydantic import ConfigDict, PrivateAttr

from rh_prefect import names
from rh_prefect.runtime import _prefect_exit, _prefect_private
from rh_prefect.errors import AlreadyExists, NotFound
from rh_prefect.systems.blocktypes import RegisteredOnce

R = TypeVar("R", bound="Resource")

#: The block types of named resources (slug -> the type's name, as users see it). The registry knows them by
#: slug only; the classes live on the resources floor above, and a name is loaded through Prefect's own block
#: lookup (``Block.get_block_class_from_key``), which imports them through the ``prefect.collections`` entry point.
RESOURCE_TYPES: dict[str, str] = {"rh-folder": "Folder", "rh-table": "Table", "rh-blob": "Blob", "rh-cluster": "Cluster"}


def resource_schema_extra(schema: dict[str, Any], model: Any) -> None:
    """Prefect's block schema additions, and: the ``system`` field is required in the JSON schema.

    Why: a block parameter of a flow run may be a reference to a saved block, ``{"$ref": {"block_document_id":
    ...}}`` (how the UI's block pickers, :mod:`rh_prefect.runtime.dispatch` and ``rh.on_update`` pass them, so
    secrets survive). Prefect checks it against ``oneOf`` [the block's schema, its reference schema] - on the server
    for deployments that enforce their parameter schema, and in the UI's automation form, which could not save an
    ``on_update`` automation. With every field optional a reference matched both and was refused; a value of the
    block always has ``system`` (it has a default, and every saved document and UI form holds it), a reference
    never. (Only keywords the UI keeps work here: it drops ``not`` and ``additionalProperties`` before checking.)

    Prefect finds the definition to wrap in that ``oneOf`` by its title, so a definition titled otherwise than its
    class (the Table kinds are titled "Table") is never wrapped and must go on accepting references: it gets nothing
    here. Its block schema does (:meth:`Resource.model_json_schema`), so every kind keeps one block schema.
    """
    schema_extra(schema, model)
    if schema.get("title", model.__name__) == model.__name__:
        _require_system(schema)


def _require_system(schema: dict[str, Any]) -> None:
    if "system" in schema.get("properties", {}) and "system" not in schema.setdefault("required", []):
        schema["required"].append("system")


class Resource(RegisteredOnce, ABC):
    """Base class of every named rh_prefect block (Folder, Table, Blob, Cluster).

    Adds Runhouse-style naming: ``save(name=None, overwrite=True)`` returns the resource itself so calls chain,
    and :attr:`name` is the name the user gave (``"my-folder"``, ``"@/my_table"``, ``"/ds/bert_preproc"``).
    """

    model_config = ConfigDict(json_schema_extra=resource_schema_extra)

    _rh_name: Optional[str] = PrivateAttr(default=None)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        schema = super().model_json_schema(*args, **kwargs)  # a copy of the class's cached schema (RegisteredOnce)
        _require_system(schema)  # the block schema: the same for every Table kind (resource_schema_extra)
        return schema

    # -- naming -------------------------------------------------------------------------------------------
    @property
    def name(self) -> Optional[str]:
        """The resource name as given by the user, or the decoded block name when loaded from Prefect."""
        if self._rh_name:
            return self._rh_name
        if self._block_document_name:
            return names.display(names.decode(self._block_document_name))
        return None

    @property
    def document_name(self) -> Optional[str]:
        """The Prefect block document this resource was loaded from or saved as (``--sds--sbert--upreproc``), or
        None: what the Prefect UI and ``prefect block`` commands call it."""
        return self._block_document_name

    @property
    def full_name(self) -> Optional[str]:
        """Canonical name: ``@/my-folder`` or ``/ds/bert_preproc``."""
        return names.parse(self.name).full if self.name else None

    def _set_name(self, name: Optional[str]) -> None:
        if name is not None:
            names.parse(name)  # validate early: a bad name must fail before any data is written
        self._rh_name = name

    def save(self: R, name: Optional[str] = None, overwrite: Optional[bool] = None) -> R:  # type: ignore[override]
        """Save this resource in the Prefect registry under ``name`` (or its current name) and return it.

        A resource loaded by that name (or saved under it by this object) is updated. A name already saved by
        someone else is replaced only with ``overwrite=True``: otherwise :class:`AlreadyExists`, and nothing
        changes, so re-running a script never re-points a name another user or script relies on.
        ``overwrite=False`` refuses even an update of the resource this object was loaded from.

        Example:
            >>> folder = rh.folder(path="/tmp/data").save("my-folder")
        """
        if name is not None:
            self._set_name(name)
        if not self.name:
            raise NotFound(
                f"This {type(self).__name__} has no name: call .save(name='my-name') to register it."
            )
        rname = names.parse(self.name)
        self._before_save(rname)
        other = find(rname.full)
        if other is not None and other[0] != type(self).get_block_type_slug():
            raise _name_taken(self.name, other[0])
        if other is not None and not overwrite:
            ours = self._block_document_id is not None and str(self._block_document_id) == str(other[1])
            if overwrite is False or not ours:
                kind = type(self).__name__
                raise AlreadyExists(
                    f"{self.name!r} is already saved; pass overwrite=True to replace it with this {kind}, or load "
                    f"it with rh.load({self.name!r}) to change it. Nothing was saved."
                )
        if other is None:
            # A fresh name must create a new document, not update the one this object was loaded from.
            self._block_document_id = None
        _prefect_private.save_block(self, name=rname.block_name, overwrite=True)
        _prefect_exit.settle()
        return self

    def _check_name_free(self) -> None:
        """Raise AlreadyExists if this resource's name is saved as another type of resource. save() checks it
        too; factories that write data under a name call it first, so a collision fails before anything is stored."""
        if not self.name:
            return
        other = find(names.parse(self.name).full)
        if other is not None and other[0] != type(self).get_block_type_slug():
            raise _name_taken(self.name, other[0])

    def data_version(self) -> Optional[str]:
        """What identifies the data this resource reads now, for caches keyed on the data
        (:data:`rh_prefect.runtime.caching.DATA_VERSIONS`); None for a resource that holds no data (a Cluster).
        Folder, Table and Blob say what it is for them."""
        return None

    def _before_save(self, name: names.ResourceName) -> None:
        """Hook for subclasses: fill defaults that depend on the name (e.g. a namespace's path)."""

    @classmethod
    def _load_named(cls: type[R], name: str) -> R:
        rname = names.parse(name)
        found = find(rname.full)
        if found is None:
            raise NotFound(
                f"No resource named {name!r} is saved on the Prefect server; check the name with "
                "`rh-prefect list` or create it first and call .save()."
            )
        slug, _ = found
        klass = Block.get_block_class_from_key(slug)
        if not issubclass(klass, cls):
            raise NotFound(f"{name!r} is a {klass.__name__}, not a {cls.__name__}; load it with rh.load({name!r}).")
        # _sync: also from code running inside an event loop (Jupyter, async apps), where Prefect would
        # otherwise hand back an un-awaited coroutine.
        obj = klass.load(rname.block_name, validate=True, _sync=True)
        _prefect_exit.settle()
        obj._rh_name = name
        return obj  # type: ignore[return-value]


def _name_taken(name: str, slug: str) -> AlreadyExists:
    return AlreadyExists(
        f"The name {name!r} is already used by a {RESOURCE_TYPES[slug]}; "
        f"pick another name or delete it first with rh.delete({name!r})."
    )


def _filter(block_names: Optional[list[str]] = None, like: Optional[str] = None) -> list[dict[str, Any]]:
    name_filter: dict[str, Any] = {}
    if block_names is not None:
        name_filter["any_"] = block_names
    if like is not None:
        name_filter["like_"] = like
    body = {
        "block_documents": {"name": name_filter, "is_anonymous": {"eq_": False}},
        "block_types": {"slug": {"any_": sorted(RESOURCE_TYPES)}},
        "include_secrets": False,
    }
    with get_client(sync_client=True) as client:
        response = client.request("POST", "/block_documents/filter", json=body)
    return response.json()


def find(full_name: str) -> Optional[tuple[str, str]]:
    """``(block type slug, block document id)`` of the resource saved under a canonical name, or None."""
    docs = _filter(block_names=[names.encode(full_name)])
    if not docs:
        return None
    doc = docs[0]
    return doc["block_type"]["slug"], doc["id"]


def load(name: str) -> Resource:
    """Load any saved resource by name, whatever its type."""
    return Resource._load_named(name)


def exists(name: str) -> bool:
    """True if a resource is saved under ``name``."""
    return find(names.parse(name).full) is not None


def delete(name: str) -> None:
    """Remove a resource from the registry. Its data stays where it is; call ``.rm()`` first to delete data."""
    rname = names.parse(name)
    found = find(rname.full)
    if found is None:
        raise NotFound(f"No resource named {name!r} is saved; nothing to delete.")
    with get_client(sync_client=True) as client:
        try:
            client.delete_block_document(found[1])
        except ObjectNotFound as exc:  # deleted concurrently: the outcome the caller wanted
            raise NotFound(f"{name!r} was deleted by someone else meanwhile.") from exc


def list_names(namespace: Optional[str] = None, recursive: bool = False) -> list[tuple[str, str]]:
    """``[(canonical name, type name)]`` of saved resources, optionally only those inside ``namespace``."""
    like = None
    prefix = None
    if namespace is not None:
        ns = names.parse(namespace).full if namespace not in ("@", "/") else namespace
        prefix = ns.rstrip("/") + "/"
        if prefix != "@/":
            like = names.encode(prefix) + "%"
    out = []
    for doc in _filter(like=like):
        full = names.decode(doc["name"])
        if prefix is not None:
            if not full.startswith(prefix):
                continue
            if not recursive and "/" in full[len(prefix) :]:
                continue
        out.append((full, RESOURCE_TYPES[doc["block_type"]["slug"]]))
    return sorted(out)
