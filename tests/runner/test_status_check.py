"""`dusk status --check`, the dead-man's switch: one line and exit 1 when nights stopped being
published within the SLA, the last run failed, a run was killed and left ``running``, a run has
held the lock for longer than the SLA, or there is nothing to read; exit 0 with the last
published night otherwise. And the heartbeat ping's two forms."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dusk.record import DbtResult, RunResult
from dusk.settings import MonitorSettings, Settings
from dusk.status import check
from dusk.steps.alert import heartbeat
from dusk.warehouse import ensure_ledger, open_warehouse
from ingestion.result import SourceResult
from tests.conftest import Workspace
from tests.helpers import WebhookReceiver

NOW = datetime(2030, 1, 10, 6, 0, tzinfo=UTC)


def base(tmp_path: Path) -> Settings:
    return Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "target", demo=False, demo_seed=1)


def installation(tmp_path: Path, *runs: tuple[str, str, datetime, float]) -> Settings:
    """A DuckDB installation whose ledger holds ``runs`` (run id, status, started, seconds)."""
    settings = replace(base(tmp_path), monitor=MonitorSettings(sla_hours=26))
    with open_warehouse(settings).connect() as con:
        ensure_ledger(con)
        for run_id, status, started, seconds in runs:
            con.execute(
                "insert into dusk_ledger.runs (run_id, status, started_at, seconds, error) values (?, ?, ?, ?, ?)",
                [
                    run_id,
                    status,
                    started.replace(tzinfo=None),
                    seconds,
                    "dbt: 2 tests failed" if status == "failed" else None,
                ],
            )
    return settings


def night(day: int, status: str) -> tuple[str, str, datetime, float]:
    started = datetime(2030, 1, day, 2, 30, tzinfo=UTC)
    return f"{started:%Y%m%dT%H%M%S}Z", status, started, 600.0


def test_a_night_published_within_the_sla_is_healthy(tmp_path: Path) -> None:
    settings = installation(tmp_path, night(9, "success"), night(10, "partial"))
    assert check(settings, NOW) == (
        True,
        "OK: the last published night (20300110T023000Z, partial) ended 3.3 h ago (SLA 26 h)",
    )


def test_nights_that_stopped_or_fail_are_named(tmp_path: Path) -> None:
    settings = installation(tmp_path / "stopped", night(7, "success"))
    healthy, line = check(settings, NOW)
    assert not healthy
    assert line == "STALE: the last published night (20300107T023000Z, success) ended 75.3 h ago, over the SLA of 26 h"

    settings = installation(tmp_path / "failing", night(8, "success"), night(9, "failed"), night(10, "killed"))
    healthy, line = check(settings, NOW)
    assert not healthy
    assert line.startswith("FAILING: the last 2 run(s) did not succeed; 20300110T023000Z killed")
    assert "STALE: the last published night (20300108T023000Z, success) ended 51.3 h ago" in line


def test_a_run_left_running_and_a_stuck_lock_holder_are_named(tmp_path: Path) -> None:
    killed = ("20300110T043000Z", "running", datetime(2030, 1, 10, 4, 30, tzinfo=UTC), 0.0)
    settings = installation(tmp_path, night(10, "success"), killed)
    healthy, line = check(settings, NOW)
    assert (healthy, line) == (
        False,
        "KILLED: run 20300110T043000Z is left running with no live run behind it (killed?)",
    )

    # a live process has held the lock since two days ago: every night since was locked out
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": "2030-01-08T02:30:00+00:00"}
    (tmp_path / "run.lock").write_text(json.dumps(holder))
    healthy, line = check(settings, NOW)
    assert not healthy
    assert line.startswith(f"STUCK: PID {os.getpid()} has held the run lock since 2030-01-08T02:30:00+00:00")
    assert "KILLED" not in line  # the running row has a live run behind it


def test_nothing_to_read_is_unhealthy(tmp_path: Path) -> None:
    assert check(base(tmp_path), NOW) == (
        False,
        f"NO RUN: no warehouse at {tmp_path / 'wh.duckdb'}: no night has run yet",
    )
    assert check(installation(tmp_path / "empty"), NOW) == (False, "NO RUN: the ledger holds no run yet")


def test_the_command_prints_one_line_and_exits_1(workspace: Workspace) -> None:
    out = workspace.cli("status", "--check", check=False)
    assert out.returncode == 1
    assert out.stdout.strip().splitlines() == [f"NO RUN: no warehouse at {workspace.warehouse}: no night has run yet"]


@pytest.mark.parametrize(
    ("status", "path"), [("success", "/hb/abc"), ("partial", "/hb/abc"), ("failed", "/hb/abc/fail")]
)
def test_the_heartbeat_pings_the_url_or_its_fail_form(tmp_path: Path, status: str, path: str) -> None:
    result = RunResult(started_at=datetime(2030, 1, 1), dbt=DbtResult(ok=True, seconds=1.0))
    if status == "partial":
        result.sources = [SourceResult("shop", ok=False, seconds=1.0, error="down"), SourceResult("web", True, 1.0)]
    if status == "failed":
        result.error = "dbt could not run"
    assert result.status == status
    with WebhookReceiver() as hook:
        settings = replace(base(tmp_path), heartbeat_url=f"{hook.url}/hb/abc")
        assert heartbeat(settings, result) == "sent"
    assert len(hook.paths) == 1 and hook.paths[0].endswith(path), hook.paths
    assert hook.bodies == [f"dusk run {result.run_id}: {status} in 0s"]


def test_no_heartbeat_url_no_ping(tmp_path: Path) -> None:
    assert heartbeat(base(tmp_path), RunResult(started_at=datetime(2030, 1, 1))) == "off"
