"""How a Blob turns an object into bytes and back: small adapters in a registry keyed by name.

Each serializer streams to and from a binary file object (the blob's atomic writer, or a reader of the stored
bytes), so a large object is never copied into one extra in-memory ``bytes`` on its way to storage.

Built in:

=========== ============================================== ==========================================
name        writes                                         ``fetch()`` returns
=========== ============================================== ==========================================
pickle      pickle protocol 5 (default for objects)        the object
bytes       the raw bytes (default for bytes-like data)    ``bytes``
text        UTF-8 text (default for ``str``)               ``str``
json        JSON as UTF-8 text                             dicts, lists, str, numbers, bools, None
cloudpickle cloudpickle (lambdas, local classes)           the object
=========== ============================================== ==========================================

A serializer of your own is a subclass of :class:`Serializer` passed to :func:`register`; its name is what a
saved Blob records, so register it in every process that reads such blobs.

    >>> import io
    >>> from rh_prefect import serializers
    >>> buf = io.BytesIO()
    >>> serializers.get("json").dump({"a": 1}, buf)
    >>> buf.getvalue()
    b'{"a": 1}'
    >>> serializers.get("json").load(io.BytesIO(buf.getvalue()))
    {'a': 1}
"""

from __future__ import annotations

import io
import json
import pickle
from abc import ABC, abstractmethod
from typing import IO, Any, ClassVar

from rh_prefect.errors import RhError

#: bytes handed to the underlying file per write call; matches the copy engine's chunk size
CHUNK_SIZE = 8 * 2**20
#: characters encoded per write by the text serializer (at most 4 bytes each in UTF-8)
_TEXT_CHUNK = 2**20


class SerializationError(RhError, ValueError):
    """An object could not be serialized, or stored bytes could not be read back with the blob's serializer."""


class Serializer(ABC):
    """One way of turning objects into a byte stream and back."""

    #: the name saved with a blob (``Blob.serializer``)
    name: ClassVar[str]

    @abstractmethod
    def dump(self, obj: Any, f: IO[bytes]) -> None:
        """Write ``obj`` to the binary file object ``f`` (streaming: many small writes, no whole copy)."""

    @abstractmethod
    def load(self, f: IO[bytes]) -> Any:
        """Read one object from the binary file object ``f``."""

    def available(self) -> bool:
        """False when an optional dependency is missing."""
        return True

    def __repr__(self) -> str:
        return f"<serializer {self.name!r}>"


class PickleSerializer(Serializer):
    """Python's pickle, protocol 5: large numpy/pandas buffers are written straight from memory."""

    name = "pickle"

    def dump(self, obj: Any, f: IO[bytes]) -> None:
        pickle.dump(obj, f, protocol=5)

    def load(self, f: IO[bytes]) -> Any:
        return pickle.load(f)


class CloudpickleSerializer(PickleSerializer):
    """cloudpickle: also lambdas, closures and classes defined in ``__main__``. The format is pickle, read
    back with ``pickle.load``; the reading process needs cloudpickle installed too."""

    name = "cloudpickle"

    def available(self) -> bool:
        try:
            import cloudpickle  # noqa: F401
        except ImportError:
            return False
        return True

    def dump(self, obj: Any, f: IO[bytes]) -> None:
        import cloudpickle

        cloudpickle.dump(obj, f, protocol=5)


class BytesSerializer(Serializer):
    """Raw bytes: what is stored is exactly the data (readable by any other tool)."""

    name = "bytes"

    def dump(self, obj: Any, f: IO[bytes]) -> None:
        if hasattr(obj, "read"):  # a readable binary file object: stream it
            while True:
                chunk = obj.read(CHUNK_SIZE)
                if not chunk:
                    return
                if isinstance(chunk, str):
                    raise TypeError("the 'bytes' serializer needs a file opened in binary mode ('rb').")
                f.write(chunk)
        if not isinstance(obj, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"the 'bytes' serializer stores bytes-like data, not {type(obj).__name__}; "
                "use serializer='pickle' for objects or 'text' for str."
            )
        f.write(obj)

    def load(self, f: IO[bytes]) -> bytes:
        return f.read()


class TextSerializer(Serializer):
    """A ``str`` as UTF-8 text."""

    name = "text"

    def dump(self, obj: Any, f: IO[bytes]) -> None:
        if not isinstance(obj, str):
            raise TypeError(f"the 'text' serializer stores str, not {type(obj).__name__}; use 'pickle' or 'json'.")
        for start in range(0, len(obj), _TEXT_CHUNK):
            f.write(obj[start : start + _TEXT_CHUNK].encode("utf-8"))

    def load(self, f: IO[bytes]) -> str:
        return f.read().decode("utf-8")


class JSONSerializer(Serializer):
    """JSON as UTF-8 text (readable anywhere; tuples come back as lists, keys as strings)."""

    name = "json"

    def dump(self, obj: Any, f: IO[bytes]) -> None:
        # iterencode yields small pieces; batch them so the file sees few, bounded writes.
        batch: list[str] = []
        pending = 0
        for piece in json.JSONEncoder(ensure_ascii=False).iterencode(obj):
            batch.append(piece)
            pending += len(piece)
            if pending >= _TEXT_CHUNK:
                f.write("".join(batch).encode("utf-8"))
                batch, pending = [], 0
        if batch:
            f.write("".join(batch).encode("utf-8"))

    def load(self, f: IO[bytes]) -> Any:
        return json.load(io.TextIOWrapper(f, encoding="utf-8"))  # type: ignore[arg-type]


_REGISTRY: dict[str, Serializer] = {}


def register(serializer: Serializer) -> Serializer:
    """Make ``serializer`` usable by name (``rh.blob(data, serializer=name)``); returns it."""
    if not isinstance(serializer, Serializer):
        raise TypeError(f"register() takes a Serializer instance, not {type(serializer).__name__}.")
    _REGISTRY[serializer.name] = serializer
    return serializer


def get(name: str) -> Serializer:
    """The serializer registered under ``name``; raises :class:`SerializationError` naming the known ones."""
    found = _REGISTRY.get(name) if isinstance(name, str) else None
    if found is None:
        raise SerializationError(f"Unknown serializer {name!r}; use one of: {', '.join(names())}.")
    if not found.available():
        raise SerializationError(
            f"The serializer {name!r} needs a package that is not installed here: pip install {name}."
        )
    return found


def names() -> list[str]:
    """Names of the registered serializers."""
    return sorted(_REGISTRY)


def default_for(obj: Any) -> str:
    """The serializer chosen when none is given: raw ``bytes`` for bytes-like data, ``text`` for str,
    ``pickle`` for everything else."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(obj, str):
        return "text"
    return "pickle"


for _s in (PickleSerializer(), CloudpickleSerializer(), BytesSerializer(), TextSerializer(), JSONSerializer()):
    register(_s)

__all__ = [
    "BytesSerializer",
    "CloudpickleSerializer",
    "JSONSerializer",
    "PickleSerializer",
    "SerializationError",
    "Serializer",
    "TextSerializer",
    "default_for",
    "get",
    "names",
    "register",
]
