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
