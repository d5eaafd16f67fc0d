"""`make bench-scale`: does a night's cost follow the churn, not the size of the tables?

Two new demos, one at the default size and one BENCH_SCALE (default 100) times larger
(``DUSK_DEMO_SCALE``: ~100k customers, ~300k orders, ~800k order lines, a hundred times the
events; each simulated day changes the same share of each). For each: the demo is created, the
first night (everything loaded and built) is timed, then BENCH_RUNS (default 3) rounds of a
simulated day followed by a state-aware ``dusk run`` (the churn night).

Prints, with medians and spreads: the first night at scale (target < 60 s), the churn night at
scale as a multiple of the same night at 1x (target <= 2x), the share of the shop's rows a day
changes, and every night's peak RSS (target <= 1 GiB), each with PASS or MISS; and where the
scaled churn night's time goes (ingest per source, dbt, data diff, publish). Engine: DuckDB.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SCALE = int(os.environ.get("BENCH_SCALE", "100"))
FIRST_NIGHT_TARGET = 60.0
CHURN_TARGET = 2.0
RSS_TARGET = 1 << 30
PROJECT_DIR = Path(__file__).resolve().parent.parent
MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr)\n"
    "sys.exit(code)\n"
)
"""Runs a command and prints its peak RSS in bytes (Linux reports kB) as the last stderr line."""


def demo_env(work: Path, scale: int) -> dict[str, str]:
    """The environment of a demo of its own in ``work`` at ``scale``: its data, dbt's target and
    logs, and a sources.yml whose NATS stream and consumer are the bench's (never the demo's
    DUSK_WEB, which a user's own demo on this machine reads; :func:`delete_stream` removes it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUSK_", "SOURCES__"))}
    tag = f"{os.getpid()}_{scale}"
    sources = work / "sources.yml"
    if not sources.exists():  # a NATS stream of the bench's own, never the demo's
        text = (PROJECT_DIR / "ingestion" / "sources.yml").read_text()
        text = text.replace("DUSK_WEB", f"DUSK_BENCH_{tag}").replace("dusk.web.events", f"dusk.bench{tag}.events")
        sources.write_text(text.replace("durable: dusk_web", f"durable: dusk_bench_{tag}"))
    return env | {
        "DUSK_DATA_DIR": str(work / "data"),
        "DBT_TARGET_PATH": str(work / "target"),
        "DBT_LOG_PATH": str(work / "logs"),
        "DUSK_SOURCES_FILE": str(sources),
        "DUSK_DEMO_SEED": "42",
        "DUSK_DEMO_SCALE": str(scale),
    }


def _dusk(work: Path, scale: int, *args: str) -> tuple[float, int, dict[str, Any]]:
    """``dusk <args>``: its seconds, its peak RSS in bytes, and the run record it left."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable, "-m", "dusk", *args],
        cwd=PROJECT_DIR,
        env=demo_env(work, scale),
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if out.returncode:
        raise SystemExit(f"dusk {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}")
    rss = int(out.stderr.strip().splitlines()[-1])
    record_path = work / "data" / "runs" / "last_run.json"
    record = json.loads(record_path.read_text()) if args[0] == "run" else {}
    return seconds, rss, record


def _create(work: Path, scale: int) -> float:
    """Create the demo (shop, payments, files, events) without a night: its seconds."""
    code = (
        "from dusk.demo import ensure_demo\nfrom dusk.settings import Settings\n"
        "from ingestion.declaration import load_sources\n"
        "s = Settings.from_env()\nensure_demo(s, load_sources(s.sources_file))\n"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, env=demo_env(work, scale), check=True)
    return time.perf_counter() - started


def delete_stream(work: Path, scale: int) -> None:
    code = (
        "from tests.conftest import delete_demo_stream\nfrom pathlib import Path\nimport sys\n"
        "delete_demo_stream(Path(sys.argv[1]))\n"
    )
    env = demo_env(work, scale)
    subprocess.run([sys.executable, "-c", code, env["DUSK_SOURCES_FILE"]], cwd=PROJECT_DIR, env=env, check=False)


def _churn(record: dict[str, Any], rows: dict[str, int]) -> float:
    """The share of the shop's rows the night's extract changed (inserted, updated, deleted)."""
    tables = [t for s in record["sources"] if s["source"] == "shop" for t in s["tables"]]
    changed = sum(t["extracted"] + t["deleted"] for t in tables)
    return changed / max(1, sum(rows.values()))


def _shop_rows(work: Path) -> dict[str, int]:
    import sqlite3

    with sqlite3.connect(work / "data" / "demo" / "shop.sqlite") as con:
        names = ("customers", "products", "orders", "order_items", "stock_levels")
        return {n: int(con.execute(f"select count(*) from {n}").fetchone()[0]) for n in names}


def measure(scale: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"dusk-bench-scale-{scale}-") as tmp:
        work = Path(tmp)
        try:
            created = _create(work, scale)
            first, first_rss, record = _dusk(work, scale, "run")
            assert record["status"] == "success", record.get("error")
            nights, rss, churn, parts = [], [first_rss], [], []
            for _ in range(RUNS):
                _dusk(work, scale, "simulate", "--days", "1")
                seconds, peak, record = _dusk(work, scale, "run")
                assert record["status"] == "success", record.get("error")
                nights.append(seconds)
                rss.append(peak)
                churn.append(_churn(record, _shop_rows(work)))
                parts.append(
                    {s["source"]: s["seconds"] for s in record["sources"]}
                    | {
                        "dbt": record["dbt"]["seconds"],
                        "data diff": sum(d.get("seconds") or 0 for d in record["diff"]),
                        "publish": (record.get("published") or {}).get("seconds", 0.0),
                    }
                )
        finally:
            delete_stream(work, scale)
    return {
        "created": created,
        "first": first,
        "nights": nights,
        "rss": rss,
        "churn": churn,
        "parts": parts,
    }


def main() -> None:
    small, large = measure(1), measure(SCALE)
    lines = [f"nights at 1x and {SCALE}x the demo (DuckDB), medians of {RUNS} churn nights (spread min-max)"]
    first = large["first"]
    lines.append(
        f"demo created at {SCALE}x in {large['created']:.1f} s; its first night {first:.1f} s "
        f"(target < {FIRST_NIGHT_TARGET:.0f} s) {'PASS' if first < FIRST_NIGHT_TARGET else 'MISS'}; "
        f"at 1x {small['first']:.1f} s"
    )
    for name, run in (("1x", small), (f"{SCALE}x", large)):
        n = run["nights"]
        lines.append(
            f"churn night at {name:<5} {statistics.median(n):6.1f} s (spread {min(n):.1f}-{max(n):.1f}); "
            f"a day changes {statistics.median(run['churn']):.1%} of the shop's rows"
        )
    ratio = statistics.median(large["nights"]) / statistics.median(small["nights"])
    per_round = [b / a for a, b in zip(small["nights"], large["nights"], strict=True)]
    lines.append(
        f"churn night at {SCALE}x / at 1x: {ratio:.2f}x (per round {min(per_round):.2f}-{max(per_round):.2f}; "
        f"target <= {CHURN_TARGET:.0f}x) {'PASS' if ratio <= CHURN_TARGET else 'MISS'}"
    )
    peak = max(large["rss"] + small["rss"])
    gib = 1 << 30
    lines.append(
        f"peak RSS of any night: {peak / gib:.2f} GiB (first night at {SCALE}x {large['rss'][0] / gib:.2f}, "
        f"churn nights at {SCALE}x up to {max(large['rss'][1:]) / gib:.2f}; target <= 1 GiB) "
        f"{'PASS' if peak <= RSS_TARGET else 'MISS'}"
    )
    keys = list(large["parts"][0])
    lines.append(
        f"where a churn night at {SCALE}x goes (medians, s): "
        + ", ".join(f"{k} {statistics.median(p[k] for p in large['parts']):.1f}" for k in keys)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
