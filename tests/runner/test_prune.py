"""Retention: what is older than its kind's limit goes, what is newer or still needed stays, and a
night prunes after it is recorded."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from dusk.settings import Retention, Settings
from dusk.steps.prune import prune
from dusk.warehouse import ensure_ledger
from ingestion.declaration import load_sources
from tests.conftest import Workspace
from tests.helpers import LEDGER_STEPS

DAY = 86400.0


def aged(path: Path, days: float, text: str = "x", folder: bool = False) -> Path:
    """A file (``folder``: a folder holding one) last modified ``days`` ago."""
    if folder:
        path.mkdir(parents=True, exist_ok=True)
        (path / "part.parquet").write_text(text)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    when = time.time() - days * DAY
    os.utime(path, (when, when))
    return path


def ledger_run(con: duckdb.DuckDBPyConnection, run_id: str, days_ago: float, shop: str = "ok") -> None:
    at = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=days_ago)
    con.execute("insert into dusk_ledger.runs values (?, 'success', ?, 1, null, null, 'run')", [run_id, at])
    con.execute(f"insert into dusk_ledger.steps {LEDGER_STEPS} values (?, 'ingest', 'shop', ?, 1, 1)", [run_id, shop])
    con.execute(f"insert into dusk_ledger.steps {LEDGER_STEPS} values (?, 'dbt', null, 'ok', 1, 1)", [run_id])
    con.execute("insert into dusk_ledger.findings values (?, 'volume', 'warn', 'shop.orders', 'm', 1, 1)", [run_id])


def test_each_kind_is_pruned_by_its_own_retention_and_what_is_still_needed_stays(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = Settings(
        data, data / "warehouse.duckdb", tmp_path / "target", demo=True, demo_seed=1, lineage_dir=data / "lineage"
    )
    old_record, new_record = aged(data / "runs" / "20250101T000000Z.json", 120), aged(data / "runs" / "x.json", 1)
    last = aged(data / "runs" / "last_run.json", 400)  # the last run's record, whatever its age
    old_log, new_log = aged(data / "logs" / "old.jsonl", 100), aged(data / "logs" / "new.jsonl", 10)
    old_events, new_events = aged(data / "lineage" / "old.jsonl", 100), aged(data / "lineage" / "new.jsonl", 10)
    old_package = aged(data / "dlt" / "shop" / "load" / "loaded" / "1700000000.1", 45, folder=True)
    new_package = aged(data / "dlt" / "shop" / "load" / "loaded" / "1790000000.1", 2, folder=True)
    state = aged(data / "dlt" / "shop" / "state.json", 400)  # dlt's own files outside loaded/ stay
    archived = aged(data / "landing" / "archive" / "marketing_spend_2025-01-01.csv", 200)
    waiting = aged(data / "landing" / "marketing_spend_2025-01-02.csv", 200)  # not loaded yet: never pruned
    salt = aged(data / "secrets" / "pii_salt", 400)
    specs = load_sources()
    with duckdb.connect(str(settings.warehouse)) as con:
        ensure_ledger(con)
        ledger_run(con, "20250101T000000000000Z", 400)  # old; the last good shop read: kept
        ledger_run(con, "20250102T000000000000Z", 399, shop="failed")  # old: goes
        ledger_run(con, "20261101T000000000000Z", 30, shop="failed")  # recent: kept

        dry = prune(settings, specs, con, dry_run=True)
        kinds = {"run records": 1, "run logs": 1, "lineage events": 1, "dlt load packages": 1}
        assert dry.files == kinds | {"archived landing files": 0}
        assert dry.ledger_runs == 0  # ledger and archive are kept for ever by default
        assert all(p.exists() for p in (old_record, old_log, old_package))

        keep = Retention(runs_days=90, dlt_days=30, archive_days=180, ledger_days=365)
        pruned = prune(replace(settings, retention=keep), specs, con)
        assert pruned.files == kinds | {"archived landing files": 1}
        assert pruned.ledger_runs == 1 and "1 ledger runs" in pruned.describe()
        gone = (old_record, old_log, old_events, old_package, archived)
        stayed = (new_record, last, new_log, new_events, new_package, state, waiting, salt)
        assert not any(p.exists() for p in gone) and all(p.exists() for p in stayed)
        runs = con.execute("select run_id from dusk_ledger.runs order by 1").fetchall()
        assert runs == [("20250101T000000000000Z",), ("20261101T000000000000Z",)]
        for table in ("steps", "findings"):
            left = con.execute(f"select distinct run_id from dusk_ledger.{table} order by 1").fetchall()
            assert left == runs, table
        assert prune(replace(settings, retention=keep), specs, con).describe() == "nothing"


@pytest.mark.e2e
def test_a_night_prunes_after_it_is_recorded_and_prune_says_what_it_would_remove(workspace: Workspace) -> None:
    ws = workspace
    old_log = aged(ws.data_dir / "logs" / "20250101T000000000000Z.jsonl", 100)
    old_record = aged(ws.data_dir / "runs" / "20250101T000000000000Z.json", 100)
    ws.cli("run")
    assert not old_log.exists() and not old_record.exists()
    assert (ws.data_dir / "runs" / "last_run.json").exists() and list((ws.data_dir / "logs").glob("*.jsonl"))

    aged(ws.data_dir / "logs" / "20250102T000000000000Z.jsonl", 100)
    out = ws.cli("prune", "--dry-run")
    assert out.stdout.strip().startswith("Would prune: 1 run logs"), out.stdout
    out = ws.cli("prune", env_extra={"DUSK_KEEP_RUNS_DAYS": "0"})  # 0: for ever
    assert out.stdout.strip() == "Pruned: nothing", out.stdout
    bad = ws.cli("prune", check=False, env_extra={"DUSK_KEEP_DLT_DAYS": "-1"})
    assert bad.returncode == 2 and "DUSK_KEEP_DLT_DAYS='-1': a number of days >= 0" in bad.stderr
