"""chaos: SIGKILL the runner's process group at random instants across extraction,
normalisation, loading, dbt models, snapshots, tests and publishing; after each kill a rerun,
whose result must equal an uninterrupted run of the same nights (a second workspace with the
same seed): every table compared both ways, keys unique, every load id complete, one current
snapshot row per key. Also: two runs started at once, a reader holding the served data
throughout, and a DuckDB file left with a WAL. `make chaos KILLS=30 SEED=...`."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from dusk.demo.shop import START
from dusk.steps.publish import published_run
from tests.conftest import (
    ENGINES,
    PROJECT_DIR,
    Workspace,
    delete_demo_stream,
    duckdb_attach,
    pg_databases,
    require_spark,
    write_tally,
)
from tests.helpers import SHOP_KEYS
from tests.proof.invariants import MARTS, RAW_TABLES, SNAPSHOT_KEYS, SNAPSHOTS

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

PHASES = ("extract", "normalise", "load", "dbt models", "snapshots", "tests", "publish")
RUN_TIME = {
    "marts.orders": "* exclude (last_load)",  # a dlt load id: differs between two workspaces by nature
}
SNAPSHOT_TIME = "* exclude (dlt_load_id)"
"""A snapshot row less dlt's load id. Its times are compared: both workspaces stamp what key-diff
finds with the same clock (DUSK_DETECTED_AT, the night's simulated end), so a deletion or a return
found by a killed run and its rerun has the time the uninterrupted run gives it."""
RAW_RUN_COLUMNS = ("_dlt_load_id", "_dlt_id")
"""dlt's bookkeeping."""


class DbtLog:
    """What dbt's log gained since a run started, read as it grows: the poll below runs every
    2 ms, and reads only the new bytes, not the night's log (some 50 kB by its tests) again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.tail = b""

    def has(self, marker: str) -> bool:
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return False
        with f:
            if os.fstat(f.fileno()).st_size < self.offset:  # dbt rotated its log
                self.offset = 0
            f.seek(self.offset)
            text = self.tail + f.read()
            self.offset = f.tell()
        self.tail = text[-len(marker) :]
        return marker.encode() in text


def _reached(ws: Workspace, phase: str, dbt_log: DbtLog) -> bool:
    dlt = ws.data_dir / "dlt" / "shop"
    if phase in ("extract", "normalise"):
        folder = dlt / "normalize" / "extracted"
        return folder.exists() and any(folder.iterdir())
    if phase == "load":
        folder = dlt / "load" / "normalized"
        return folder.exists() and any(folder.iterdir())
    if phase == "publish":
        if ws.spark:  # the night's copies for readers, in namespaces not yet switched in
            with sqlite3.connect(ws.catalog_db) as catalog:
                query = "select 1 from iceberg_tables where table_namespace like '%\\_\\_next' escape '\\'"
                return bool(catalog.execute(query).fetchone())
        if ws.pg_database:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{ws.pg_database}") as con:
                return bool(con.execute("select 1 from pg_namespace where nspname like '%\\_\\_next'").fetchone())
        return (ws.data_dir / "served.duckdb.next").exists()
    marker = {"dbt models": "START sql ", "snapshots": "START snapshot", "tests": "START test"}[phase]
    return dbt_log.has(marker)


def kill_during(ws: Workspace, phase: str, rng: random.Random, env: dict[str, str]) -> bool:
    """Start `dusk run` and SIGKILL its process group once ``phase`` is reached (plus a random
    few milliseconds). False when the run ended before the kill."""
    dbt_log = DbtLog(ws.root / "logs" / "dbt.log")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dusk", "run"],
        cwd=PROJECT_DIR,
        env={**ws.env(), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not _reached(ws, phase, dbt_log):
        time.sleep(0.002)
    time.sleep(rng.uniform(0.05, 0.3) if phase == "normalise" else rng.uniform(0, 0.05))
    if proc.poll() is not None:
        return False
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def compare(chaos: Workspace, reference: Workspace) -> dict[str, tuple[int, int]]:
    """Per relation that differs, the rows the chaos warehouse lacks (lost) and holds extra
    (duplicated) against the reference, over raw (less dlt's bookkeeping), marts and snapshots
    (less their run clocks)."""
    where: dict[str, tuple[int, int]] = {}
    with chaos.read() as con:
        what, how = duckdb_attach(reference.attach)
        con.execute(f"attach '{what}' as ref {how}")
        relations = []
        for table in RAW_TABLES:
            schema, name = table.split(".")
            present = {
                c
                for (c,) in con.execute(
                    "select column_name from information_schema.columns "
                    "where table_catalog = current_database() and table_schema = ? and table_name = ?",
                    [schema, name],
                ).fetchall()
            }
            skip = ", ".join(c for c in RAW_RUN_COLUMNS if c in present)
            relations.append((table, f"* exclude ({skip})" if skip else "*"))
        relations += [(f"marts.{m}", RUN_TIME.get(f"marts.{m}", "*")) for m in MARTS]
        relations += [(f"snapshots.{s}", SNAPSHOT_TIME) for s in SNAPSHOTS]
        for relation, columns in relations:
            ours, theirs = f"select {columns} from {relation}", f"select {columns} from ref.{relation}"
            (missing,) = con.execute(f"select count(*) from ({theirs} except all {ours})").fetchone()
            (more,) = con.execute(f"select count(*) from ({ours} except all {theirs})").fetchone()
            if missing or more:
                where[relation] = (missing, more)
    return where


def assert_consistent(ws: Workspace) -> None:
    """Keys unique in raw, every load id complete, one current snapshot row per key."""
    with ws.read() as con:
        for table, key in SHOP_KEYS.items():
            (dups,) = con.execute(f"select count(*) - count(distinct ({key})) from raw_shop.{table}").fetchone()
            assert dups == 0, f"raw_shop.{table}: {dups} duplicate keys"
        for table in RAW_TABLES:
            schema = table.split(".")[0]
            (incomplete,) = con.execute(
                f"select count(distinct _dlt_load_id) from {table} where _dlt_load_id not in "
                f"(select load_id from {schema}._dlt_loads where status = 0)"
            ).fetchone()
            assert incomplete == 0, f"{table}: rows of {incomplete} load(s) that never completed"
        for snapshot, key in SNAPSHOT_KEYS.items():
            (two,) = con.execute(
                f"select count(*) from (select {key} from snapshots.{snapshot} where dbt_valid_to is null "
                f"group by all having count(*) > 1)"
            ).fetchone()
            assert two == 0, f"snapshots.{snapshot}: {two} keys with more than one current row"


READER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print(con.execute("select run_id from dusk_published.about").fetchone()[0], flush=True)
time.sleep(3600)
"""
PG_READER = """
import sys, time, psycopg
con = psycopg.connect(sys.argv[1])  # a transaction held open: it keeps its locks on the served tables
print(con.execute("select run_id from served_dusk_published.about").fetchone()[0], flush=True)
time.sleep(3600)
"""
ICEBERG_READER = """
import sys, time
from pyiceberg.catalog.sql import SqlCatalog
lake = SqlCatalog("dusk", uri=f"sqlite:///{sys.argv[1]}")
held = lake.load_table("served_marts.orders").scan()
tasks = list(held.plan_files())  # a long read: its files are planned, and read at the end
print(lake.load_table("served_dusk_published.about").scan().to_arrow()["run_id"][0], flush=True)
time.sleep(3600)
"""
WAL_PROBE = """
import duckdb, os, signal, sys
con = duckdb.connect(sys.argv[1])
con.execute("create or replace table main.chaos_wal_probe as select 42 as answer")
os.kill(os.getpid(), signal.SIGKILL)
"""
"""A writer killed before its checkpoint: its committed table is only in the WAL."""


def published(ws: Workspace) -> str | None:
    """The run the readers of a workspace's warehouse see."""
    if ws.spark:
        from pyiceberg.catalog.sql import SqlCatalog

        lake = SqlCatalog("dusk", uri=f"sqlite:///{ws.catalog_db}")
        if not lake.table_exists("served_dusk_published.about"):
            return None
        ids = lake.load_table("served_dusk_published.about").scan().to_arrow()["run_id"].to_pylist()
        return str(ids[0]) if ids else None
    if ws.pg_database is None:
        return published_run(ws.data_dir / "served.duckdb")
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{ws.pg_database}") as con:
        row = con.execute("select run_id from served_dusk_published.about").fetchone()
    return str(row[0]) if row else None


@pytest.mark.parametrize("engine", ENGINES)
def test_killed_runs_recover_to_what_an_uninterrupted_run_gives(
    engine: str, tmp_path: Path, seed: int, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture
) -> None:
    """On each warehouse engine (``make chaos TARGET=postgres`` runs one)."""
    if engine == "spark":
        require_spark()
    with pg_databases(2 if engine == "postgres" else 0) as databases:
        _chaos(engine, databases, tmp_path, seed, request, capsys)


def _chaos(
    engine: str,
    databases: list[str],
    tmp_path: Path,
    seed: int,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture,
) -> None:
    kills = int(request.config.getoption("--kills"))
    rng = random.Random(seed)
    # the same demo and the same PII salt in both workspaces
    env = {
        "DUSK_DEMO_SEED": str(seed % 1000 + 1),
        "DUSK_PII_SALT": f"chaos-suite-salt-{seed:08d}",
        "DUSK_DETECTED_AT": START.isoformat(),  # the night's end, simulated: see SNAPSHOT_TIME
    }
    chaos, reference = (
        Workspace(tmp_path / name, pg_database=databases[i] if databases else None, spark=engine == "spark")
        for i, name in enumerate(("chaos", "reference"))
    )
    for ws in (chaos, reference):
        ws.root.mkdir()

    def say(line: str) -> None:
        with capsys.disabled():
            print(line, flush=True)

    replay = f"make chaos KILLS={kills} SEED={seed} TARGET={engine}"
    say(f"\nchaos on {engine}: {kills} kills, seed {seed} (replay: {replay})")
    reader = None
    try:
        # two runs started at once: one runs, the other exits at once with code 4
        both = [
            subprocess.Popen(
                [sys.executable, "-m", "dusk", "run"],
                cwd=PROJECT_DIR,
                env={**chaos.env(), **env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        codes = sorted(p.wait(timeout=600) for p in both)
        assert codes == [0, 4], f"two runs at once ended {codes}"
        reference.cli("run", env_extra=env)

        # a reader holds the served data through every kill and rerun below
        held = {
            "duckdb": [READER, str(chaos.data_dir / "served.duckdb")],
            "postgres": [PG_READER, f"postgresql://postgres@127.0.0.1:5432/{chaos.pg_database}"],
            "spark": [ICEBERG_READER, str(chaos.catalog_db)],
        }[engine]
        reader = subprocess.Popen([sys.executable, "-c", *held], stdout=subprocess.PIPE, text=True)
        assert reader.stdout is not None and reader.stdout.readline().strip()

        landed = recovered = lost = duplicated = wal_seen = 0
        # every phase once (a random few of them when there are fewer kills), then random ones
        order = rng.sample(PHASES, min(kills, len(PHASES))) + [rng.choice(PHASES) for _ in range(kills - len(PHASES))]
        for k, phase in enumerate(order, start=1):
            env["DUSK_DETECTED_AT"] = (START + timedelta(days=k)).isoformat()
            for ws in (chaos, reference):
                ws.cli("simulate", "--days", "1", env_extra=env)
            reference.cli("run", env_extra=env)
            served_before = published(chaos)
            hit = kill_during(chaos, phase, rng, env)
            landed += hit
            wal = chaos.warehouse.with_name(chaos.warehouse.name + ".wal").exists()
            wal_seen += wal
            if hit:  # a killed night is never served
                assert published(chaos) == served_before
            if k == len(order) and engine == "duckdb":  # and a write never checkpointed: the rerun must keep it
                subprocess.run([sys.executable, "-c", WAL_PROBE, str(chaos.warehouse)], check=False)
                assert chaos.warehouse.with_name(chaos.warehouse.name + ".wal").exists()
            again = chaos.cli("run", check=False, env_extra=env)
            assert again.returncode == 0, f"kill {k} ({phase}, seed {seed}): the rerun failed\n{again.stdout[-3000:]}"
            assert_consistent(chaos)
            where = compare(chaos, reference)
            missing, extra = sum(m for m, _ in where.values()), sum(e for _, e in where.values())
            lost, duplicated = lost + missing, duplicated + extra
            assert (missing, extra) == (0, 0), (
                f"kill {k} ({phase}, seed {seed}): {missing} lost, {extra} extra; (lost, extra) by relation: {where}"
            )
            recovered += 1
            say(
                f"kill {k}: {phase:<10} {'killed' if hit else 'missed (the run ended first)'}"
                f"{', WAL left' if wal else ''}; rerun equals the uninterrupted run"
            )
        assert landed >= max(1, kills // 2), f"only {landed} of {kills} kills landed"

        if engine == "duckdb":
            with chaos.read() as con:
                assert con.execute("select answer from main.chaos_wal_probe").fetchone() == (42,)
        assert reader.poll() is None  # the reader held on throughout, and blocked nothing
    finally:
        if reader is not None:
            reader.kill()
            reader.wait()
        for ws in (chaos, reference):
            delete_demo_stream(ws.sources_file)
    line = (
        f"chaos on {engine}: {kills} kills ({landed} landed, {wal_seen} left a WAL), {recovered} recovered, "
        f"{lost} lost, {duplicated} duplicated (seed {seed})"
    )
    say(line)
    write_tally(f"chaos-{engine}", line)
