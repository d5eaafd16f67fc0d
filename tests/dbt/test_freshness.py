"""Source freshness is when dusk last read a source successfully, not when its rows last changed:
a source read tonight is fresh however old its rows; one whose reads failed for longer than the
thresholds warns, then errors (dbt_project.yml: warn after 26 h, error after 50 h)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.conftest import PROJECT_DIR, Workspace
from tests.helpers import LEDGER_STEPS


def freshness(ws: Workspace) -> dict[str, str]:
    """`dbt source freshness` on the workspace's warehouse: status per source table."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "dbt"), "source", "freshness", "--select", "source:shop source:payments"],
        cwd=PROJECT_DIR,
        env={**ws.env(), "DBT_PROFILES_DIR": str(PROJECT_DIR / "profiles"), "DUSK_WAREHOUSE": str(ws.warehouse)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    sources = json.loads((ws.root / "target" / "sources.json").read_text())
    assert sources["results"], out.stdout + out.stderr
    return {r["unique_id"].removeprefix("source.dusk."): r["status"] for r in sources["results"]}


@pytest.mark.e2e
def test_freshness_follows_the_last_successful_read_not_the_last_change(workspace: Workspace) -> None:
    ws = workspace
    ws.cli("run")
    with duckdb.connect(str(ws.warehouse)) as wh:
        # the rows are old (loaded 80 hours ago), but the shop was read successfully tonight
        wh.execute("update dusk_ledger.runs set started_at = started_at - interval 80 hour")
        wh.execute(
            "insert into dusk_ledger.runs (run_id, status, started_at, seconds) "
            "values ('tonight', 'success', now()::timestamp, 1)"
        )
        wh.execute(
            f"insert into dusk_ledger.steps {LEDGER_STEPS} values ('tonight', 'ingest', 'shop', 'ok', 1, 1), "
            "('tonight', 'ingest', 'payments', 'failed', 3, 1)"
        )
    status = freshness(ws)
    assert {k for k, v in status.items() if k.startswith("shop.")} and all(
        v == "pass" for k, v in status.items() if k.startswith("shop.")
    ), status
    assert status["payments.payments"] == "error"  # its last successful read is 80 hours old

    with duckdb.connect(str(ws.warehouse)) as wh:
        wh.execute(
            "update dusk_ledger.runs set started_at = now()::timestamp - interval 30 hour where run_id = 'tonight'"
        )
    assert all(v == "warn" for k, v in freshness(ws).items() if k.startswith("shop.")), freshness(ws)


def test_the_runner_reads_each_sources_freshness_limits_from_dbt(tmp_path: Path) -> None:
    """dbt is the one home of the limits: the runner's freshness_sla finding takes them from dbt's
    parsed project (dbt_project.yml's default; the optional stream source has none)."""
    from dusk.settings import Settings
    from dusk.steps.build import freshness_limits, parse
    from ingestion.declaration import load_sources

    settings = Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "target", demo=True, demo_seed=1)
    manifest, error = parse(settings)
    assert manifest is not None, error
    limits = freshness_limits(manifest, load_sources())
    assert limits == {"shop": (26.0, 50.0), "payments": (26.0, 50.0), "marketing": (26.0, 50.0)}
