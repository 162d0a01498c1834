"""How a private attribute of a storage library (or Prefect) is used: only after a check at first use, and never
silently past a change.

A :class:`Private` names one private attribute (say s3fs's ``S3FileSystem._copy_basic``) and the parameters our
call passes to it. The first use on a class checks that the attribute is there and still takes those parameters
(``inspect.signature``), caches the answer per class, and logs once at DEBUG which path is taken: the private one,
or the public fallback the caller has. A call that still fails with TypeError or AttributeError (the attribute
changed in a way the signature did not show) marks it broken for the process, logs a WARNING once, and the
caller repeats the work through its fallback. The per-backend modules (``_s3_private``, ``_gcs_private``,
``_ssh_private``, and ``runtime._prefect_private``) hold every such use; the README lists them and why they pay.
"""

from __future__ import annotations

import inspect
import logging
import threading
from typing import Any, Iterable, Optional

logger = logging.getLogger("rh_prefect.private")

_LOCK = threading.Lock()


class Private:
    """One private attribute of a library's class (or module), and what our call of it needs."""

    #: every declared private use, by "library:attribute" (tests force fallbacks through this)
    registry: dict[str, "Private"] = {}

    def __init__(self, library: str, attr: str, params: Iterable[str] = (), fallback: str = "",
                 why: str = "") -> None:
        self.library, self.attr, self.params = library, attr, tuple(params)
        self.name = attr.rsplit(".", 1)[-1]  # "Class.attr" is how it is shown; the lookup is by the last part
        self.fallback, self.why = fallback, why
        self._usable: dict[Any, bool] = {}  # per owner (class or module)
        self.forced_off = False  # tests: behave as a release without the attribute
        Private.registry[f"{library}:{attr}"] = self

    def __repr__(self) -> str:
        return f"<private {self.library} {self.attr}>"

    def usable(self, owner: Any) -> bool:
        """Whether ``owner`` (a class or module; an instance counts as its class) has the attribute with the
        parameters we pass. Checked once per owner; the choice is logged once at DEBUG."""
        if self.forced_off:
            return False
        key = owner if inspect.isclass(owner) or inspect.ismodule(owner) else type(owner)
        known = self._usable.get(key)
        if known is not None:
            return known
        ok, reason = self._check(key)
        with _LOCK:
            self._usable.setdefault(key, ok)
        name = getattr(key, "__qualname__", getattr(key, "__name__", repr(key)))
        if ok:
            logger.debug("%s %s.%s: private path", self.library, name, self.name)
        else:
            logger.debug("%s %s.%s %s: public fallback (%s)", self.library, name, self.name, reason, self.fallback)
        return ok

    def _check(self, owner: Any) -> tuple[bool, str]:
        target = inspect.getattr_static(owner, self.name, None)
        if target is None:
            return False, "is missing"
        if not self.params:
            return True, ""
        function = getattr(owner, self.name)
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            return False, "has no signature to check"
        names = signature.parameters
        open_ended = any(p.kind is p.VAR_KEYWORD for p in names.values())
        missing = [p for p in self.params if p not in names and not open_ended]
        if missing:
            return False, f"takes no {', '.join(missing)} any more"
        return True, ""

    def broke(self, owner: Any, exc: BaseException) -> None:
        """The call failed in a way only a changed attribute explains: use the fallback from now on."""
        key = owner if inspect.isclass(owner) or inspect.ismodule(owner) else type(owner)
        with _LOCK:
            was = self._usable.get(key, True)
            self._usable[key] = False
        if was:
            logger.warning("%s %s changed (%s: %s); rh_prefect uses its public fallback (%s) from now on. Please "
                           "report this with the library's version.", self.library, self.attr,
                           type(exc).__name__, exc, self.fallback)


def get(name: str) -> Optional[Private]:
    return Private.registry.get(name)
