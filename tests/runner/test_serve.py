"""`dusk serve`: the nights on a cron schedule in one resident process: its schedule on a fake
clock, its stops, and its real nights one after another in one process (a first night, a day, a
changed model, a quiet night) against a full rebuild."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dusk.serve import LONGEST_SLEEP, ScheduleError, next_due, serve
from tests.conftest import PROJECT_DIR, Workspace, delete_demo_stream
from tests.helpers import BUILT_KINDS, always_built, downstream, project_copy
from tests.proof.invariants import MARTS, SNAPSHOTS, copy_warehouse, differences, rebuild_from_scratch


class Clock:
    """A clock that moves only when slept on, or when a night takes time."""

    def __init__(self, at: datetime) -> None:
        self.at = at
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.at

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.at += timedelta(seconds=seconds)


def test_nights_run_at_each_due_time_and_a_due_time_passed_during_a_night_is_skipped() -> None:
    clock = Clock(datetime(2026, 3, 1, 0, 30, tzinfo=UTC))
    started: list[datetime] = []
    lengths = iter([timedelta(minutes=5), timedelta(hours=2, minutes=10), timedelta(minutes=1)])

    def night() -> int:
        started.append(clock())
        clock.at += next(lengths)
        return 0 if len(started) != 2 else 3

    messages: list[str] = []
    code = serve("0 * * * *", night, nights=3, clock=clock, sleep=clock.sleep, echo=messages.append)
    hour = datetime(2026, 3, 1, tzinfo=UTC)
    # 01:00; then 02:00, which ran until 04:10: 03:00 and 04:00 passed and are not run late
    assert started == [hour.replace(hour=1), hour.replace(hour=2), hour.replace(hour=5)]
    assert code == 0, "the last night's exit code"
    assert "2 due time(s) passed while the night ran: skipped, not queued" in messages
    assert "night ended with exit code 3; peak memory" in "\n".join(messages)
    assert max(clock.slept) <= LONGEST_SLEEP, "a long wait is slept in parts, the time left measured again"


def test_now_runs_a_night_at_once_and_a_locked_night_does_not_count() -> None:
    clock = Clock(datetime(2026, 3, 1, 12, 0, 7, tzinfo=UTC))
    started: list[datetime] = []
    outcomes = iter([None, 0, 1])  # the first finds another run holding the lock

    def night() -> int | None:
        started.append(clock())
        return next(outcomes)

    messages: list[str] = []
    code = serve("30 12 * * *", night, nights=2, now=True, clock=clock, sleep=clock.sleep, echo=messages.append)
    assert started == [
        datetime(2026, 3, 1, 12, 0, 7, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 30, tzinfo=UTC),
        datetime(2026, 3, 2, 12, 30, tzinfo=UTC),
    ]
    assert code == 1
    assert "another run holds the lock; this night is skipped" in messages


def test_a_schedule_that_is_not_cron_is_refused_by_name() -> None:
    with pytest.raises(ScheduleError, match="'every night' is not a cron expression"):
        next_due("every night", datetime.now(UTC))
    out = subprocess.run(
        [sys.executable, "-m", "dusk", "serve", "--schedule", "61 2 * * *"],
        cwd=PROJECT_DIR,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "'61 2 * * *' is not a cron expression" in out.stderr


def test_sigterm_between_nights_ends_the_server_at_once(tmp_path: Path) -> None:
    env = {"DUSK_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    server = subprocess.Popen(
        [sys.executable, "-m", "dusk", "serve", "--schedule", "0 2 1 1 *"],
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    assert line.startswith("next night at ") and "(0 2 1 1 *)" in line, line
    server.send_signal(signal.SIGTERM)
    out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert "SIGTERM between nights: the server ends" in out
    assert not (tmp_path / "data" / "runs").exists(), "no night ran"


SERVER = """
import subprocess, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dusk import cli
from dusk.serve import serve

cli._logging(False)
waits = sys.argv[1:]  # what happens while the server waits for each night
at, waiting = [datetime(2026, 3, 1, 1, 0, tzinfo=UTC)], [False]


def night():
    waiting[0] = False
    return cli.scheduled_night()


def sleep(seconds):
    if not waiting[0]:  # the wait before a night begins: the day's events, once
        waiting[0] = True
        what = waits.pop(0)
        if what == "day":
            subprocess.run([sys.executable, "-m", "dusk", "simulate", "--days", "1"], check=True)
        elif what == "edit":
            model = next(Path("models").glob("marts/**/marketing_roas.sql"))
            model.write_text(model.read_text() + "\\n-- a comment is a change to dbt\\n")
    at[0] += timedelta(seconds=seconds)


nights = len(waits)
sys.exit(serve("0 2 * * *", night, nights=nights, clock=lambda: at[0], sleep=sleep))
"""
"""`dusk serve`'s loop with its real nights, its clock and waits faked: each wait before a night
does what its argument says (``day``: a simulated day; ``edit``: a change to a model; ``none``)."""


@pytest.mark.e2e
def test_nights_in_one_resident_process_build_what_changed_and_equal_a_full_rebuild(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    project = project_copy(tmp_path / "project", {})
    ws = Workspace(tmp_path / "ws", project=project)
    ws.root.mkdir()
    request.addfinalizer(lambda: delete_demo_stream(ws.sources_file))
    waits = ["none", "day", "edit", "none"]
    out = subprocess.run(
        [sys.executable, "-c", SERVER, *waits],
        cwd=project,
        env=ws.env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("night ended with exit code 0") == len(waits)
    records = [json.loads(p.read_text()) for p in sorted((ws.data_dir / "runs").glob("2*.json"))]
    first, day, edited, quiet = records
    assert [r["status"] for r in records] == ["success"] * 4 and first["dbt"]["full"]
    everything = {n["unique_id"] for n in first["dbt"]["nodes"] if n["resource_type"] != "exposure"}

    def ran(record: dict[str, Any]) -> set[str]:
        return {
            n["unique_id"]
            for n in record["dbt"]["nodes"]
            if n["status"] != "unchanged" and n["resource_type"] != "exposure"
        }

    # the day's new rows were read, and built, by the warm process
    assert sum(t["loaded"] for s in day["sources"] for t in s["tables"]) > 0
    built = {u for u in ran(day) if u.split(".")[0] in BUILT_KINDS}
    assert "model.dusk.orders" in built and "snapshot.dusk.customers_snapshot" in built
    # the model changed between two nights of one process: dbt's parse in that process saw it
    assert ran(edited) == downstream(ws, "model.dusk.marketing_roas") | always_built(ws)
    assert ran(quiet) == set() and {n["status"] for n in quiet["dbt"]["nodes"]} <= {"unchanged"}
    assert {n["unique_id"] for n in quiet["dbt"]["nodes"]} == everything
    scratch = copy_warehouse(ws, tmp_path / "scratch" / "rebuilt.duckdb")
    rebuild_from_scratch(ws, scratch)
    relations = [f"marts.{m}" for m in MARTS] + [f"snapshots.{s}" for s in SNAPSHOTS]
    assert differences(ws.attach, scratch, relations) == {}
