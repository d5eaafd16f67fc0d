"""What a person sees while the night runs: rich progress bars per step and source, and one
structured log file per run (JSON lines, <data dir>/logs/<run id>.jsonl).

Secrets never reach the log file: every record is passed through :func:`redact`, which masks
the values of secret-looking environment variables (passwords, tokens, credentials, the webhook
URL, the PII salt) and the password part of any URL.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIALS|WEBHOOK|SALT|API_KEY", re.IGNORECASE)
URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@", re.I)


def secret_values() -> list[str]:
    """Values of the environment's secret-looking variables (at least 4 characters long)."""
    values = []
    for name, value in os.environ.items():
        if SECRET_NAME.search(name) and len(value) >= 4:
            values.append(value)
            password = URL_PASSWORD.search(value)
            if password and len(password["password"]) >= 4:
                values.append(password["password"])
    return sorted(set(values), key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every secret value and URL password replaced by ``***``."""
    for value in secrets:
        text = text.replace(value, "***")
    return URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


class JsonLinesHandler(logging.Handler):
    """Writes each record as one JSON object per line: time, level, logger, message (and the
    exception, if any), secrets masked."""

    def __init__(self, path: Path, run_id: str) -> None:
        super().__init__(level=logging.INFO)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.run_id = run_id
        self.secrets = secret_values()
        self._file = path.open("a", encoding="utf-8")
        self._lock_file = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry: dict[str, Any] = {
                "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname.lower(),
                "logger": record.name,
                "run_id": self.run_id,
                "message": redact(record.getMessage(), self.secrets),
            }
            if record.exc_info:
                entry["exception"] = redact(logging.Formatter().formatException(record.exc_info), self.secrets)
            for key in ("event", "source", "step", "status", "seconds", "rows"):
                if hasattr(record, key):
                    entry[key] = getattr(record, key)
            line = json.dumps(entry, default=str)
            with self._lock_file:
                if self._file.closed:  # a library's logging setup closed every handler: go on
                    self._file = self.path.open("a", encoding="utf-8")
                self._file.write(line + "\n")
                self._file.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        with self._lock_file:
            self._file.close()
        super().close()


@contextmanager
def run_log(path: Path, run_id: str) -> Iterator[JsonLinesHandler]:
    """Send the run's log records (INFO and up) to ``path`` while the block runs."""
    handler = JsonLinesHandler(path, run_id)
    root = logging.getLogger()
    previous = root.level
    root.setLevel(min(previous, logging.INFO) if previous else logging.INFO)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


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
