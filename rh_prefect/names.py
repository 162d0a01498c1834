"""Resource names and their reversible mapping onto Prefect block document names.

Users name resources the Runhouse way:

* ``"my-folder"``       - in the current namespace (``@`` unless ``RH_PREFECT_NAMESPACE`` says otherwise)
* ``"@/my_folder"``     - in the user's default namespace ``@``
* ``"/ds/bert_preproc"`` - in the ``/ds`` namespace, which is itself a Folder named ``"/ds"``

Prefect block document names only allow ``[a-z0-9-]``, so the canonical name is encoded reversibly:

* the default-namespace prefix ``@/`` is dropped, so ``"@/my-folder"`` is the block ``my-folder`` (blocks
  created in the Prefect UI with plain names are therefore ordinary default-namespace resources);
* every other character is written as ``--`` plus a code letter (``/`` -> ``--s``, ``_`` -> ``--u``,
  ``.`` -> ``--d``, an upper-case letter ``X`` -> ``--cx``), and a literal ``-`` directly followed by another
  ``-`` is written ``--h`` so that the mapping stays injective.

``"/ds/bert_preproc"`` becomes ``--sds--sbert--upreproc``; decoding gives back exactly the canonical name.
The escape is a double hyphen because people rarely type one in a block name in the UI, while names such as
``model-0shot`` are common (an escape like ``-0s`` would read that as ``model/hot``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from rh_prefect.errors import InvalidName

DEFAULT_NAMESPACE = "@"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CODES = {"/": "s", "_": "u", ".": "d"}
_DECODE = {v: k for k, v in _CODES.items()}
# Prefect refuses longer block document names; keep a margin for the encoding.
MAX_ENCODED_LENGTH = 200


def current_namespace() -> str:
    """The namespace a bare name like ``"my-folder"`` lives in (``RH_PREFECT_NAMESPACE`` or ``@``)."""
    ns = os.environ.get("RH_PREFECT_NAMESPACE", DEFAULT_NAMESPACE).strip() or DEFAULT_NAMESPACE
    if ns != DEFAULT_NAMESPACE:
        ns = "/" + ns.strip("/")
    return ns


@dataclass(frozen=True)
class ResourceName:
    """A validated canonical resource name such as ``@/my-folder`` or ``/ds/bert_preproc``."""

    full: str

    @property
    def namespace(self) -> str:
        """``@`` or the absolute parent path (``/ds`` for ``/ds/bert_preproc``)."""
        head, _, _ = self.full.rpartition("/")
        return head or "/"

    @property
    def leaf(self) -> str:
        """The last path component: ``bert_preproc`` for ``/ds/bert_preproc``."""
        return self.full.rpartition("/")[2]

    @property
    def block_name(self) -> str:
        """The Prefect block document name this resource is stored under."""
        return encode(self.full)

    def __str__(self) -> str:
        return self.full


def parse(name: str) -> ResourceName:
    """Validate a user-given name and return its canonical form.

    >>> parse("my-folder").full
    '@/my-folder'
    >>> parse("/ds/bert_preproc").namespace
    '/ds'
    """
    if not isinstance(name, str):
        raise InvalidName(f"A resource name must be a string, got {type(name).__name__}; pass e.g. 'my-folder'.")
    raw = name
    if not name or name.strip() != name:
        raise InvalidName(f"Resource name {raw!r} is empty or has surrounding whitespace; pass e.g. 'my-folder'.")
    if name.startswith("@/"):
        full = name
    elif name.startswith("/"):
        full = name
    else:
        full = f"{current_namespace()}/{name}"
    segments = full.split("/")[1:]
    if not segments or any(not _SEGMENT.match(s) or s in (".", "..") for s in segments):
        raise InvalidName(
            f"Resource name {raw!r} is not valid: use path segments of letters, digits, '.', '_' and '-' "
            "(each starting with a letter or digit), e.g. 'my-folder', '@/my_table' or '/ds/bert_preproc'."
        )
    if len(encode(full)) > MAX_ENCODED_LENGTH:
        raise InvalidName(f"Resource name {raw!r} is too long; keep it under about 100 characters.")
    return ResourceName(full)


def encode(full: str) -> str:
    """Canonical name -> Prefect block document name (``[a-z0-9-]`` only, reversible)."""
    body = full[2:] if full.startswith(DEFAULT_NAMESPACE + "/") else full
    out: list[str] = []
    for i, ch in enumerate(body):
        if "a" <= ch <= "z" or "0" <= ch <= "9":
            out.append(ch)
        elif ch == "-":
            nxt = body[i + 1] if i + 1 < len(body) else ""
            out.append("--h" if nxt == "-" else "-")
        elif "A" <= ch <= "Z":
            out.append("--c" + ch.lower())
        elif ch in _CODES:
            out.append("--" + _CODES[ch])
        else:
            raise InvalidName(f"Character {ch!r} cannot be used in a resource name ({full!r}).")
    return "".join(out)


def decode(block_name: str) -> str:
    """Prefect block document name -> canonical name. Inverse of :func:`encode`."""
    out: list[str] = []
    i = 0
    while i < len(block_name):
        ch = block_name[i]
        if ch == "-" and block_name[i + 1 : i + 2] == "-" and i + 2 < len(block_name):
            code = block_name[i + 2]
            if code == "h":
                out.append("-")
                i += 3
                continue
            if code == "c" and i + 3 < len(block_name):
                out.append(block_name[i + 3].upper())
                i += 4
                continue
            if code in _DECODE:
                out.append(_DECODE[code])
                i += 3
                continue
        out.append(ch)
        i += 1
    body = "".join(out)
    return body if body.startswith("/") else f"{DEFAULT_NAMESPACE}/{body}"


def display(full: str) -> str:
    """The short form users see: ``@/my-folder`` -> ``my-folder`` when ``@`` is the current namespace."""
    ns = current_namespace()
    if ns == DEFAULT_NAMESPACE and full.startswith(ns + "/"):
        return full[len(ns) + 1 :]
    return full
