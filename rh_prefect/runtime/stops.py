"""Stopping a flow run that runs inside a long-lived process (the cluster's in-process worker, see
:mod:`rh_prefect.runtime.inprocess`), where there is no process of its own to kill.

The worker opens a stop signal for each flow run it runs in a thread (:func:`opened`) and sets it when the run is
cancelled from Prefect (:func:`request`). Code inside the run asks :func:`current` for its signal: the copy's
destination system refuses new files once it is set (``System.stoppable``), and the retry policy
(:mod:`rh_prefect.runtime.tasks`) does not retry a stopped copy. Outside such a worker :func:`current` is None.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Optional

_SIGNALS: dict[str, threading.Event] = {}
_LOCK = threading.Lock()


@contextlib.contextmanager
def opened(flow_run_id: Any) -> Iterator[threading.Event]:
    """A stop signal for ``flow_run_id`` while the block runs (the worker's side)."""
    key = str(flow_run_id)
    signal = threading.Event()
    with _LOCK:
        _SIGNALS[key] = signal
    try:
        yield signal
    finally:
        with _LOCK:
            if _SIGNALS.get(key) is signal:
                del _SIGNALS[key]


def request(flow_run_id: Any) -> bool:
    """Ask the run ``flow_run_id`` to stop; False when no run of that id is open in this process."""
    with _LOCK:
        signal = _SIGNALS.get(str(flow_run_id))
    if signal is None:
        return False
    signal.set()
    return True


def current() -> Optional[threading.Event]:
    """The stop signal of the flow run this code runs in, when a worker of this process opened one; else None."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return None
    with _LOCK:
        return _SIGNALS.get(str(ctx.flow_run.id))


def requested() -> bool:
    """True inside a flow run that was asked to stop."""
    signal = current()
    return signal is not None and signal.is_set()


__all__ = ["current", "opened", "request", "requested"]
