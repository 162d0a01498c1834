"""Secret values kept out of the storage libraries' debug logs, for the rest of the process.

Apart from the credential blocks (:mod:`rh_prefect.systems.credentials`, which are Prefect blocks) so that a
system built from the environment never imports Prefect.
"""

from __future__ import annotations

import logging
import threading
from typing import Iterable, Optional


#: Third-party loggers that print credentials at DEBUG level: botocore writes the session token into the
#: canonical request it signs (botocore.auth) and into the request headers it sends (botocore.endpoint).
LEAKY_LOGGERS = ("botocore.auth", "botocore.endpoint", "aiobotocore.endpoint")
MASK = "**********"


class _RedactSecrets(logging.Filter):
    """Replaces known secret values in the records of :data:`LEAKY_LOGGERS` (costs nothing unless DEBUG is on:
    a logger creates no record for a disabled level)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: frozenset[str] = frozenset()

    def filter(self, record: logging.LogRecord) -> bool:
        values = self.values
        if not values:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report, not ours
            return True
        if any(v in message for v in values):
            for value in values:
                message = message.replace(value, MASK)
            record.msg, record.args = message, None
        return True


_REDACT = _RedactSecrets()
_REDACT_LOCK = threading.Lock()


def redact_in_logs(values: Iterable[Optional[str]]) -> None:
    """Keep these secret values out of the storage libraries' debug logs, for the rest of the process."""
    new = {v for v in values if v and len(v) >= 8} - _REDACT.values  # a short value would mask ordinary text
    if not new:
        return
    with _REDACT_LOCK:
        _REDACT.values = _REDACT.values | new
        for name in LEAKY_LOGGERS:
            logger = logging.getLogger(name)
            if _REDACT not in logger.filters:
                logger.addFilter(_REDACT)
