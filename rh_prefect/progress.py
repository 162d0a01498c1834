"""Progress of long work (copies, streams), shown where the user is looking.

* In an interactive terminal: a live bar with files, bytes, rate and ETA (rich).
* In non-interactive output (CI logs, workers): nothing per file, a summary line every ``interval`` seconds.
* Inside a Prefect task or flow run: a progress artifact that the UI updates, and on completion a short
  markdown artifact (files, bytes, skipped, duration, throughput).

A :class:`Progress` is handed to the copy engine, which calls :meth:`start`, :meth:`advance` and :meth:`finish`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, Optional

logger = logging.getLogger("rh_prefect.progress")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _in_prefect_run() -> bool:
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class Progress:
    """Tracks one operation's files and bytes and reports them to the terminal, logs and the Prefect UI."""

    def __init__(self, label: str, *, interval: float = 10.0, artifact_interval: float = 2.0,
                 interactive: Optional[bool] = None, artifacts: Optional[bool] = None) -> None:
        self.label = label
        self.interval = interval
        self.artifact_interval = artifact_interval
        if interactive is None:
            interactive = sys.stderr.isatty() and os.environ.get("RH_PREFECT_PROGRESS", "auto") != "off"
        self.interactive = interactive
        self.artifacts = _in_prefect_run() if artifacts is None else artifacts
        self.total_files = self.total_bytes = 0
        self.files = self.bytes = 0
        self.skipped_files = self.skipped_bytes = 0
        self._started = time.monotonic()
        self._last_log = self._last_artifact = self._started
        self._lock = threading.Lock()
        self._bar: Any = None
        self._task_id: Any = None
        self._artifact_id: Any = None

    # -- engine callbacks ---------------------------------------------------------------------------------
    def start(self, files: int, nbytes: int, skipped_files: int = 0, skipped_bytes: int = 0) -> None:
        self.total_files, self.total_bytes = files, nbytes
        self.skipped_files, self.skipped_bytes = skipped_files, skipped_bytes
        self._started = self._last_log = self._last_artifact = time.monotonic()
        if self.interactive and files:
            from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress as Bar,
                                       TextColumn, TimeRemainingColumn, TransferSpeedColumn)

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                            TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[files]}"),
                            transient=True)
            self._bar.start()
            self._task_id = self._bar.add_task(self.label, total=nbytes or None, files=f"0/{files} files")
        if self.artifacts and files:
            self._artifact_id = self._create_artifact()

    def advance(self, files: int, nbytes: int) -> None:
        with self._lock:
            self.files += files
            self.bytes += nbytes
            now = time.monotonic()
            log_due = not self.interactive and now - self._last_log >= self.interval
            artifact_due = self._artifact_id is not None and now - self._last_artifact >= self.artifact_interval
            if log_due:
                self._last_log = now
            if artifact_due:
                self._last_artifact = now
        if self._bar is not None:
            self._bar.update(self._task_id, completed=self.bytes, files=f"{self.files}/{self.total_files} files")
        if log_due:
            logger.info("%s", self.line())
        if artifact_due:
            self._update_artifact()

    def finish(self, error: Optional[BaseException] = None) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._artifact_id is not None:
            self._update_artifact(final=True)
        if self.artifacts and error is None:
            self._summary_artifact()

    # -- rendering ----------------------------------------------------------------------------------------
    @property
    def seconds(self) -> float:
        return time.monotonic() - self._started

    @property
    def rate(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def percent(self) -> float:
        if self.total_bytes:
            return min(100.0, 100.0 * self.bytes / self.total_bytes)
        return 100.0 * self.files / self.total_files if self.total_files else 100.0

    def line(self) -> str:
        eta = (self.total_bytes - self.bytes) / self.rate if self.rate > 0 else float("nan")
        return (f"{self.label}: {self.files}/{self.total_files} files, {human_bytes(self.bytes)}/"
                f"{human_bytes(self.total_bytes)} ({self.percent():.0f}%), {human_bytes(self.rate)}/s, ETA {eta:.0f}s")

    def markdown(self) -> str:
        return "\n".join([
            f"### {self.label}",
            "",
            "| files copied | bytes copied | files skipped (unchanged) | duration | throughput |",
            "|---|---|---|---|---|",
            f"| {self.files} | {human_bytes(self.bytes)} | {self.skipped_files} ({human_bytes(self.skipped_bytes)}) | "
            f"{self.seconds:.2f} s | {human_bytes(self.rate)}/s |",
        ])

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
