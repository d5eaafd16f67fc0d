"""The run's log file: one structured line per event (JSON lines, <data dir>/logs/<run id>.jsonl).

Secrets never reach it: every record is passed through :func:`redact`, which masks the values of
secret-looking environment variables (passwords, tokens, credentials, the webhook URL, the PII
salt) and the password part of any URL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dusk.settings import URL_PASSWORD, secret_values


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
        self.lost: str | None = None
        """Why the file stopped taking lines (a full or unwritable disk): said once, on stderr."""

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
                if self.lost:
                    return
                if self._file.closed:  # a library's logging setup closed every handler: go on
                    self._file = self.path.open("a", encoding="utf-8")
                self._file.write(line + "\n")
                self._file.flush()
        except OSError as exc:  # a full or unwritable disk: the console and the alert still tell
            self._lose(exc)
        except Exception:
            self.handleError(record)

    def _lose(self, exc: OSError) -> None:
        if self.lost is None:
            self.lost = f"{self.path}: {exc.strerror or exc}"
            sys.stderr.write(f"the run's log stopped at {self.lost}; what follows is on the console only\n")
        with contextlib.suppress(OSError):
            self._file.close()

    def close(self) -> None:
        with self._lock_file, contextlib.suppress(OSError):  # the last lines did not fit: said already
            self._file.close()
        super().close()


QUIET = {"py4j": logging.WARNING}
"""Loggers whose INFO says nothing to an operator (py4j logs every closed connection to Spark)."""


@contextmanager
def run_log(path: Path, run_id: str) -> Iterator[JsonLinesHandler]:
    """Send the run's log records (INFO and up) to ``path`` while the block runs."""
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(level)
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
