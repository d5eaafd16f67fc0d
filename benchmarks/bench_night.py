"""`make bench-night`: what a state-aware night costs against a full one, on the demo.

A new demo (``dusk run``, the first night builds everything), then BENCH_RUNS (default 3) rounds of:

1. a **full night**: a simulated day of new data in every source, ``dusk run --full``;
2. a **quiet night**: ``dusk run`` with nothing new (it must run no model, snapshot or seed);
3. a **one-source night**: one row of the shop's products changed, ``dusk run`` (it must build
   exactly what ``source:shop.products+`` selects, and the ledger's tests).

Prints each night's median seconds with its spread, its dbt seconds, and the ratios to the full
night against the targets of issue 21 (quiet <= 25 %, one source <= 50 %), PASS or MISS, and the
same ratio for the dbt part alone (the night's seconds are the process's, start-up included); and
the data diff's share of the full night (the seconds its comparisons took, every relation of a
night with a day of new data compared; target <= 10 %). The engine is BENCH_TARGET (default
duckdb; postgres uses the database BENCH_WAREHOUSE_DB, made and dropped here; spark the embedded
session).
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
ENGINE = os.environ.get("BENCH_TARGET", "duckdb")
PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
WAREHOUSE_DB = os.environ.get("BENCH_WAREHOUSE_DB", "dusk_bench_night")
TARGETS = {"quiet": 0.25, "one source": 0.50}
DIFF_TARGET = 0.10
PROJECT_DIR = Path(__file__).resolve().parent.parent


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUSK_", "SOURCES__"))}
    return env | {
        "DUSK_DATA_DIR": str(work / "data"),
        "DBT_TARGET_PATH": str(work / "target"),
        "DBT_LOG_PATH": str(work / "logs"),
        "DUSK_TARGET": ENGINE,
        "DUSK_PG_DATABASE": WAREHOUSE_DB,
        "DUSK_DEMO_SEED": "42",
        "DUSK_ICEBERG_CATALOG_URI": f"sqlite:///{work / 'data' / 'iceberg' / 'catalog.db'}",
    }


def _dusk(work: Path, *args: str) -> tuple[float, dict[str, Any]]:
    """``dusk <args>`` in the bench's workspace: its seconds, and the run record it left."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "dusk", *args], cwd=PROJECT_DIR, env=_env(work), capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if out.returncode:
        raise SystemExit(f"dusk {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}")
    return seconds, json.loads((work / "data" / "runs" / "last_run.json").read_text())


def _built(record: dict[str, Any]) -> set[str]:
    """The night's dbt nodes that ran (exposures have nothing to run)."""
    return {
        n["unique_id"]
        for n in record["dbt"]["nodes"]
        if n["status"] != "unchanged" and n["resource_type"] != "exposure"
    }


def _downstream(work: Path, *sources: str) -> set[str]:
    """What ``source:<s>+`` selects for each of ``sources`` (``shop.products``), with the unit
    tests of the models among it, from the night's manifest."""
    manifest = json.loads((work / "target" / "manifest.json").read_text())
    todo, seen = [f"source.dusk.{s}" for s in sources], set()
    while todo:
        for child in manifest["child_map"].get(todo.pop(), []):
            if child not in seen and child.split(".")[0] in ("model", "snapshot", "seed", "test"):
                seen.add(child)
                todo.append(child)
    return seen | {u for u, t in manifest["unit_tests"].items() if set(t["depends_on"]["nodes"]) & seen}


def _reprice(work: Path, round_: int) -> None:
    with sqlite3.connect(work / "data" / "demo" / "shop.sqlite") as shop:
        shop.execute(
            "update products set unit_price = unit_price + 1, updated_at = datetime('now') where product_id = ?",
            [round_ + 1],
        )


def _drop_warehouse_db() -> None:
    if ENGINE == "postgres":
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as con:
            con.execute(f'drop database if exists "{WAREHOUSE_DB}" with (force)')


def main() -> None:
    nights: dict[str, list[float]] = {"full": [], "quiet": [], "one source": []}
    dbt: dict[str, list[float]] = {k: [] for k in nights}
    diff: list[float] = []
    _drop_warehouse_db()
    try:
        with tempfile.TemporaryDirectory(prefix="dusk-bench-night-") as tmp:
            work = Path(tmp)
            _dusk(work, "run")
            for round_ in range(RUNS):
                _dusk(work, "simulate", "--days", "1")
                seconds, record = _dusk(work, "run", "--full")
                nights["full"].append(seconds)
                dbt["full"].append(record["dbt"]["seconds"])
                assert any(d["status"] == "compared" and d["added"] for d in record["diff"]), "nothing was compared"
                diff.append(sum(d["seconds"] for d in record["diff"]))
                seconds, record = _dusk(work, "run")
                built = {u for u in _built(record) if u.split(".")[0] in ("model", "snapshot", "seed")}
                assert not built, f"the quiet night built {sorted(built)}"
                nights["quiet"].append(seconds)
                dbt["quiet"].append(record["dbt"]["seconds"])
                _reprice(work, round_)
                seconds, record = _dusk(work, "run")
                expected = _downstream(work, "shop.products") | _downstream(work, "ledger.runs")
                assert _built(record) == expected, f"the one-source night built {sorted(_built(record) ^ expected)}"
                nights["one source"].append(seconds)
                dbt["one source"].append(record["dbt"]["seconds"])
    finally:
        _drop_warehouse_db()
    full = statistics.median(nights["full"])
    lines = [f"state-aware nights on {ENGINE}, the demo, medians of {RUNS} rounds (spread min-max)"]
    for name, runs in nights.items():
        line = (
            f"{name + ' night':<18} {statistics.median(runs):6.1f} s (spread {min(runs):.1f}-{max(runs):.1f}), "
            f"dbt {statistics.median(dbt[name]):5.1f} s"
        )
        if name in TARGETS:
            ratios = [n / f for n, f in zip(runs, nights["full"], strict=True)]
            share = statistics.median(runs) / full
            verdict = "PASS" if share <= TARGETS[name] else "MISS"
            dbt_share = statistics.median(dbt[name]) / statistics.median(dbt["full"])
            line += (
                f"  {share:.0%} of the full night (per round {min(ratios):.0%}-{max(ratios):.0%}; "
                f"target <= {TARGETS[name]:.0%}) {verdict}; its dbt part {dbt_share:.0%} of the full night's"
            )
        lines.append(line)
    shares = [d / n for d, n in zip(diff, nights["full"], strict=True)]
    verdict = "PASS" if statistics.median(shares) <= DIFF_TARGET else "MISS"
    lines.append(
        f"{'data diff':<18} {statistics.median(diff):6.2f} s (spread {min(diff):.2f}-{max(diff):.2f}) in the full "
        f"night: {statistics.median(shares):.1%} of it (per round {min(shares):.1%}-{max(shares):.1%}; "
        f"target <= {DIFF_TARGET:.0%}) {verdict}"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
