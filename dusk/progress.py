"""What a person sees while the night runs: rich progress bars per step and source (the log file
is :mod:`dusk.logfile`)."""

from __future__ import annotations

import threading
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn


class RunProgress:
    """Progress bars: one per source (spinner until it ends) and one per step (dbt counts its
    nodes). Shown only on a terminal; cron and CI see the summary alone."""

    def __init__(self, console: Console | None = None, enabled: bool | None = None) -> None:
        console = console or Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not (console.is_terminal if enabled is None else enabled),
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, key: str, description: str, total: float | None = None) -> None:
        """A new bar (``total`` None: a spinner until :meth:`finish`)."""
        with self._lock:
            self._tasks[key] = self.progress.add_task(description, total=total, note="")

    def advance(self, key: str, note: str = "", total: float | None = None) -> None:
        """One more unit done on the bar ``key`` (``total`` sets its size once known)."""
        with self._lock:
            task = self._tasks.get(key)
            if task is not None:
                if total is not None:
                    self.progress.update(task, total=total)
                self.progress.update(task, advance=1, note=note[:40])

    def finish(self, key: str, note: str) -> None:
        """Mark the bar ``key`` done with a closing note (ok, FAILED, ...)."""
        with self._lock:
            task = self._tasks.get(key)
            if task is not None:
                total = self.progress.tasks[task].total or 1
                self.progress.update(task, total=total, completed=total, note=note)

    def dbt_callback(self, key: str) -> Any:
        """A dbt event callback that moves the bar ``key`` as nodes finish."""
        total: dict[str, int] = {}

        def on_event(event: Any) -> None:
            name = event.info.name
            if name == "LogStartLine" and event.data.total:
                total["n"] = int(event.data.total)
            elif name == "NodeFinished":
                self.advance(key, note=event.data.node_info.node_name, total=total.get("n"))

        return on_event
