"""The pipeline's specification (`dusk spec`, docs/pipeline.md) says what the declarations, the
dbt project and the runbook say: the committed file is current (CI fails otherwise), a change to
what it is generated from makes it stale, and the live blocks (this installation's settings and
the ledger's volumes) never do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb

from dusk.settings import PROJECT_DIR
from dusk.steps import spec
from dusk.warehouse import ensure_ledger


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUSK_", "SOURCES__"))}
    return {**env, "DUSK_DATA_DIR": str(tmp_path / "data"), "DBT_TARGET_PATH": str(tmp_path / "target"), **extra}


def test_the_committed_specification_is_current(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dusk", "spec", "--check"],
        cwd=PROJECT_DIR,
        env=_env(tmp_path, DUSK_SLA_HOURS="99", DUSK_SOURCE_ATTEMPTS="7"),  # settings are live: ignored
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, f"run `dusk spec` and commit docs/pipeline.md: {out.stdout}{out.stderr}"
    text = (PROJECT_DIR / spec.SPEC).read_text()
    for part in (
        "## Sources",
        "## Data flow",
        "```mermaid",
        "## Transformations",
        "## Quality checks",
        "## Schedule",
        "## Error handling and recovery",
        "## Monitoring and alerts",
        "## Runbook",
    ):
        assert part in text, part
    assert "| shop | database | stock_levels | product_id, warehouse_code |" in text
    assert "  raw_shop --> model_dusk_base_shop__customers" in text
    assert "| `orders` | incremental (merge) | sales-analytics |" in text
    assert "| `shop.customers`.`customer_id` | unique | error |" in text
    runbook = spec.runbook_of(spec.operations_doc())
    assert runbook.splitlines()[0] == "| symptom | what to do |" and runbook in text


def test_stale_ignores_the_live_blocks_only() -> None:
    base = f"# Spec\n\n{spec.LIVE_START}\nvolume: 10 rows\n{spec.LIVE_END}\n\n| a | b |\n"
    assert not spec.stale(base, base.replace("10 rows", "12 rows"))
    assert spec.stale(base, base.replace("| a | b |", "| a | c |"))


def test_volumes_come_from_the_run_ledger() -> None:
    with duckdb.connect() as con:
        ensure_ledger(con)
        for i, loaded in enumerate([5, 7, 100, 6]):
            run = f"2026010{i + 1}T000000Z"
            con.execute(
                "insert into dusk_ledger.runs (run_id, status, started_at, seconds) values (?, 'success', ?, 1)",
                [run, f"2026-01-0{i + 1} 02:30:00"],
            )
            con.execute(
                "insert into dusk_ledger.source_tables values (?, 'shop', 'orders', ?, 0, 0, ?)", [run, loaded, loaded]
            )
        (volume,) = spec.volumes(con)
    assert (volume.source, volume.table, volume.last_loaded, volume.last_run) == (
        "shop",
        "orders",
        6,
        "20260104T000000Z",
    )
    assert (volume.median_loaded, volume.nights) == (6.5, 4)
