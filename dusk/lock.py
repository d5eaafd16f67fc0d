"""One run at a time: an exclusive ``flock`` on ``<data dir>/run.lock``.

The kernel releases the lock when its holder dies, however it dies (SIGKILL included), so a lock
left by a killed run is never mistaken for a live one: the file then still names the dead holder,
and the next run takes it over and says so. A second run while one is alive exits at once with
the holder's PID and start time.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class Locked(RuntimeError):
    """Another run holds the lock."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        self.holder = holder
        who = f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started_at', '?')}"
        super().__init__(f"another run holds {path} ({who}); not starting a second one")


@dataclass
class RunLock:
    """The held lock; ``took_over`` names the holder of a stale lock this run replaced."""

    path: Path
    took_over: dict[str, Any] | None

    def vacate(self) -> None:
        """Empty the lock file now, for a holder about to end without unwinding (``os._exit``):
        the kernel releases the lock itself, and the next run finds no dead holder named."""
        os.truncate(self.path, 0)


def _read(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode(errors="replace").strip()
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        value = {"pid": "?", "note": text[:200]}
    return value if isinstance(value, dict) else {}


def live_holder(data_dir: Path) -> dict[str, Any] | None:
    """Who holds the run lock now, read without taking it (a night starting this instant must not
    find it taken): the lock file's holder when that process is alive on this host, else None."""
    path = data_dir / "run.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        holder = _read(fd)
    finally:
        os.close(fd)
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, someone else's
    return holder


@contextmanager
def run_lock(data_dir: Path, command: str = "run") -> Iterator[RunLock]:
    """Hold the run lock for the block; raises Locked at once if a live run holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "run.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Locked(path, _read(fd)) from None
        stale = _read(fd) or None  # a holder that died without cleaning up
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command,
        }
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(me).encode())
            os.fsync(fd)
        except OSError:
            pass  # a full disk: the lock is held all the same (flock needs no space), unnamed
        try:
            yield RunLock(path, stale)
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
