"""The adapter contract: how one table kind (pandas, dask, ...) turns into Arrow data and back.

Everything format-specific lives in an adapter; the Table resource and the parquet dataset code only ever see
Arrow (a ``pyarrow.Table`` or a ``pyarrow.RecordBatchReader``). An adapter is found by kind name
(:func:`adapter`) or by the type of the user's data (:func:`adapter_for_data`). Adapters never import their
library at module import time, so ``import rh_prefect`` stays cheap and optional extras stay optional.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import pyarrow as pa

from rh_prefect.errors import InvalidArgument, MissingDependency
from rh_prefect.tables.formats import ArrowSource

if TYPE_CHECKING:  # pragma: no cover
    from rh_prefect.tables.dataset import Snapshot

_ADAPTERS: dict[str, "Adapter"] = {}
#: detection order: most specific first (a Hugging Face dataset is not a pandas frame, etc.)
_DETECTION_ORDER = ("huggingface", "ray", "dask", "polars", "pandas", "arrow")
_MODULES = {
    "arrow": "rh_prefect.tables.arrow",
    "pandas": "rh_prefect.tables.pandas",
    "dask": "rh_prefect.tables.dask",
    "ray": "rh_prefect.tables.ray",
    "huggingface": "rh_prefect.tables.huggingface",
    "polars": "rh_prefect.tables.polars",
}
KINDS: tuple[str, ...] = tuple(_MODULES)


class Adapter:
    """One table kind. Subclasses set the class variables and implement the conversions."""

    #: kind name stored in the Table block ("pandas")
    kind: ClassVar[str]
    #: the import name of the library this kind needs ("pandas"); None for pure Arrow
    library: ClassVar[Optional[str]] = None
    #: the pip extra that installs it (``pip install 'rh-prefect[dask]'``)
    extra: ClassVar[Optional[str]] = None
    #: batch format used by ``stream()`` when neither the call nor the saved table chooses one
    default_format: ClassVar[str] = "pyarrow"
    #: short description of the accepted data types, for error messages
    accepts: ClassVar[str]
    #: True when ``fetch()`` returns a lazy object built by :meth:`from_snapshot` (nothing is read up front)
    lazy: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _ADAPTERS[cls.kind] = cls()

    # -- library -------------------------------------------------------------------------------------------
    def require(self) -> Any:
        """Import and return this kind's library, or raise :class:`MissingDependency` with the install command."""
        if self.library is None:
            return None
        try:
            return importlib.import_module(self.library)
        except ImportError as exc:
            raise MissingDependency(
                f"{self.kind} tables need the {self.library!r} package, which is not installed: "
                f"pip install 'rh-prefect[{self.extra}]'"
            ) from exc

    def loaded(self) -> Any:
        """The library module if the process already imported it (data of this kind cannot exist otherwise)."""
        return sys.modules.get(self.library) if self.library else None

    # -- conversions ---------------------------------------------------------------------------------------
    def matches(self, data: Any) -> bool:
        """True if ``data`` is of this kind. Must not import anything."""
        raise NotImplementedError

    def to_arrow(self, data: Any) -> ArrowSource:
        """The data as Arrow: a Table, or a RecordBatchReader that streams it (bounded memory)."""
        raise NotImplementedError

    def replayable(self, data: Any) -> bool:
        """False when :meth:`to_arrow` can be consumed only once (a reader): such a write cannot be retried."""
        return True

    def from_arrow(self, table: pa.Table) -> Any:
        """The kind's native, in-memory object for an Arrow table."""
        raise NotImplementedError

    def from_snapshot(self, snapshot: "Snapshot", columns: Optional[list[str]], filter: Any) -> Any:
        """The kind's native object for a stored table version; lazy kinds override this to read on compute."""
        return self.from_arrow(snapshot.read(columns=columns, filter=filter))

    def head_from_arrow(self, table: pa.Table) -> Any:
        """What ``head(n)`` returns: in memory even for lazy kinds."""
        return self.from_arrow(table)


def adapter(kind: str) -> Adapter:
    """The adapter for a kind name ("arrow", "pandas", "dask", "ray", "huggingface", "polars")."""
    if kind not in _MODULES:
        raise InvalidArgument(f"Unknown table kind {kind!r}; use one of: {', '.join(KINDS)}.")
    if kind not in _ADAPTERS:
        importlib.import_module(_MODULES[kind])
    return _ADAPTERS[kind]


def adapter_for_data(data: Any) -> Adapter:
    """The adapter whose kind ``data`` is, or :class:`InvalidArgument` naming the accepted types."""
    for kind in _DETECTION_ORDER:
        a = adapter(kind)
        if a.matches(data):
            return a
    accepted = "; ".join(adapter(k).accepts for k in _DETECTION_ORDER)
    raise InvalidArgument(f"rh.table() cannot store a {type(data).__module__}.{type(data).__name__}; pass one of: {accepted}.")


__all__ = ["Adapter", "ArrowSource", "KINDS", "adapter", "adapter_for_data"]
