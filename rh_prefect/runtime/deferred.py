"""Work that runs first and is recorded as a Prefect task run afterwards, with its real times and outcome.

A command-line copy (``rh-prefect cp``) should not wait for Prefect: importing it takes ~1 s, more than a small
copy, and nothing of it is needed to move bytes. So :func:`run` calls the copy engine directly, under the package's
one retry policy (:func:`rh_prefect.runtime.retry.call`: the same transient errors retried after the same pauses,
each attempt limited to ``task_timeout``, as Prefect's task engine does for ``rh-copy-tree``), and then tells
Prefect what happened: a task run of the same name whose states carry the real wall-clock times - Pending and
Running when the first attempt started, AwaitingRetry and Running again around each retry, and Completed (with the
copy's summary, and the summary artifact a copy inside a run gets) or Failed (with the error) or Crashed (an
interrupt) when it ended.

Prefect 3 records task runs from the state-change events its task engine emits (the server's task-run recorder
builds the run from them, timestamps included); :func:`send` emits the same events, built by Prefect's own
``emit_task_run_state_change_event``, so the run looks in the UI exactly like one run by the engine.

Who sends them: when Prefect is already imported in this process (a saved name was resolved, or a program that
uses the library runs the command line in-process), :func:`record` sends them from here, which costs tens of
milliseconds. Otherwise a detached child process (``python -m rh_prefect.runtime.deferred``, its own session,
stdin/stdout/stderr closed) imports Prefect, finds the server the way the command line always has (the configured
one, else the embedded server, started if needed: :func:`rh_prefect.runtime.local_server.ensure`), sends them and
exits; the command returns at once. A record the child cannot send is described in one line of
``record.log`` in the embedded server's home directory (``~/.rh-prefect/server``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

from rh_prefect import settings
from rh_prefect.runtime import retry

logger = logging.getLogger("rh_prefect.runtime.deferred")
T = TypeVar("T")

#: longest state message sent (the first error of a copy of many files can be long)
MESSAGE_LIMIT = 4000
#: tag of every task run recorded this way, so they can be told from runs of the task engine
TAG = "rh-prefect-cli"


@dataclass
class Record:
    """What Prefect is told about one piece of work."""

    task_name: str
    attempts: list[retry.Attempt]
    #: the message of the final state: the work's summary when it succeeded, its error when not
    message: str
    retries: int
    retry_delays: list[float]
    tags: list[str] = field(default_factory=lambda: [TAG])
    #: ``{"markdown": ..., "description": ...}``: the summary artifact of the run, if any
    artifact: Optional[dict[str, str]] = None

    @property
    def succeeded(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].error is None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Record":
        data = json.loads(text)
        data["attempts"] = [retry.Attempt(**a) for a in data["attempts"]]
        return cls(**data)


def run(task_name: str, fn: Callable[..., T], *args: Any, what: str = "", systems: Sequence[Any] = (),
        summary: Callable[[T], str] = str, artifact: Optional[Callable[[T], dict[str, str]]] = None,
        **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` under the retry policy, then recorded as the task run ``task_name`` (see the module
    docstring); returns its result or raises its error, after handing over the record either way. ``what``: what
    the work is, for the final state's message (never a secret); ``systems``: reset before each retry;
    ``summary`` / ``artifact``: the completed state's message and summary artifact, made from the result."""
    attempts: list[retry.Attempt] = []
    tuning = settings.current()

    def record_of(message: str, made: Optional[dict[str, str]] = None) -> Record:
        message = f"{message}: {what}" if what else message
        return Record(task_name, attempts, message[:MESSAGE_LIMIT], tuning.retries, retry.backoff(tuning.retries),
                      artifact=made)

    try:
        result = retry.call(fn, *args, systems=systems, attempts=attempts, **kwargs)
    except BaseException:
        if attempts:  # else it failed before any attempt ran: nothing ran to record
            record(record_of(attempts[-1].error or "failed"))
        raise
    record(record_of(summary(result), artifact(result) if artifact else None))
    return result


def record(rec: Record) -> None:
    """Send ``rec`` to Prefect: from this process when Prefect is loaded here already, else from a detached child.
    Never raises: the work is done, and a record that cannot be sent must not turn it into a failure."""
    try:
        if "prefect" in sys.modules:
            send(rec)
        else:
            _hand_over(rec)
    except Exception as exc:  # a server that went away, a child that could not start: say so, keep the result
        logger.warning("could not record the task run %r in Prefect: %s: %s", rec.task_name, type(exc).__name__, exc)


def _hand_over(rec: Record) -> None:
    """Start the detached child that sends ``rec``; return as soon as it runs."""
    env = dict(os.environ)
    # the child imports this very package, wherever this process found it (rh_prefect/runtime/deferred.py)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    child = subprocess.Popen([sys.executable, "-m", "rh_prefect.runtime.deferred"], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, close_fds=True,
                             start_new_session=True)  # its own session: a Ctrl-C in the shell does not reach it
    assert child.stdin is not None
    # Small (messages are cut at MESSAGE_LIMIT): the pipe takes it whole, without waiting for the child to read.
    child.stdin.write(rec.to_json().encode())
    child.stdin.close()
    child.returncode = 0  # not waited for: keeps Popen's destructor from warning about a child still running


def send(rec: Record) -> str:
    """Emit the task run's state-change events and create its artifact; returns the task run id. Imports
    Prefect."""
    from datetime import datetime, timezone

    from prefect.client.schemas.objects import TaskRun, TaskRunPolicy
    from prefect.states import AwaitingRetry, Completed, Crashed, Failed, Pending, Running
    from prefect.utilities.engine import emit_task_run_state_change_event

    from rh_prefect.runtime import _prefect_exit

    def at(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, tz=timezone.utc)

    run_id = uuid.uuid4()
    first = rec.attempts[0]
    pending = Pending(timestamp=at(first.started))
    task_run = TaskRun(
        id=run_id, name=rec.task_name, flow_run_id=None, task_key=f"{rec.task_name}-{TAG}",
        dynamic_key=f"{rec.task_name}-{TAG}-{run_id.hex}", tags=rec.tags,
        empirical_policy=TaskRunPolicy(retries=rec.retries, retry_delay=rec.retry_delays,
                                       retry_jitter_factor=retry.JITTER_FACTOR),
        expected_start_time=pending.timestamp, state=pending, state_id=pending.id, state_type=pending.type,
        state_name=pending.name, created=pending.timestamp, updated=pending.timestamp,
    )
    last_state: Any = None
    last_event: Any = None

    def move(state: Any) -> None:
        nonlocal last_state, last_event
        if last_state is not None and last_state.is_running():
            task_run.total_run_time += state.timestamp - last_state.timestamp
        if state.is_running():
            task_run.run_count += 1
            task_run.start_time = task_run.start_time or state.timestamp
        if state.is_final():
            task_run.end_time = state.timestamp
        state.state_details.task_run_id = run_id
        task_run.state, task_run.state_id = state, state.id
        task_run.state_type, task_run.state_name = state.type, state.name
        last_event = emit_task_run_state_change_event(task_run=task_run, initial_state=last_state,
                                                      validated_state=state, follows=last_event)
        last_state = state

    move(pending)
    for i, attempt in enumerate(rec.attempts):
        move(Running(timestamp=at(attempt.started + (1e-6 if i == 0 else 0))))
        if attempt.retried:
            nxt = rec.attempts[i + 1].started if i + 1 < len(rec.attempts) else attempt.ended
            move(AwaitingRetry(timestamp=at(attempt.ended), scheduled_time=at(nxt), message=attempt.error))
    last = rec.attempts[-1]
    if last.error is None:
        move(Completed(timestamp=at(last.ended), message=rec.message))
    elif last.crashed:
        move(Crashed(timestamp=at(last.ended), message=f"Execution was interrupted: {rec.message}"))
    else:
        move(Failed(timestamp=at(last.ended), message=f"Task run encountered an exception {rec.message}"))
    if rec.artifact:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactCreate

        with get_client(sync_client=True) as client:
            client.create_artifact(ArtifactCreate(type="markdown", data=rec.artifact["markdown"],
                                                  description=rec.artifact.get("description"), task_run_id=run_id))
    _prefect_exit.settle()
    return str(run_id)


def _answers(api_url: str, timeout: float = 10.0) -> bool:
    """True when something answers HTTP at ``api_url`` (any status: an API may want a key for its health check)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except OSError:  # refused, no route, no answer in time, a name that does not resolve
        return False
    return True


def _child_main() -> int:
    """The detached child: read a record on stdin, find the Prefect server, send it."""
    text = sys.stdin.read()
    from rh_prefect.runtime import local_server

    try:
        rec = Record.from_json(text)
        api_url = local_server.ensure()  # before Prefect is imported: it reads its settings once
        if not _answers(api_url):  # not worth Prefect's import and its client's retries
            raise ConnectionError(f"the Prefect API at {api_url} does not answer")
        send(rec)
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=30)  # a detached process can wait for its events to leave
    except Exception as exc:  # nobody to tell but the log
        try:
            path = local_server.home() / "record.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as log:
                log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} could not record a task run "
                          f"({text[:200]!r}...): {type(exc).__name__}: {exc}\n")
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a detached child by _hand_over
    sys.exit(_child_main())
