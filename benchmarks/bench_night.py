"""`make bench-night`: what a state-aware night costs against a full one, on the demo.

A new demo (``dusk run``, the first night builds everything), then BENCH_RUNS (default 3) rounds of:

1. a **full night**: a simulated day of new data in every source, ``dusk run --full``;
2. a **quiet night**: ``dusk run`` with nothing new (it must run no model, snapshot or seed);
3. a **one-source night**: one row of the shop's products changed, ``dusk run`` (it must build
   exactly what ``source:shop.products+`` selects, and the ledger's tests).

Prints each night's median seconds with its spread, its dbt seconds, and the ratios to the full
night against the targets of issue 21 (quiet <= 25 %, one source <= 50 %), PASS or MISS, and the
same ratio for the dbt part alone; and the data diff's share of the full night (the seconds its
comparisons took, every relation of a night with a day of new data compared; target <= 10 %).

The rounds run twice, on the same demo:

- **a process per night** (cron starting ``dusk run``): each night's seconds are the process's,
  from its start (Python, dlt, DuckDB and dbt loaded) to its end;
- **resident** (``dusk serve``): the nights run one after another in one process, by the function
  ``dusk serve`` runs for each night (the run lock, the night, its summary), started by commands on
  the process's standard input so that the bench can change the data between them. One quiet night
  runs first and is not counted: only a server's first night pays for the loading.

The engine is BENCH_TARGET (default duckdb; postgres uses the database BENCH_WAREHOUSE_DB, made and
dropped here; spark the embedded session).
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
from collections.abc import Callable
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
    return seconds, _record(work)


def _record(work: Path) -> dict[str, Any]:
    return json.loads((work / "data" / "runs" / "last_run.json").read_text())


DONE = "bench-night-done "
"""How the resident worker reports a night on its standard output (the summary is printed too)."""


class Resident:
    """A ``dusk serve``-like process of the bench's own: :func:`worker` in a child, which runs a
    night for each line it reads (``run`` or ``full``)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker"],
            cwd=PROJECT_DIR,
            env=_env(work),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def __call__(self, *args: str) -> tuple[float, dict[str, Any]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(("full" if "--full" in args else "run") + "\n")
        self.proc.stdin.flush()
        seen: list[str] = []
        for line in self.proc.stdout:
            if line.startswith(DONE):
                seconds, code = line.split()[1:]
                if int(code):
                    raise SystemExit(f"the resident night ended {code}:\n{''.join(seen[-60:])}")
                return float(seconds), _record(self.work)
            seen.append(line)
        raise SystemExit(f"the resident worker ended:\n{''.join(seen[-60:])}")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=120)


def worker() -> None:
    """A night per line on standard input, each by the function ``dusk serve`` runs for a night;
    its seconds and exit code as a :data:`DONE` line."""
    from dusk.cli import EXIT_CODES, EXIT_FAILED, locked_night, settings
    from dusk.record import Plan

    for line in sys.stdin:
        started = time.perf_counter()
        result = locked_night(settings(), Plan(full=line.strip() == "full"))
        seconds = time.perf_counter() - started
        print(f"{DONE}{seconds:.3f} {EXIT_CODES.get(result.status, EXIT_FAILED)}", flush=True)


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


def _reprice(work: Path) -> None:
    """The shop's first product a unit dearer, updated now."""
    with sqlite3.connect(work / "data" / "demo" / "shop.sqlite") as shop:
        shop.execute(
            "update products set unit_price = unit_price + 1, updated_at = datetime('now') "
            "where product_id = (select min(product_id) from products)"
        )


def _drop_warehouse_db() -> None:
    if ENGINE == "postgres":
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as con:
            con.execute(f'drop database if exists "{WAREHOUSE_DB}" with (force)')


Night = Callable[..., tuple[float, dict[str, Any]]]


def rounds(work: Path, night: Night) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float]]:
    """BENCH_RUNS rounds of a full, a quiet and a one-source night, each night by ``night``: the
    seconds of each kind, their dbt seconds, and the data diff's seconds in each full night."""
    nights: dict[str, list[float]] = {"full": [], "quiet": [], "one source": []}
    dbt: dict[str, list[float]] = {k: [] for k in nights}
    diff: list[float] = []
    for _ in range(RUNS):
        _dusk(work, "simulate", "--days", "1")
        seconds, record = night("run", "--full")
        nights["full"].append(seconds)
        dbt["full"].append(record["dbt"]["seconds"])
        assert any(d["status"] == "compared" and d["added"] for d in record["diff"]), "nothing was compared"
        diff.append(sum(d["seconds"] for d in record["diff"]))
        seconds, record = night("run")
        built = {u for u in _built(record) if u.split(".")[0] in ("model", "snapshot", "seed")}
        assert not built, f"the quiet night built {sorted(built)}"
        nights["quiet"].append(seconds)
        dbt["quiet"].append(record["dbt"]["seconds"])
        _reprice(work)
        seconds, record = night("run")
        expected = _downstream(work, "shop.products") | _downstream(work, "ledger.runs")
        assert _built(record) == expected, f"the one-source night built {sorted(_built(record) ^ expected)}"
        nights["one source"].append(seconds)
        dbt["one source"].append(record["dbt"]["seconds"])
    return nights, dbt, diff


def report(title: str, nights: dict[str, list[float]], dbt: dict[str, list[float]], diff: list[float]) -> list[str]:
    """The lines for one way of running the nights: medians, spreads, ratios and verdicts."""
    full = statistics.median(nights["full"])
    lines = [title]
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
    return lines


def main() -> None:
    _drop_warehouse_db()
    try:
        with tempfile.TemporaryDirectory(prefix="dusk-bench-night-") as tmp:
            work = Path(tmp)
            _dusk(work, "run")
            per_process = rounds(work, lambda *args: _dusk(work, *args))
            resident = Resident(work)
            try:
                resident("run")  # the server's first night: it loads Python, dlt and dbt
                in_one = rounds(work, resident)
            finally:
                resident.close()
    finally:
        _drop_warehouse_db()
    lines = report(
        f"state-aware nights on {ENGINE}, the demo, medians of {RUNS} rounds (spread min-max)\n"
        "a process per night (cron starting `dusk run`; seconds from the process's start to its end):",
        *per_process,
    )
    lines += report("\nresident (`dusk serve`: the nights in one process, after its first):", *in_one)
    print("\n".join(lines))


if __name__ == "__main__":
    worker() if sys.argv[1:] == ["--worker"] else main()
