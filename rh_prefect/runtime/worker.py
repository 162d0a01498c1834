"""Prefect workers on clusters: start, stop and check the worker that serves a cluster's work queue.

A cluster with a ``work_queue`` can run copies of its own data (``folder.to("s3", ...)``) as flow runs on a
Prefect worker living on the cluster host, so the bytes never pass through the caller. The worker is rh-prefect's
long-lived one (:mod:`rh_prefect.runtime.inprocess`, type ``rh-inprocess``): it runs the package's copies in its
own process, woken by the server's events. This module starts it over SSH - detached with ``setsid nohup`` under
a shell loop that starts it again if it dies, logging to a file, its PID in a pid file, so a second start finds
the running one instead of starting another - and asks the Prefect API whether a worker is online for a queue
(routing in :mod:`rh_prefect.runtime.dispatch` depends on that answer).

The worker started here is what this command starts by hand on the cluster::

    PREFECT_API_URL=http://<server>:4200/api \
        prefect worker start --pool rh-pool --work-queue <queue> --type rh-inprocess

Example:
    ```python
    import rh_prefect as rh
    c = rh.cluster(name="rh-gpu", host="10.0.0.5", user="ubuntu", ssh_key="~/.ssh/id_ed25519",
                   work_queue="rh-gpu", prefect_bin="/opt/venv/bin/prefect", python="/opt/venv/bin/python",
                   project_dir="/opt/rh-prefect", api_url="http://10.0.0.1:4200/api").save()
    info = c.start_worker()      # idempotent: returns the running worker if there is one
    print(info)                  # worker rh-rh-gpu for queue 'rh-gpu' on 10.0.0.5 (pid 4242, log ...)
    c.worker_online()            # True once the worker polls its queue
    c.stop_worker()
    ```
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Optional

from rh_prefect import settings
from rh_prefect.errors import InvalidArgument, SystemUnavailable
from rh_prefect.systems.ssh import SSHSystem

#: A cluster, as this module sees it: SSH settings (``rh_prefect.systems.ssh.SSHSettings``) plus the worker fields
#: ``name``, ``work_queue``, ``work_pool``, ``prefect_bin``, ``project_dir`` and ``api_url`` (the Cluster block).
Cluster = Any

logger = logging.getLogger("rh_prefect.runtime.worker")

#: The work pool that the package's transfer deployments live in; one work queue per cluster.
DEFAULT_POOL = "rh-pool"
#: The worker type started on clusters and given to the pools rh-prefect creates: the long-lived worker of
#: :mod:`rh_prefect.runtime.inprocess` (a process worker that runs the package's copies in its own process).
WORKER_TYPE = "rh-inprocess"
#: A worker that dies after running this long is started again by the shell that :func:`start` leaves on the host
#: (a crash, an out-of-memory kill); one that exits sooner (a wrong command, a broken install) is not.
RESTART_AFTER_SECONDS = 5
#: Where a worker's pid file and log live on the host that runs it (``$HOME`` of the login user).
STATE_DIR = "$HOME/.cache/rh_prefect/workers"
# A queue counts as served when a worker polled it within settings.worker_poll_freshness seconds (the Prefect
# server's own READY window). Workers started here poll every settings.worker_query_seconds (2 s;
# PREFECT_WORKER_QUERY_SECONDS, whose Prefect default is 10 s). The rh-inprocess worker is woken by the server's
# events as soon as a run is scheduled, so the poll only matters when its event stream is down (a process worker
# waited for it: 3.5-8.5 s at 10 s, 0.1-2.6 s at 2 s, measured with tests/bench/bench_colocated.py).


@dataclass
class WorkerInfo:
    """A worker process on a host: what :func:`start` found or started."""

    host: str
    queue: str
    pool: str
    name: str
    pid: int
    log_path: str
    started: bool  # False when an already running worker was found

    def __str__(self) -> str:
        verb = "started" if self.started else "already running"
        return (f"worker {self.name} for queue {self.queue!r} on {self.host} ({verb}, pid {self.pid}, "
                f"log {self.log_path})")


def worker_name(queue: str) -> str:
    """The worker name used for a queue (shown in the UI and on each flow run it executes)."""
    return f"rh-{queue}"


def worker_command(queue: str, pool: str = DEFAULT_POOL, prefect_bin: str = "prefect",
                   python: Optional[str] = None) -> str:
    """The shell command that runs the worker for ``queue`` in the foreground (what :func:`start` detaches): an
    ``rh-inprocess`` worker, started by ``python -m prefect`` when the cluster names its ``python`` (the working
    directory then comes first on the module path, as for a flow run), else by ``prefect_bin``."""
    launcher = [python, "-m", "prefect"] if python else [prefect_bin]
    return shlex.join([*launcher, "worker", "start", "--pool", pool, "--work-queue", queue,
                       "--name", worker_name(queue), "--type", WORKER_TYPE])


def start_hint(queue: str, pool: str = DEFAULT_POOL, cluster_name: Optional[str] = None) -> str:
    """How to start a worker for ``queue``: the Python call and the equivalent command."""
    who = f"rh.cluster({cluster_name!r})" if cluster_name else "cluster"
    return (f"start one with `{who}.start_worker()`, or run `prefect worker start --pool {pool} "
            f"--work-queue {queue} --type {WORKER_TYPE}` on the cluster (with PREFECT_API_URL pointing at this "
            "Prefect server)")


#: Set in the environment of a worker started by :func:`start`: the identity of the cluster it runs on, so copies
#: it runs read that cluster's files from its own disk instead of over SSH to itself.
COLOCATED_ENV = "RH_PREFECT_WORKER_CLUSTER"
#: ... and the name that cluster is saved under, when it is (several saved Clusters may share one host and user)
COLOCATED_NAME_ENV = "RH_PREFECT_WORKER_CLUSTER_NAME"


def colocated_identity(system: SSHSystem) -> str:
    """How a worker recognises the cluster it runs on (host, port and login user of its SSH system)."""
    return "|".join(str(part) for part in system.identity())


def runs_on(system: Any) -> bool:
    """True when this process is a worker started on the host that ``system`` (an SSH system) reaches."""
    here = os.environ.get(COLOCATED_ENV)
    return bool(here) and isinstance(system, SSHSystem) and colocated_identity(system) == here


# -- the Prefect API side ------------------------------------------------------------------------------------


def ensure_queue(queue: str, pool: str = DEFAULT_POOL) -> None:
    """Create the work pool (type :data:`WORKER_TYPE`) and its work queue on the Prefect server if they do not exist
    yet. A pool created as a ``process`` pool (by hand, or by an older rh-prefect) keeps working: the rh-inprocess
    worker serves it too, with a warning from Prefect that the types differ."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            # The process worker's template is what makes job variables (working_dir, env, command) work per run;
            # the rh-inprocess worker is a process worker for every run it does not run in its own process.
            template = ProcessWorker.get_default_base_job_template()
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type=WORKER_TYPE, base_job_template=template))
            except ObjectAlreadyExists:  # created concurrently: the outcome we wanted
                pass
        try:
            client.read_work_queue_by_name(queue, work_pool_name=pool)
        except ObjectNotFound:
            try:
                client.create_work_queue(name=queue, work_pool_name=pool)
            except ObjectAlreadyExists:
                pass


_SEEN_ONLINE: dict[tuple[str, str, str], float] = {}


def is_online(queue: str, pool: str = DEFAULT_POOL, freshness: Optional[float] = None, *,
              reuse: float = 0.0) -> bool:
    """True when a worker serves ``queue``: the queue was polled within ``freshness`` seconds and a worker of
    the pool is heartbeating (``ONLINE``). Both come from the Prefect API, so this works for any worker,
    however it was started. ``reuse``: a True answer this process got less than ``reuse`` seconds ago stands
    (two API requests saved; a dispatch to a worker that died since waits ``pickup_timeout``, then asks again)."""
    from prefect.settings import PREFECT_API_URL

    key = (str(PREFECT_API_URL.value()), queue, pool)
    if reuse > 0 and time.monotonic() - _SEEN_ONLINE.get(key, -1e9) < reuse:
        return True
    online = _ask_online(queue, pool, freshness)
    if online:
        _SEEN_ONLINE[key] = time.monotonic()
    else:
        _SEEN_ONLINE.pop(key, None)
    return online


def _ask_online(queue: str, pool: str, freshness: Optional[float]) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkerStatus
    from prefect.exceptions import ObjectNotFound

    if freshness is None:
        freshness = settings.current().worker_poll_freshness
    with get_client(sync_client=True) as client:
        try:
            wq = client.read_work_queue_by_name(queue, work_pool_name=pool)
        except ObjectNotFound:
            return False
        if wq.last_polled is None or _age(wq.last_polled) > freshness:
            return False
        try:
            workers = client.read_workers_for_work_pool(pool)
        except ObjectNotFound:
            return False
    return any(w.status == WorkerStatus.ONLINE for w in workers)


def wait_online(queue: str, pool: str = DEFAULT_POOL, timeout: float = 60.0, interval: float = 0.5) -> float:
    """Wait until :func:`is_online`; returns the seconds waited, raises SystemUnavailable after ``timeout``."""
    began = time.monotonic()
    while not is_online(queue, pool):
        if time.monotonic() - began > timeout:
            raise SystemUnavailable(f"No worker came online for work queue {queue!r} of pool {pool!r} "
                                    f"within {timeout:.0f} s.")
        time.sleep(interval)
    return time.monotonic() - began


def _forget_worker(name: str, pool: str) -> None:
    """Remove a stopped worker's record so the API stops counting it as online (it would for ~90 s)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        response = client.request("DELETE", "/work_pools/{work_pool_name}/workers/{name}",
                                  path_params={"work_pool_name": pool, "name": name})
        del response


def _age(when: _dt.datetime) -> float:
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return (_dt.datetime.now(_dt.timezone.utc) - when).total_seconds()


# -- the host side: the same shell script over SSH or on this machine -------------------------------------


class _Host:
    label: str

    def run(self, script: str, timeout: float = 60.0) -> tuple[int, str, str]:
        raise NotImplementedError


class _SSHHost(_Host):
    """Runs shell snippets on a cluster over its (shared, pooled) SSH connection."""

    def __init__(self, cluster: Cluster) -> None:
        self.system = SSHSystem(cluster=cluster)
        self.label = self.system.describe()

    def run(self, script: str, timeout: float = 60.0) -> tuple[int, str, str]:
        from fsspec.asyn import sync

        fs = self.system.fs
        try:
            result = sync(fs.loop, fs.client.run, script, check=False, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            self.system.reset()
            raise SystemUnavailable(f"Could not run a command on {self.label}: {type(exc).__name__}: {exc}") from None
        return int(result.exit_status or 0), str(result.stdout or ""), str(result.stderr or "")


class _LocalHost(_Host):
    label = "this machine"

    def run(self, script: str, timeout: float = 60.0) -> tuple[int, str, str]:
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=timeout)
        return done.returncode, done.stdout, done.stderr


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_env(env: dict[str, str]) -> None:
    bad = [k for k in env if not isinstance(k, str) or not _ENV_NAME.fullmatch(k)]
    if bad:
        raise InvalidArgument(f"Environment variable names {bad!r} for the worker are not valid shell names; use "
                              "letters, digits and '_' (not starting with a digit).")


def _tag(queue: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", queue)


def _start_script(queue: str, pool: str, command: str, workdir: Optional[str], env: dict[str, str]) -> str:
    tag = _tag(queue)
    _check_env(env)
    # Every value that comes from the user is shell-quoted: queue names, paths and values reach `sh -c`.
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    cd = f"cd {shlex.quote(workdir)} || exit 3\n" if workdir else 'cd "$HOME"\n'
    # The worker runs under a small shell loop that starts it again when it dies after running a while (it runs
    # copies in its own process; the new one re-queues the runs the dead one left, see runtime.inprocess). The
    # loop is the session leader whose PID is recorded: stopping the session stops both.
    supervised = f"""while :; do
  began=$(date +%s)
  {command}
  rc=$?
  [ "$rc" -eq 0 ] && exit 0
  if [ $(( $(date +%s) - began )) -lt {RESTART_AFTER_SECONDS} ]; then
    echo "--- the worker exited ($rc) at once: not started again"; exit "$rc"
  fi
  echo "--- $(date -u +%FT%TZ) the worker exited ($rc); starting it again"
  sleep 1
done"""
    # A lock makes concurrent starts agree on one worker; the pid file is trusted only when that PID still
    # runs a prefect worker (PIDs get reused). The worker must not inherit the lock's descriptor (9>&-).
    return f"""set -u
state="{STATE_DIR}"; mkdir -p "$state"
pidf="$state/{tag}.pid"; log="$state/{tag}.log"
exec 9>"$state/{tag}.lock"
if command -v flock >/dev/null 2>&1; then flock -w 30 9; fi
if [ -s "$pidf" ]; then
  pid=$(cat "$pidf")
  if kill -0 "$pid" 2>/dev/null && ps -ww -p "$pid" -o args= | grep -q "worker start"; then
    echo "running $pid $log"; exit 0
  fi
fi
{cd}{exports}printf '%s\\n' "--- $(date -u +%FT%TZ) starting worker for queue "{shlex.quote(queue)} >> "$log"
setsid nohup sh -c {shlex.quote(supervised)} </dev/null >>"$log" 2>&1 9>&- &
pid=$!
echo "$pid" > "$pidf"
sleep 1
if ! kill -0 "$pid" 2>/dev/null; then echo "exited"; tail -n 30 "$log"; rm -f "$pidf"; exit 4; fi
echo "started $pid $log"
"""


def _stop_script(queue: str, timeout: float) -> str:
    tag = _tag(queue)
    tries = max(1, int(timeout * 5))
    # SIGTERM to the whole process group (setsid made the supervising shell its leader): the shell, the worker and
    # its flow-run subprocesses; wait until none is left (the shell dies at once, the worker shuts down in a
    # second or two), SIGKILL whatever is left after the timeout.
    return f"""state="{STATE_DIR}"; pidf="$state/{tag}.pid"
[ -s "$pidf" ] || {{ echo "none"; exit 0; }}
pid=$(cat "$pidf")
if ! kill -0 "-$pid" 2>/dev/null && ! kill -0 "$pid" 2>/dev/null; then
  rm -f "$pidf" "$state/{tag}.lock"; echo "gone"; exit 0
fi
kill -TERM "-$pid" 2>/dev/null || kill -TERM "$pid"
i=0
while {{ kill -0 "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null; }} && [ $i -lt {tries} ]; do
  sleep 0.2; i=$((i+1))
done
kill -KILL "-$pid" 2>/dev/null
rm -f "$pidf" "$state/{tag}.lock"; echo "stopped $pid"
"""


def _status_script(queue: str) -> str:
    tag = _tag(queue)
    return f"""state="{STATE_DIR}"; pidf="$state/{tag}.pid"
if [ -s "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then echo "running $(cat "$pidf") $state/{tag}.log"
else echo "none"; fi
"""


def _api_url(explicit: Optional[str]) -> str:
    if explicit:
        return explicit
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise SystemUnavailable(
            "No Prefect API URL to give the worker: set PREFECT_API_URL (or start the local server with "
            "`rh-prefect server up`), or set the cluster's api_url to the server address the cluster can reach."
        )
    return url


def _launch(host: _Host, queue: str, pool: str, prefect_bin: str, workdir: Optional[str], api_url: str,
            env: Optional[dict[str, str]], wait: bool, timeout: float, python: Optional[str] = None) -> WorkerInfo:
    full_env = {"PREFECT_API_URL": api_url, "PREFECT_WORKER_QUERY_SECONDS": f"{settings.current().worker_query_seconds:g}", **(env or {})}
    _check_env(full_env)  # before anything is created on the server or the host
    ensure_queue(queue, pool)
    command = worker_command(queue, pool, prefect_bin, python)
    rc, out, err = host.run(_start_script(queue, pool, command, workdir, full_env))
    words = out.split()
    if rc != 0 or len(words) < 3 or words[0] not in ("started", "running"):
        raise SystemUnavailable(
            f"Could not start a Prefect worker on {host.label} (exit {rc}). Check that {python or prefect_bin!r} "
            f"is installed there, with rh-prefect. Output:\n{out.strip()}\n{err.strip()}".rstrip()
        )
    info = WorkerInfo(host=host.label, queue=queue, pool=pool, name=worker_name(queue), pid=int(words[1]),
                      log_path=words[2], started=words[0] == "started")
    if wait:
        try:
            wait_online(queue, pool, timeout=timeout)
        except SystemUnavailable:
            _, tail, _ = host.run(f"tail -n 25 {shlex.quote(info.log_path)}")
            raise SystemUnavailable(
                f"The worker on {host.label} (pid {info.pid}) did not come online for queue {queue!r} within "
                f"{timeout:.0f} s. Can the cluster reach the Prefect API at {api_url}? If not, set the cluster's "
                f"api_url to an address it can reach. Log tail ({info.log_path}):\n{tail}"
            ) from None
    logger.info("%s", info)
    return info


def _halt(host: _Host, queue: str, pool: str, timeout: float) -> bool:
    for key in [k for k in _SEEN_ONLINE if k[1:] == (queue, pool)]:
        _SEEN_ONLINE.pop(key, None)
    rc, out, err = host.run(_stop_script(queue, timeout), timeout=timeout + 30)
    if rc != 0:
        raise SystemUnavailable(f"Could not stop the worker on {host.label}: {out.strip()} {err.strip()}")
    stopped = out.startswith("stopped")
    import httpx

    try:
        _forget_worker(worker_name(queue), pool)
    except httpx.HTTPError as exc:  # the API may not know the worker (it never heartbeated): nothing to remove
        logger.debug("could not remove worker record %s: %s", worker_name(queue), exc)
    return stopped


def _queue_of(cluster: Cluster) -> str:
    if not cluster.work_queue:
        raise SystemUnavailable(
            f"Cluster {cluster.name or cluster.host} has no work_queue, so no worker can serve it: set one, e.g. "
            "`c.work_queue = 'rh-gpu'; c.save()`, then call c.start_worker()."
        )
    return cluster.work_queue


# -- public API: clusters (attached to Cluster as methods) and this machine ----------------------------------


def start(cluster: Cluster, *, api_url: Optional[str] = None, env: Optional[dict[str, str]] = None,
          wait: bool = True, timeout: float = 60.0, here: bool = False) -> WorkerInfo:
    """Start (or find) the Prefect worker for ``cluster.work_queue`` on the cluster host, over SSH.

    ``here=True``: this process runs on the cluster host itself (``rh-prefect worker start --cluster NAME --here``
    after ``pip install rh-prefect`` there): the worker starts on this machine, with the ``prefect`` next to this
    Python unless the cluster names another ``prefect_bin``.

    The worker is rh-prefect's long-lived one (type ``rh-inprocess``, :mod:`rh_prefect.runtime.inprocess`: copies
    run in its own process, woken by the server's events). It runs as ``cluster.python -m prefect worker start``
    (or ``cluster.prefect_bin worker start`` when the cluster names no ``python``), detached (``setsid nohup``)
    under a shell loop that starts it again if it dies after running a while, in ``cluster.project_dir`` (or the
    login home), with ``PREFECT_API_URL`` = ``api_url`` or ``cluster.api_url`` or this process's API URL,
    ``PREFECT_WORKER_QUERY_SECONDS`` = ``settings.worker_query_seconds`` (2 s), plus ``env`` (which may override both).
    Its log and pid file (the loop's PID) are under ``~/.cache/rh_prefect/workers/`` on the cluster. With ``wait``,
    returns once the Prefect API sees the worker polling its queue.
    """
    queue = _queue_of(cluster)
    # Tells the transfer flows they run on this cluster, so they read its files from disk, not over SSH.
    env = {COLOCATED_ENV: colocated_identity(SSHSystem(cluster=cluster)),
           **({COLOCATED_NAME_ENV: cluster.name} if getattr(cluster, "name", None) else {}), **(env or {})}
    host: _Host = _LocalHost() if here else _SSHHost(cluster)
    prefect_bin = cluster.prefect_bin
    if here and prefect_bin == "prefect":
        prefect_bin = _prefect_beside_python()
    return _launch(host, queue, cluster.work_pool, prefect_bin, cluster.project_dir,
                   _api_url(api_url or cluster.api_url), env, wait, timeout, python=cluster.python)


def _prefect_beside_python() -> str:
    import sys

    return os.path.join(os.path.dirname(sys.executable), "prefect")


def stop(cluster: Cluster, timeout: float = 5.0) -> bool:
    """Stop the worker that :func:`start` started on the cluster; True if one was running.

    SIGTERM to the worker's session (the worker and the flow runs it is executing), SIGKILL after ``timeout``
    seconds: Prefect's worker does not always exit on SIGTERM by itself, and a stop must not hang.
    """
    return _halt(_SSHHost(cluster), _queue_of(cluster), cluster.work_pool, timeout)


def online(cluster: Cluster) -> bool:
    """True when a worker (however started) is serving the cluster's work queue, per the Prefect API."""
    return bool(cluster.work_queue) and is_online(cluster.work_queue, cluster.work_pool)


def process_status(cluster: Cluster) -> Optional[int]:
    """PID of the worker process that :func:`start` left running on the cluster, or None."""
    _, out, _ = _SSHHost(cluster).run(_status_script(_queue_of(cluster)))
    words = out.split()
    return int(words[1]) if words and words[0] == "running" else None


def start_local(queue: str, *, pool: str = DEFAULT_POOL, api_url: Optional[str] = None,
                prefect_bin: Optional[str] = None, workdir: Optional[str] = None,
                env: Optional[dict[str, str]] = None, wait: bool = True, timeout: float = 60.0) -> WorkerInfo:
    """Start (or find) a detached Prefect worker for ``queue`` on this machine (same pid file and log layout).

    ``prefect_bin`` defaults to the ``prefect`` next to this Python interpreter.
    """
    bin_ = prefect_bin or _prefect_beside_python()
    return _launch(_LocalHost(), queue, pool, bin_, workdir, _api_url(api_url), env, wait, timeout)


def stop_local(queue: str, *, pool: str = DEFAULT_POOL, timeout: float = 5.0) -> bool:
    """Stop the worker :func:`start_local` started for ``queue``; True if one was running."""
    return _halt(_LocalHost(), queue, pool, timeout)


__all__ = [
    "DEFAULT_POOL",
    "WorkerInfo",
    "ensure_queue",
    "is_online",
    "online",
    "process_status",
    "start",
    "start_hint",
    "start_local",
    "stop",
    "stop_local",
    "wait_online",
    "worker_command",
    "worker_name",
]
