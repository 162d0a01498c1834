"""Prefect tasks around the engine, with the package's one retry policy.

Every copy and stream that touches the network runs as a Prefect task: inside a flow it shows up as a task
run in the UI; from plain Python it runs the same way (and retries the same way) without warning noise.
Only transient errors are retried (connection resets, timeouts, throttling, 5xx); user errors such as a bad
name, a missing file or a refused credential fail at once. A retried copy resumes: the engine skips files
already committed at the destination.
"""

from __future__ import annotations

import copy
import errno
import logging
import re
import threading
from typing import Any, Callable, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, TaskRunContext
from prefect.settings import PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings
from prefect.tasks import exponential_backoff

from rh_prefect import transfer

from rh_prefect.runtime import _prefect_exit
from rh_prefect.errors import RhError, SystemUnavailable, TransferError

logger = logging.getLogger("rh_prefect.runtime.tasks")
T = TypeVar("T")

_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
                     errno.EHOSTUNREACH, errno.ENETUNREACH}
# "connection not open": asyncssh's SFTPNoConnection, raised by a reader still holding a connection that dropped
_TRANSIENT_WORDS = ("throttl", "slowdown", "slow down", "timeout", "timed out", "connection reset",
                    "connection lost", "connection closed", "connection not open", "temporarily unavailable",
                    "service unavailable", "internal error", "too many requests", "broken pipe", "server disconnected",
                    "cannot connect", "connection refused", "eof")
#: HTTP statuses a retry can cure, as whole numbers: a path such as ``/tmp/pytest-503/...`` or a hex id
#: containing "500" in an error message says nothing about the server
_TRANSIENT_STATUS = re.compile(r"(?<![\w.-])(?:500|502|503|504|429)(?![\w.-])")


def is_transient(exc: BaseException | None) -> bool:
    """True for errors a retry can cure; False for user errors (bad input, missing data, refused access)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, TransferError):
            return bool(exc.failures) and all(is_transient(e) for e in exc.failures.values())
        if isinstance(exc, SystemUnavailable):
            return True
        if isinstance(exc, RhError):
            return False
        if isinstance(exc, (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, ValueError,
                            TypeError, KeyError)):
            return False
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
            return True
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is not None:
            return False  # a local file operation's error (ENAMETOOLONG, ENOSPC, ...): its errno has said it all
        status = getattr(getattr(exc, "response", None), "get", lambda *_: None)("ResponseMetadata") or {}
        code = status.get("HTTPStatusCode") if isinstance(status, dict) else None
        if isinstance(code, int) and (code >= 500 or code == 429):
            return True
        name = type(exc).__name__.lower()
        text = f"{name} {exc}".lower()
        if any(w in text for w in _TRANSIENT_WORDS) or _TRANSIENT_STATUS.search(text) or \
                any(w in name for w in ("disconnect", "connectionlost", "channelopen")):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _retry_condition(task: Task, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except BaseException as exc:  # the state re-raises the task's exception: classify it
        retry = is_transient(exc)
        logger.info("%s failed with %s: %s", task.name, type(exc).__name__, "retrying" if retry else "not retrying")
        return retry
    return False


#: The one retry policy: exponential backoff with jitter, transient errors only, bounded in time.
RETRY_POLICY: dict[str, Any] = dict(
    retries=4,
    retry_delay_seconds=exponential_backoff(backoff_factor=1),
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_condition,
    timeout_seconds=6 * 3600,
    cache_policy=NO_CACHE,
    log_prints=False,
)


class _QuietOutsideFlows(logging.Filter):
    """Outside a flow, a call such as ``folder.to("s3", ...)`` is a plain function call to its user: Prefect's
    task-run lines for it ("Finished in state Completed()") are noise, and when it fails the exception reaches the
    caller, so Prefect's ERROR lines about it (a user's own mistake, say a schema mismatch, logged before it is
    raised) are said twice. Those lines of rh-prefect's own task runs outside a flow are dropped, unless
    ``settings.task_logs``. Inside a flow every line stays: the run's logs in the UI are the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(getattr(record, "task_name", "")).startswith("rh-") or getattr(record, "flow_run_id", None):
            return True
        from rh_prefect import settings

        return settings.current().task_logs


logging.getLogger("prefect.task_runs").addFilter(_QuietOutsideFlows())


def rh_task(name: str) -> Callable[[Callable[..., T]], Task[..., T]]:
    """Decorator: a Prefect task with the package's retry policy."""
    return lambda fn: task(name=name, **RETRY_POLICY)(fn)


def in_prefect_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


_UNTIMED: dict[int, Task[..., Any]] = {}


def _untimed(t: Task[..., T]) -> Task[..., T]:
    """The same task without its timeout, for calls off the main thread: Prefect cannot enforce a timeout in a
    worker thread, says so in a warning on every call, and that warning stalls each call by ~2 s."""
    if t.timeout_seconds is None or threading.current_thread() is threading.main_thread():
        return t
    untimed = _UNTIMED.get(id(t))
    if untimed is None:
        untimed = _UNTIMED[id(t)] = copy.copy(t)  # with_options(timeout_seconds=None) would keep the timeout
        untimed.timeout_seconds = None
    return untimed


def run(t: Task[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a task from anywhere: inside a flow it is a tracked task run; outside one it runs the same way
    (retries included) without Prefect's 'no flow run' logging warnings."""
    t = _untimed(t)
    if in_prefect_run():
        return t(*args, **kwargs)
    try:
        if PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW.value() == "ignore":
            return t(*args, **kwargs)  # already quiet; temporary_settings copies all settings (~20 ms a call)
        with temporary_settings({PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}):
            return t(*args, **kwargs)
    finally:
        _prefect_exit.settle()


def reset_on_retry(*systems: Any) -> None:
    """Inside a retried task run, drop the systems' connections first: the failure may have broken them."""
    ctx = TaskRunContext.get()
    if ctx is not None and ctx.task_run.run_count > 1:
        for system in systems:
            system.reset()


@rh_task("rh-copy-tree")
def copy_tree_task(src: Any, src_root: str, dst: Any, dst_root: str, **kwargs: Any) -> transfer.CopyReport:
    """Copy a directory tree between systems (see :func:`rh_prefect.transfer.copy_tree`)."""
    reset_on_retry(src, dst)
    return transfer.copy_tree(src, src_root, dst, dst_root, **kwargs)


@rh_task("rh-copy-file")
def copy_file_task(src: Any, src_path: str, dst: Any, dst_path: str) -> int:
    """Copy one file between systems, committed atomically."""
    reset_on_retry(src, dst)
    size = src.fs.size(src_path)
    return transfer.copy_file(src, src_path, dst, dst_path, size, src.same_store(dst))


@rh_task("rh-copy-part")
def copy_part_task(src: Any, src_root: str, dst: Any, dst_root: str, keys: list[str],
                   overwrite: bool = True) -> transfer.CopyReport:
    """Copy the listed files (one partition of a copy fanned out over many tasks, e.g. on a Dask cluster).

    Explicit parameters (no ``**kwargs``) so that ``copy_part_task.map(..., keys=partitions)`` maps over
    the partitions; the systems travel to the task runner's workers without their connections.
    """
    reset_on_retry(src, dst)
    return transfer.copy_tree(src, src_root, dst, dst_root, keys=keys, overwrite=overwrite)
