"""`make bench`: a full and a 1 % incremental load of TPC-H lineitem from PostgreSQL, against the
server's own COPY speed.

1. Generates lineitem (scale factor BENCH_SF, default 1 = 6,001,215 rows) with DuckDB's tpch
   extension and writes it into the PostgreSQL database BENCH_DB (default ``dusk_bench``, created
   if missing, reused if it already holds the table), with a bigint key ``l_id`` and an indexed
   ``updated_at`` cursor.
2. The limit: ``COPY (SELECT * FROM lineitem) TO STDOUT`` read and discarded by the client, the
   same as psql's ``\\copy ... to /dev/null``.
3. Our full load: dusk's database source into a fresh DuckDB warehouse, in a child process whose
   peak RSS is sampled every 50 ms.
4. 1 % of the rows change (new ``updated_at``); an incremental run (cursor only), then another 1 %
   and an incremental run with the key-diff delete pass on.
5. When the server runs with ``wal_level=logical``: the table declared ``deletes: cdc`` (a
   replication slot of its own, dropped afterwards), a snapshot load, 1 % changed, and the
   incremental run that reads those changes from the slot.
6. Per warehouse engine: the same full load into a PostgreSQL warehouse (a database of its own,
   dropped afterwards), and a demo night (``dusk run`` on a new demo) on each engine (Spark when
   ``make setup-spark`` ran: embedded, local[2], SQLite catalog), with where its time goes
   (ingest, dbt, the rest), as ratios to DuckDB in the same run. The TPC-H load into Iceberg is
   not measured yet.

Every figure is the median of BENCH_RUNS (default 3) runs, with its spread (min-max), its target
and PASS or MISS (issue 23's targets: full load >= 0.8 of the COPY limit, peak RSS <= 1 GiB, a 1 %
churn night <= 5 % of the full load by cursor, <= 10 % with key-diff, <= 5 % by CDC). BENCH_SF may
name several scale factors (``BENCH_SF=1,5``): the load figures are measured at each, in a
database of its own (``dusk_bench_sf5``), and the engines' figures at the first. Prints one table
per scale factor; nothing is asserted. Needs a PostgreSQL server (BENCH_PG, default
postgresql://postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
SCALE_FACTORS = os.environ.get("BENCH_SF", "1")
SF = float(SCALE_FACTORS.split(",")[0])
DB = os.environ.get("BENCH_DB", "dusk_bench")
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
WAREHOUSE_DB = os.environ.get("BENCH_WAREHOUSE_DB", "dusk_bench_wh")
"""The PostgreSQL warehouse of the engine figures (made and dropped by each run)."""
ENGINES = os.environ.get("BENCH_ENGINES", "1") == "1"
"""Whether this run measures the warehouse engines too (a second scale factor's run does not)."""
TARGETS = {"ratio": 0.8, "rss_gib": 1.0, "cursor": 0.05, "key_diff": 0.10, "cdc": 0.05}


def _url(db: str) -> str:
    return f"{PG}/{db}"


def prepare() -> int:
    """Create and fill the benchmark table unless it is already there; return its row count."""
    with psycopg.connect(_url("postgres"), autocommit=True) as con:
        if not con.execute("select 1 from pg_database where datname = %s", (DB,)).fetchone():
            con.execute(f'create database "{DB}"')
    with psycopg.connect(_url(DB), autocommit=True) as con:
        exists = con.execute("select to_regclass('public.lineitem') is not null").fetchone()
        if exists and exists[0]:
            (n,) = con.execute("select count(*) from lineitem").fetchone() or (0,)
            if n:
                return int(n)
    import duckdb
    import sqlalchemy as sa

    from ingestion.database.scan import load_extension

    print(f"generating TPC-H lineitem at scale factor {SF} into {DB} ...", flush=True)
    duck = duckdb.connect()
    load_extension(duck, "duckdb_extension_tpch")
    load_extension(duck, "duckdb_extension_postgres_scanner")
    duck.execute(f"CALL dbgen(sf={SF})")
    url = sa.make_url(_url(DB))
    conninfo = f"dbname={DB} host={url.host or 'localhost'} port={url.port or 5432} user={url.username or 'postgres'}"
    if url.password:
        conninfo += f" password={url.password}"
    duck.execute(f"ATTACH '{conninfo}' AS pg (TYPE postgres)")
    duck.execute("DROP TABLE IF EXISTS pg.public.lineitem")
    duck.execute(
        "CREATE TABLE pg.public.lineitem AS SELECT row_number() OVER () AS l_id, *, "
        "TIMESTAMP '2026-01-01' + to_seconds(row_number() OVER ()) AS updated_at FROM lineitem"
    )
    duck.close()
    with psycopg.connect(_url(DB), autocommit=True) as con:
        con.execute("alter table lineitem add primary key (l_id)")
        con.execute("create index on lineitem (updated_at)")
        con.execute("vacuum analyze lineitem")
        (n,) = con.execute("select count(*) from lineitem").fetchone() or (0,)
    return int(n)


def copy_seconds() -> float:
    """Seconds for the server to COPY the whole table out to a client that discards it."""
    with psycopg.connect(_url(DB)) as con, con.cursor() as cur:
        started = time.perf_counter()
        with cur.copy("COPY (SELECT * FROM lineitem) TO STDOUT") as copy:
            for _ in copy:
                pass
        return time.perf_counter() - started


def child(workdir: str, deletes: str, engine: str) -> None:
    """Run in a child process: one ingest of the bench source into the ``engine`` warehouse;
    print JSON with seconds, rows, RSS."""
    import psutil

    peak = [0]

    def sample() -> None:
        proc = psutil.Process()
        while True:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    from dusk.settings import PostgresSettings, Settings
    from dusk.warehouse import open_warehouse
    from ingestion.declaration import SourceSpec, TableSpec
    from ingestion.dlt_settings import configure_dlt
    from ingestion.run import ingest_source

    configure_dlt()
    root = Path(workdir)
    settings = Settings(root, root / "bench.duckdb", root / "target", demo=False, demo_seed=0, target=engine)
    if engine == "postgres":
        # DUSK_PG_* come from warehouse_env(), which run_child sets
        settings = replace(settings, postgres=PostgresSettings.from_env())
        with open_warehouse(settings).connect():
            pass  # created
    cursor = None if deletes == "cdc" else "updated_at"
    table = TableSpec("lineitem", ("l_id",), cursor, "merge", deletes)  # type: ignore[arg-type]
    spec = SourceSpec("bench", "database", "TPC-H lineitem", False, (table,))
    started = time.perf_counter()
    result = ingest_source(spec, open_warehouse(settings).target())
    seconds = time.perf_counter() - started
    if not result.ok:
        raise SystemExit(result.error)
    rows = result.tables[0].extracted
    print(json.dumps({"seconds": seconds, "rows": rows, "peak_rss": peak[0]}))


def run_child(workdir: str, deletes: str = "none", engine: str = "duckdb") -> dict[str, Any]:
    env = {**os.environ, "SOURCES__BENCH__CREDENTIALS": _url(DB), **warehouse_env()}
    out = subprocess.run(
        [sys.executable, __file__, "--child", workdir, deletes, engine],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise SystemExit(f"bench child failed:\n{out.stdout}\n{out.stderr}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def touch_one_percent(round_: int) -> int:
    """Give 1 % of the rows a new updated_at (a different 1 % each round), above every one the
    table holds: the generated ones run a second per row from 2026-01-01, past today's date at
    scale factor 5 (30 M seconds), where ``now()`` would stamp the changes below the cursor."""
    with psycopg.connect(_url(DB), autocommit=True) as con:
        cur = con.execute(
            "update lineitem set updated_at = greatest(now() at time zone 'utc', "
            "(select max(updated_at) from lineitem) + interval '1 second'), l_comment = 'bench ' || %s "
            "where l_id %% 100 = %s",
            (round_, round_ % 100),
        )
        return cur.rowcount


def wal_level() -> str:
    with psycopg.connect(_url(DB)) as con:
        row = con.execute("show wal_level").fetchone()
        return str(row[0]) if row else ""


def cdc_round(work: str, round_: int) -> tuple[float, float]:
    """A fresh slot, a snapshot load and a 1 % CDC run; returns (snapshot s, CDC run s)."""
    import sqlalchemy as sa

    from ingestion.database import cdc
    from ingestion.declaration import SourceSpec, TableSpec

    spec = SourceSpec("bench", "database", "", False, (TableSpec("lineitem", ("l_id",), None, "merge", "cdc"),))
    url = sa.make_url(_url(DB))
    cdc.drop(url, spec)
    cdc.setup(url, spec)
    try:
        snapshot = run_child(work, "cdc")
        changed = touch_one_percent(round_)
        run = run_child(work, "cdc")
        assert run["rows"] == changed, (run, changed)
        return snapshot["seconds"], run["seconds"]
    finally:
        cdc.drop(url, spec)


def warehouse_env() -> dict[str, str]:
    """DUSK_PG_* for the PostgreSQL warehouse of the engine figures: database WAREHOUSE_DB on the
    server BENCH_PG names, where :func:`drop_warehouse_db` drops it (a warehouse left on another
    server kept its PII salt, and the next demo night there refused to start)."""
    import sqlalchemy as sa

    url = sa.make_url(PG)
    env = {
        "DUSK_PG_HOST": url.host or "127.0.0.1",
        "DUSK_PG_PORT": str(url.port or 5432),
        "DUSK_PG_USER": url.username or "postgres",
        "DUSK_PG_DATABASE": WAREHOUSE_DB,
    }
    if url.password:
        env["DUSK_PG_PASSWORD"] = url.password
    return env


def drop_warehouse_db() -> None:
    with psycopg.connect(_url("postgres"), autocommit=True) as con:
        con.execute(f"drop database if exists {WAREHOUSE_DB} with (force)")


def pg_full_load() -> float:
    """The full load into a new PostgreSQL warehouse; its seconds."""
    drop_warehouse_db()
    try:
        with tempfile.TemporaryDirectory(prefix="dusk-bench-pg-") as work:
            return float(run_child(work, engine="postgres")["seconds"])
    finally:
        drop_warehouse_db()


def demo_night(engine: str) -> dict[str, float]:
    """A demo night (``dusk run`` on a new demo) on ``engine``: its seconds, and the ingest's and
    dbt's (parse, build, freshness, docs) from the run record."""
    from bench_scale import delete_stream, demo_env

    drop_warehouse_db()
    try:
        with tempfile.TemporaryDirectory(prefix="dusk-bench-night-") as tmp:
            work = Path(tmp)
            env = demo_env(work, 1) | {"DUSK_TARGET": engine, **warehouse_env()}
            try:
                started = time.perf_counter()
                out = subprocess.run([sys.executable, "-m", "dusk", "run"], env=env, capture_output=True, text=True)
                seconds = time.perf_counter() - started
            finally:
                delete_stream(work, 1)
            if out.returncode:
                raise SystemExit(f"the demo night on {engine} failed:\n{out.stdout[-3000:]}")
            record = json.loads((work / "data" / "runs" / "last_run.json").read_text())
    finally:
        drop_warehouse_db()
    return {"night": seconds, "ingest": ingest_span(record["sources"]), "dbt": record["dbt"]["seconds"]}


def ingest_span(sources: list[dict[str, Any]]) -> float:
    """The ingest step's seconds: from the first source's start to the last one's end (side by
    side on DuckDB and PostgreSQL, one at a time on embedded Spark)."""
    if not sources:
        return 0.0
    starts = [datetime.fromisoformat(s["started_at"]).timestamp() for s in sources]
    ends = [start + s["seconds"] for start, s in zip(starts, sources, strict=True)]
    return max(ends) - min(starts)


def spread(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def share_line(what: str, runs: list[float], full_s: float, target: float) -> str:
    """A churn night's line: its seconds, and its share of the full load against ``target``."""
    median = statistics.median(runs)
    share = median / full_s
    return (
        f"{what} {median:6.1f} s (spread {spread(runs)})  {share:.1%} of the full load "
        f"(target <= {target:.0%}) {verdict(share <= target)}"
    )


def other_scale_factors() -> None:
    """With ``BENCH_SF=1,5``: the load figures at each further scale factor, in a run of its own
    (a database of its own; the engines measured once, at the first)."""
    for sf in SCALE_FACTORS.split(",")[1:]:
        env = os.environ | {"BENCH_SF": sf, "BENCH_DB": f"{DB}_sf{sf.replace('.', '_')}", "BENCH_ENGINES": "0"}
        subprocess.run([sys.executable, __file__], env=env, check=True)


def main() -> None:
    rows = prepare()
    limits, fulls, incs, diffs = [], [], [], []
    rss: list[int] = []
    cdc_runs: list[float] = []
    logical = wal_level() == "logical"
    for i in range(RUNS):
        limits.append(copy_seconds())
        with tempfile.TemporaryDirectory(prefix="dusk-bench-") as work:
            full = run_child(work)
            assert full["rows"] == rows, full
            fulls.append(full["seconds"])
            rss.append(full["peak_rss"])
            changed = touch_one_percent(2 * i + 1)
            inc = run_child(work)
            assert inc["rows"] == changed, (inc, changed)
            incs.append(inc["seconds"])
            changed = touch_one_percent(2 * i + 2)
            diff = run_child(work, "key_diff")
            assert diff["rows"] == changed, (diff, changed)
            diffs.append(diff["seconds"])
        if logical:
            with tempfile.TemporaryDirectory(prefix="dusk-bench-cdc-") as work:
                cdc_runs.append(cdc_round(work, 2 * RUNS + i + 1)[1])
    limit, full_s, peak = statistics.median(limits), statistics.median(fulls), max(rss)
    ratio = limit / full_s
    ratios = [a / b for a, b in zip(limits, fulls, strict=True)]
    lines = [
        f"lineitem at scale factor {SF:g}: {rows:,} rows in PostgreSQL ({DB}), medians of {RUNS} runs (spread min-max)",
        f"COPY limit (server COPY TO STDOUT)   {limit:6.1f} s (spread {spread(limits)})  {rows / limit:>10,.0f} rows/s",
        f"full load (dusk, into DuckDB)        {full_s:6.1f} s (spread {spread(fulls)})  "
        f"{rows / full_s:>10,.0f} rows/s",
        f"full load / COPY limit               {ratio:6.2f} (per run {min(ratios):.2f}-{max(ratios):.2f}; "
        f"target >= {TARGETS['ratio']}) {verdict(ratio >= TARGETS['ratio'])}",
        f"peak RSS of the full load            {peak / 2**30:6.2f} GiB (target <= {TARGETS['rss_gib']:.0f} GiB) "
        f"{verdict(peak <= TARGETS['rss_gib'] * 2**30)}",
        share_line("1 % churn night, cursor          ", incs, full_s, TARGETS["cursor"]),
        share_line("1 % churn night, cursor + key-diff", diffs, full_s, TARGETS["key_diff"]),
    ]
    if cdc_runs:
        lines.append(share_line("1 % churn night, CDC             ", cdc_runs, full_s, TARGETS["cdc"]))
    else:
        lines.append("1 % churn night, CDC: not measured (the server runs without wal_level=logical) MISS")
    if ENGINES:
        lines += engine_lines(rows, full_s)
    print("\n".join(lines), flush=True)


def engine_lines(rows: int, full_s: float) -> list[str]:
    """The warehouse engines in the same run: the full load into PostgreSQL, and a demo night on
    each engine, as ratios to DuckDB's."""
    pg_loads = [pg_full_load() for _ in range(RUNS)]
    pg_s = statistics.median(pg_loads)
    lines = [
        f"full load into a PostgreSQL warehouse {pg_s:5.1f} s  {rows / pg_s:>10,.0f} rows/s  "
        f"{full_s / pg_s:.2f} of DuckDB's rows/s (spread {spread(pg_loads)} s)"
    ]
    from dusk.spark import SparkSetupError, spark_jars

    engines = ["duckdb", "postgres", "spark"]
    try:
        spark_jars()
    except SparkSetupError as exc:
        engines.remove("spark")
        lines.append(f"demo night on spark: not measured ({exc})")
    nights = {engine: [demo_night(engine) for _ in range(RUNS)] for engine in engines}
    duck = statistics.median(n["night"] for n in nights["duckdb"])
    for engine, runs in nights.items():
        night, ingest, dbt = (statistics.median(n[k] for n in runs) for k in ("night", "ingest", "dbt"))
        lines.append(
            f"demo night on {engine:<9}            {night:6.1f} s  {night / duck:.2f} of DuckDB's "
            f"(spread {spread([n['night'] for n in runs])} s): ingest {ingest:.1f} s, dbt {dbt:.1f} s, "
            f"the rest {night - ingest - dbt:.1f} s"
        )
    return lines


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
        if ENGINES:
            other_scale_factors()
