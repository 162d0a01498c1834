"""The package's one retry policy, without Prefect: which errors a retry can cure, how long to wait between
attempts, and a loop that applies both.

Prefect's task engine applies it to every task (:mod:`rh_prefect.runtime.tasks` builds the task options from
this module); :func:`call` applies it where the engine runs outside Prefect's task engine - a command-line copy,
which is recorded as a task run afterwards (:mod:`rh_prefect.runtime.deferred`) so that it does not wait for
Prefect's import before its first byte. Only transient errors are retried (connection resets, timeouts,
throttling, 5xx), judged by type by :func:`is_transient`, which asks the storage systems; user errors such as a
bad name, a missing file or a refused credential fail at once, and so does an endpoint that never answered (a
wrong address or a host that is down: see :func:`rh_prefect.systems.base.first_contact_error`). A retried copy
resumes: the engine skips files already committed at the destination. Attempts and time limits are the
settings' ``retries`` and ``task_timeout``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

from rh_prefect import settings
from rh_prefect.errors import RhError, SystemUnavailable, TransferError
from rh_prefect.systems.base import system_classes

logger = logging.getLogger("rh_prefect.runtime.retry")
T = TypeVar("T")

#: pause before retry n (before jitter): BACKOFF_FACTOR * 2**n seconds (what Prefect's
#: ``exponential_backoff(backoff_factor=1)`` gives: 1, 2, 4, 8 s)
BACKOFF_FACTOR = 1.0
#: each pause is drawn around its value, at most this fraction above it (Prefect's ``retry_jitter_factor``)
JITTER_FACTOR = 0.5


def is_transient(exc: BaseException | None) -> bool:
    """True for errors a retry can cure (a lost connection, a timeout, throttling, a 5xx answer); False for user
    errors (bad input, missing data, refused access) and for an endpoint that never answered.

    Judged by type only, never by message text. The exception and then its causes (``__cause__``, else
    ``__context__``) are looked at in turn, and the first one that has a verdict decides: first the package's own
    errors, then each storage system (:meth:`rh_prefect.systems.base.System.is_transient`: S3 by botocore error
    code and HTTP status, GCS by status code and gcsfs/aiohttp types, SSH by asyncssh types and disconnect codes,
    local files by errno), then the generic rules for Python's own exception types.
    """
    seen = 0
    while exc is not None and seen < 10:
        verdict = _verdict(exc)
        if verdict is not None:
            return verdict
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


#: errnos of a network path that is down for now (ECONNRESET, ECONNREFUSED, ETIMEDOUT... are ConnectionError and
#: TimeoutError subclasses already)
_NETWORK_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN})
#: Python's own types that a retry does not cure: the input or the data is wrong, or access was refused
_USER_ERRORS = (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError,
                ValueError, TypeError, KeyError, LookupError)


def _verdict(exc: BaseException) -> Optional[bool]:
    """True / False when ``exc`` itself says whether a retry can help, None to look at its cause."""
    if isinstance(exc, TransferError):  # a copy's files failed: retry only if every one of them may succeed
        return bool(exc.failures) and all(is_transient(e) for e in exc.failures.values())
    if isinstance(exc, SystemUnavailable):  # False when the endpoint never answered: see SystemUnavailable
        return exc.transient
    if isinstance(exc, RhError):
        return False
    for system in system_classes():
        verdict = system.is_transient(exc)
        if verdict is not None:
            return verdict
    if isinstance(exc, _USER_ERRORS):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return True
    return None


def backoff(retries: int) -> list[float]:
    """The pauses (seconds, before jitter) before each of ``retries`` retries."""
    return [BACKOFF_FACTOR * 2**n for n in range(min(retries, 50))]


def jittered(delay: float) -> float:
    """``delay`` drawn at random in [delay * (1 - JITTER_FACTOR), delay * (1 + JITTER_FACTOR)] (mean: delay), so
    that many clients that failed together do not retry together."""
    return max(0.0, random.uniform(delay * (1 - JITTER_FACTOR), delay * (1 + JITTER_FACTOR)))


class AttemptTimeout(TimeoutError):
    """One attempt ran longer than the settings' ``task_timeout`` (a TimeoutError, so retried like Prefect's)."""


@dataclass
class Attempt:
    """One run of the work: wall-clock start and end (epoch seconds), and the error that ended it, if any."""

    started: float
    ended: float
    #: ``"TypeName: message"`` of the error that ended it; None when it succeeded
    error: Optional[str] = None
    #: the error was transient and another attempt followed
    retried: bool = False
    #: it ended by an interrupt or an exit (KeyboardInterrupt, SystemExit), not an error of the work
    crashed: bool = False


def call(fn: Callable[..., T], *args: Any, systems: Sequence[Any] = (), attempts: Optional[list[Attempt]] = None,
         **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` under the retry policy: up to the settings' ``retries`` more attempts after a
    transient error (after the pauses of :func:`backoff`, jittered), each attempt limited to ``task_timeout``
    seconds when called on the main thread (as Prefect's engine limits its tasks). The ``systems`` drop their
    connections before each retry: the failure may have broken them. Each attempt is appended to ``attempts``.
    Raises the error of the last attempt."""
    tuning = settings.current()
    delays = backoff(tuning.retries)
    attempts = [] if attempts is None else attempts
    for n in range(tuning.retries + 1):
        if n:
            for system in systems:
                system.reset()
        started = time.time()
        try:
            with _time_limit(tuning.task_timeout):
                result = fn(*args, **kwargs)
        except Exception as exc:
            retry = n < tuning.retries and is_transient(exc)
            attempts.append(Attempt(started, time.time(), error=f"{type(exc).__name__}: {exc}", retried=retry))
            logger.info("%s failed with %s: %s", getattr(fn, "__name__", "work"), type(exc).__name__,
                        "retrying" if retry else "not retrying")
            if not retry:
                raise
            time.sleep(jittered(delays[n]))
            continue
        except BaseException as exc:  # an interrupt: the work did not fail, it was stopped
            attempts.append(Attempt(started, time.time(), error=f"{type(exc).__name__}: {exc}", crashed=True))
            raise
        attempts.append(Attempt(started, time.time()))
        return result
    raise AssertionError("unreachable: the last attempt returns or raises")


@contextlib.contextmanager
def _time_limit(seconds: Optional[float]) -> Iterator[None]:
    """Raise :class:`AttemptTimeout` in the block after ``seconds``; only on the main thread (signals), as Prefect
    limits synchronous tasks. Elsewhere the block runs unlimited."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise AttemptTimeout(f"the work ran longer than task_timeout ({seconds:g} s)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
