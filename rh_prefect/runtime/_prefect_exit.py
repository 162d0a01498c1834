"""Quiet exits for programs that use Prefect through rh_prefect.

Prefect sends events (block loads, task runs) from a background queue and, when the interpreter exits with
that queue non-empty, logs "EventsWorker - Still processing items" - on every short script or CLI call. Its
exit hook runs at threading shutdown, before any ``atexit`` handler could help, so instead each rh_prefect
operation that emits events lets the queue settle before returning (milliseconds on a healthy server).
"""

from __future__ import annotations

import threading


def settle(timeout: float = 2.0) -> None:
    """Wait, at most ``timeout`` seconds per queue (a vanished server must not hang us), for pending events."""
    from rh_prefect.runtime import _prefect_private

    # Prefect's private list of queue services, EventsWorkers only: the batched APILogWorker never marks its items
    # done, so waiting for its queue to join would always take the full timeout.
    for worker in _prefect_private.events_workers():
        waiter = threading.Thread(target=worker.wait_until_empty, daemon=True)
        waiter.start()
        waiter.join(timeout)


_hooked = False
_hook_lock = threading.Lock()


def settle_at_exit() -> None:
    """Let the events queues settle when the interpreter exits, before Prefect drains them: for events sent from
    plain code, which cannot wait for them itself without slowing every call. Call it after Prefect's events queue
    started (after an ``emit_event``): threading's exit hooks run last-registered-first, so this one then runs
    before the queue's own."""
    global _hooked
    if _hooked:
        return
    with _hook_lock:
        if _hooked:
            return
        _hooked = True
        try:
            threading._register_atexit(settle)  # type: ignore[attr-defined]
        except Exception:  # shutting down already, or no such hook on this Python: Prefect still drains at exit
            pass
