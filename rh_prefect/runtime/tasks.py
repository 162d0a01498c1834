"""Prefect tasks around the engine, with the package's one retry policy.

Every copy and stream that touches the network runs as a Prefect task: inside a flow it shows up as a task
run in the UI; from plain Python it runs the same way (and retries the same way) without warning noise.
The policy itself (which errors a retry can cure: :func:`is_transient`; the pauses between attempts) lives in
:mod:`rh_prefect.runtime.retry`, without Prefect, so that work recorded as a task run afterwards (a command-line
copy: :mod:`rh_prefect.runtime.deferred`) is retried the same way. Attempts and time limits are the settings'
``retries`` and ``task_timeout``.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any, Callable, Optional, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, TaskRunContext
from prefect.context import SettingsContext, get_settings_context
from prefect.settings import PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW

from rh_prefect import settings, transfer
from rh_prefect.runtime import _prefect_exit, retry, stops
from rh_prefect.runtime.retry import is_transient

logger = logging.getLogger("rh_prefect.runtime.tasks")
T = TypeVar("T")


def _retry_condition(task: Task, task_run: Any, state: Any) -> bool:
    if stops.requested():  # the flow run was cancelled: whatever the error, do not start the copy again
        return False
    try:
        state.result()
    except BaseException as exc:  # the state re-raises the task's exception: classify it
        again = is_transient(exc)
        logger.info("%s failed with %s: %s", task.name, type(exc).__name__, "retrying" if again else "not retrying")
        return again
    return False


#: The one retry policy: exponential backoff with jitter, transient errors only, bounded in time. ``retries`` and
#: ``timeout_seconds`` are the settings' ``retries`` and ``task_timeout`` as read at import (Prefect builds its
#: task objects then); :func:`run` applies the values in force at each call.
RETRY_POLICY: dict[str, Any] = dict(
    retries=settings.current().retries,
    retry_delay_seconds=retry.backoff,  # as prefect.tasks.exponential_backoff(backoff_factor=1)
    retry_jitter_factor=retry.JITTER_FACTOR,
    retry_condition_fn=_retry_condition,
    timeout_seconds=settings.current().task_timeout,
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
        return settings.current().task_logs


logging.getLogger("prefect.task_runs").addFilter(_QuietOutsideFlows())


def retry_delays() -> list[float]:
    """The pauses (seconds, before jitter) between the attempts of the retry policy, as many as the settings'
    ``retries``: for retries that run outside Prefect's task engine (a table stream's reads)."""
    delays = RETRY_POLICY["retry_delay_seconds"]
    count = settings.current().retries
    if callable(delays):
        return list(delays(count))
    delays = list(delays) if isinstance(delays, (list, tuple)) else [delays] if delays else []
    return [delays[min(i, len(delays) - 1)] for i in range(count)] if delays else []


def rh_task(name: str) -> Callable[[Callable[..., T]], Task[..., T]]:
    """Decorator: a Prefect task with the package's retry policy."""
    return lambda fn: task(name=name, **RETRY_POLICY)(fn)


def in_prefect_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


_CONFIGURED: dict[tuple, Task[..., Any]] = {}


def _configured(t: Task[..., T]) -> Task[..., T]:
    """``t`` with the settings' ``retries`` and ``task_timeout`` in force now (its own were read at import), and
    without a timeout for calls off the main thread: Prefect cannot enforce a timeout in a worker thread, says so
    in a warning on every call, and that warning stalls each call by ~2 s."""
    tuning = settings.current()
    ours = t.retry_condition_fn is _retry_condition  # made with RETRY_POLICY, not e.g. a never-retried stream task
    retries = tuning.retries if ours else t.retries
    timeout = tuning.task_timeout if ours else t.timeout_seconds
    if threading.current_thread() is not threading.main_thread():
        timeout = None
    if t.retries == retries and t.timeout_seconds == timeout:
        return t
    key = (id(t), retries, timeout)
    found = _CONFIGURED.get(key)
    if found is None:
        # a copy, not with_options: with_options(timeout_seconds=None) would keep the timeout. Prefect takes the
        # pause before retry n from retry_delay_seconds[min(n, len - 1)], so a longer list or a shorter one is fine.
        found = _CONFIGURED[key] = copy.copy(t)
        found.retries, found.timeout_seconds = retries, timeout
    return found


def run(t: Task[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a task from anywhere: inside a flow it is a tracked task run; outside one it runs the same way
    (retries included) without Prefect's 'no flow run' logging warnings."""
    t = _configured(t)
    if in_prefect_run():
        return t(*args, **kwargs)
    try:
        if PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW.value() == "ignore":
            return t(*args, **kwargs)  # already quiet
        with _quiet_settings():
            return t(*args, **kwargs)
    finally:
        _prefect_exit.settle()


#: (id of the settings in force, those settings) -> the same settings with logging to the API outside a flow
#: run off. Prefect's temporary_settings builds that copy again on every call, ~35 ms of CPU (it validates all
#: settings): a process that copies a hundred times would pay seconds for one unchanged setting.
_QUIET: dict[int, tuple[Any, Any]] = {}


def _quiet_settings() -> SettingsContext:
    """A settings context like the one in force, except ``logging.to_api.when_missing_flow = "ignore"``."""
    current = get_settings_context()
    found = _QUIET.get(id(current.settings))
    if found is None or found[0] is not current.settings:  # a settings object we built from, kept alive with it
        quiet = _with_quiet_logging(current.settings)
        if len(_QUIET) > 8:  # settings changed often (tests): forget the old ones
            _QUIET.clear()
        found = _QUIET[id(current.settings)] = (current.settings, quiet)
    return SettingsContext(profile=current.profile, settings=found[1])


def _with_quiet_logging(current: Any) -> Any:
    """``current`` with ``logging.to_api.when_missing_flow = "ignore"``: copies of the three models on the way
    down (pydantic's model_copy, microseconds) where Prefect's copy_with_update validates every setting again
    (~35 ms, the largest part of a first copy's fixed cost after the S3 libraries' import)."""
    try:
        to_api = current.logging.to_api.model_copy(update={"when_missing_flow": "ignore"})
        quiet = current.model_copy(update={"logging": current.logging.model_copy(update={"to_api": to_api})})
    except AttributeError:  # the settings are laid out differently in this Prefect: its own (slower) way
        quiet = None
    if quiet is not None and PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW.value_from(quiet) == "ignore":
        return quiet
    return current.copy_with_update(updates={PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"})


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
    return transfer.copy_one(src, src_path, dst, dst_path)


@rh_task("rh-copy-part")
def copy_part_task(src: Any, src_root: str, dst: Any, dst_root: str, keys: list[str],
                   overwrite: bool = True) -> transfer.CopyReport:
    """Copy the listed files (one partition of a copy fanned out over many tasks, e.g. on a Dask cluster).

    Explicit parameters (no ``**kwargs``) so that ``copy_part_task.map(..., keys=partitions)`` maps over
    the partitions; the systems travel to the task runner's workers without their connections.
    """
    reset_on_retry(src, dst)
    return transfer.copy_tree(src, src_root, dst, dst_root, keys=keys, overwrite=overwrite)
