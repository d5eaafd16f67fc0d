"""`dusk serve`: the nights run on a schedule by one resident process, instead of a new process per
night started by cron.

Why: a `dusk run` process spends its first seconds loading Python, dlt, DuckDB, SQLAlchemy and
dbt (``import dbt.cli.main`` alone takes 1.7 s here) and starting dbt: a quiet demo night takes
6.8 s as a process and 2.8 s in a resident one (``make bench-night`` measures both ways). That
is most of a night with nothing new. A resident process pays it once: every night after its
first begins warm. Each night is exactly a `dusk run` night: the run lock, the ledger, the alert,
the report, the summary; its status is printed with the exit code `dusk run` would have ended
with.

The schedule is a cron expression (croniter, the library dlt itself uses), in the machine's local
time, as cron reads it. A due time that passes while a night runs is skipped, not queued, and said;
nights missed while the process was down are not caught up (as with cron). A night that finds the
lock taken (a `dusk run` by hand) is skipped until the next due time.

Stopping: SIGTERM or Ctrl-C between nights ends the process at once (exit 0). During a night they
stop the night as they stop `dusk run` (recorded as ``stopped``, alerted), and the process then
ends with that night's exit code, as does a night that gave up a source whose thread cannot be
waited for: run it under a supervisor that starts it again (systemd's ``Restart=always``).
"""

from __future__ import annotations

import resource
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from croniter import croniter

DEFAULT_SCHEDULE = "0 2 * * *"
"""Every day at 02:00, local time."""
LONGEST_SLEEP = 60.0
"""Seconds slept at most before the time left is measured again (a clock set forward or back, a
suspended machine)."""


class ScheduleError(ValueError):
    """The schedule is not a cron expression."""


def next_due(schedule: str, after: datetime) -> datetime:
    """The schedule's first due time strictly after ``after`` (an aware datetime)."""
    if not croniter.is_valid(schedule):
        raise ScheduleError(
            f"the schedule {schedule!r} is not a cron expression (five fields: minute hour day month weekday, "
            "e.g. '0 2 * * *' for 02:00 every day)"
        )
    due = croniter(schedule, after).get_next(datetime)
    assert isinstance(due, datetime)
    return due


def serve(
    schedule: str,
    night: Callable[[], int | None],
    nights: int | None = None,
    now: bool = False,
    clock: Callable[[], datetime] = lambda: datetime.now().astimezone(),
    sleep: Callable[[float], None] = time.sleep,
    echo: Callable[[str], None] = print,
) -> int:
    """Run ``night`` at every due time of ``schedule`` (and at once with ``now``) until ``nights``
    nights ran (default: forever). ``night`` returns the night's exit code, or None when another run
    held the lock (skipped: it does not count). Returns the last night's exit code (0 if none ran)."""
    due = clock() if now else next_due(schedule, clock())
    ran, code = 0, 0
    while nights is None or ran < nights:
        echo(f"next night at {due:%Y-%m-%d %H:%M %Z} ({schedule})")
        while (left := (due - clock()).total_seconds()) > 0:
            sleep(min(left, LONGEST_SLEEP))
        result = night()
        if result is None:
            echo("another run holds the lock; this night is skipped")
        else:
            ran, code = ran + 1, result
            echo(f"night ended with exit code {code}; peak memory so far {_peak_mib():.0f} MiB")
        after = clock()
        skipped = 0
        due = next_due(schedule, due)
        while due <= after:
            skipped += 1
            due = next_due(schedule, due)
        if skipped:
            echo(f"{skipped} due time(s) passed while the night ran: skipped, not queued")
    return code


def _peak_mib() -> float:
    """The process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Shutdown(KeyboardInterrupt):
    """SIGTERM between nights: the server ends, as it does for Ctrl-C."""


@contextmanager
def shutdown_on_sigterm() -> Iterator[None]:
    """SIGTERM raises :class:`Shutdown` while the block runs, outside a night (a night installs its
    own handlers, which stop it cleanly, and puts this one back when it ends)."""

    def stop(signum: int, frame: object) -> None:
        raise Shutdown

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
