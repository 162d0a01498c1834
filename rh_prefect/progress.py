"""Progress of long work (copies, streams), shown where the user is looking.

* In an interactive terminal: a live bar with files, bytes, rate and ETA (rich, on stderr).
* In non-interactive output (CI logs, workers, pipes): nothing per file, one summary line every ``interval``
  seconds, and a final line if any was printed (quick operations print nothing at all).
* Inside a Prefect task or flow run the summary lines go to the run's logger (so they appear in the UI's log
  view), a progress artifact follows the operation, and on completion a short markdown artifact records files,
  bytes, skipped files, duration and throughput.

A :class:`Progress` is handed to the copy engine, which calls :meth:`start`, :meth:`advance` and :meth:`finish`.
``RH_PREFECT_PROGRESS=off`` turns the interactive bar off (summary lines remain).

Example:
    >>> p = Progress("copy file -> s3", interactive=False, artifacts=False)
    >>> p.start(files=2, nbytes=2048)
    >>> p.advance(1, 1024); p.advance(1, 1024)
    >>> p.finish()
    >>> p.line().split(", ")[0]
    'copy file -> s3: 2/2 files'
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import IO, Any, Callable, Optional


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def summary_markdown(label: str, files: int, nbytes: int, skipped_files: int, skipped_bytes: int,
                     seconds: float) -> str:
    """The summary artifact of a finished operation: a one-row table of files, bytes, skipped, duration and
    throughput."""
    rate = nbytes / seconds if seconds > 0 else 0.0
    return "\n".join([
        f"### {label}",
        "",
        "| files copied | bytes copied | files skipped (unchanged) | duration | throughput |",
        "|---|---|---|---|---|",
        f"| {files} | {human_bytes(nbytes)} | {skipped_files} ({human_bytes(skipped_bytes)}) | "
        f"{seconds:.2f} s | {human_bytes(rate)}/s |",
    ])


def _in_prefect_run() -> bool:
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _run_logger() -> Any:
    from prefect.logging import get_run_logger

    return get_run_logger()


class Progress:
    """Tracks one operation's files and bytes and reports them to the terminal, logs and the Prefect UI.

    ``interactive`` (default: stderr is a terminal) chooses the live bar over summary lines; ``console`` is the
    rich Console the bar draws on (default: stderr); ``file`` receives summary lines outside Prefect runs
    (default: stderr); ``artifacts`` (default: inside a Prefect run) publishes Prefect artifacts; ``clock``
    (seconds, monotonic) paces the summary lines.
    """

    def __init__(self, label: str, *, interval: float = 10.0, artifact_interval: float = 2.0,
                 interactive: Optional[bool] = None, artifacts: Optional[bool] = None,
                 console: Any = None, file: Optional[IO[str]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self._clock = clock
        self.interval = interval
        self.artifact_interval = artifact_interval
        if interactive is None:
            interactive = sys.stderr.isatty() and os.environ.get("RH_PREFECT_PROGRESS", "auto") != "off"
        self.interactive = interactive
        self.in_run = _in_prefect_run()
        self.artifacts = self.in_run if artifacts is None else artifacts
        # Taken now: advance() may be called from threads that do not carry the run's context.
        self._run_logger = _run_logger() if self.in_run else None
        self._console = console
        self._file = file
        self.total_files = self.total_bytes = 0
        self.files = self.bytes = 0
        self.skipped_files = self.skipped_bytes = 0
        self.lines_emitted = 0
        self._started = self._clock()
        self._ended: Optional[float] = None
        self._last_log = self._last_artifact = self._started
        self._lock = threading.Lock()
        self._bar: Any = None
        self._task_id: Any = None
        self._artifact_id: Any = None

    # -- engine callbacks ---------------------------------------------------------------------------------
    def start(self, files: int, nbytes: int, skipped_files: int = 0, skipped_bytes: int = 0) -> None:
        """The work is known: ``files``/``nbytes`` to move, and what was skipped as already there."""
        self.total_files = self.total_bytes = self.skipped_files = self.skipped_bytes = 0
        self._started = self._last_log = self._last_artifact = self._clock()
        self.add(files, nbytes, skipped_files, skipped_bytes)

    def add(self, files: int, nbytes: int, skipped_files: int = 0, skipped_bytes: int = 0) -> None:
        """More work became known after :meth:`start` (a listing that arrives in pages while copies run)."""
        with self._lock:
            self.total_files += files
            self.total_bytes += nbytes
            self.skipped_files += skipped_files
            self.skipped_bytes += skipped_bytes
        if not self.total_files:
            return
        if self._bar is not None:
            self._bar.update(self._task_id, total=self.total_bytes or None,
                             files=f"{self.files}/{self.total_files} files")
        elif self.interactive:
            self._start_bar()
        if self.artifacts and self._artifact_id is None:
            self._artifact_id = self._create_artifact()

    def advance(self, files: int, nbytes: int) -> None:
        """``files``/``nbytes`` more are done (thread-safe)."""
        with self._lock:
            self.files += files
            self.bytes += nbytes
            now = self._clock()
            log_due = not self.interactive and now - self._last_log >= self.interval
            artifact_due = self._artifact_id is not None and now - self._last_artifact >= self.artifact_interval
            if log_due:
                self._last_log = now
            if artifact_due:
                self._last_artifact = now
        if self._bar is not None:
            self._bar.update(self._task_id, completed=self.bytes, files=f"{self.files}/{self.total_files} files")
        if log_due:
            self._emit(self.line())
        if artifact_due:
            self._update_artifact()

    def finish(self, error: Optional[BaseException] = None) -> None:
        """The work ended (``error`` if it failed): close the bar, finish the artifacts, print a last line."""
        self._ended = self._clock()
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self.lines_emitted:  # a long operation printed progress: say how it ended
            self._emit(f"{self.line()} - {'failed: ' + type(error).__name__ if error else 'done'}")
        if self._artifact_id is not None:
            self._update_artifact(final=error is None)
        if self.artifacts and error is None:
            self._summary_artifact()

    # -- rendering ----------------------------------------------------------------------------------------
    @property
    def seconds(self) -> float:
        """Seconds since :meth:`start` (until :meth:`finish`)."""
        return (self._clock() if self._ended is None else self._ended) - self._started

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def percent(self) -> float:
        if self.total_bytes:
            return min(100.0, 100.0 * self.bytes / self.total_bytes)
        return 100.0 * self.files / self.total_files if self.total_files else 100.0

    def line(self) -> str:
        """One summary line: files, bytes, percent, rate, ETA."""
        left = self.total_bytes - self.bytes
        eta = f"{left / self.rate:.0f}s" if self.rate > 0 else "?"
        return (f"{self.label}: {self.files}/{self.total_files} files, {human_bytes(self.bytes)}/"
                f"{human_bytes(self.total_bytes)} ({self.percent():.0f}%), {human_bytes(self.rate)}/s, ETA {eta}")

    def markdown(self) -> str:
        """The summary artifact: a one-row table of files, bytes, skipped, duration and throughput."""
        return summary_markdown(self.label, self.files, self.bytes, self.skipped_files, self.skipped_bytes,
                                self.seconds)

    def _emit(self, line: str) -> None:
        self.lines_emitted += 1
        # In a run the line goes to the run's log (the UI shows it) - unless INFO is filtered out there, as the
        # CLI does to hide Prefect's own chatter: then the user still gets the line on stderr.
        if self._run_logger is not None and self._file is None and self._run_logger.isEnabledFor(logging.INFO):
            self._run_logger.info("%s", line)
            return
        out = self._file or sys.stderr
        out.write(f"rh-prefect: {line}\n")
        out.flush()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress as Bar, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        # stderr, so a bar never mixes with data a command writes to stdout (rh-prefect cat).
        console = self._console or Console(stderr=True)
        self._bar = Bar(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                        TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[files]}"),
                        console=console, transient=True)
        self._bar.start()
        self._task_id = self._bar.add_task(self.label, total=self.total_bytes or None,
                                           files=f"0/{self.total_files} files")

    # -- Prefect artifacts (only inside runs) ---------------------------------------------------------------
    def _create_artifact(self) -> Any:
        from prefect.artifacts import create_progress_artifact

        return create_progress_artifact(progress=0.0, description=self.label)

    def _update_artifact(self, final: bool = False) -> None:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self._artifact_id, progress=100.0 if final else self.percent())

    def _summary_artifact(self) -> None:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=self.markdown(), description=self.label)
