"""The invariants the proof suites check (../shared/DESIGN.md, "Invariants we prove with tests"),
as functions over a workspace's warehouse, source and ground truth."""

from __future__ import annotations

import hashlib
import shlex
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import psycopg

from tests.conftest import ICEBERG, PROJECT_DIR, Workspace, duckdb_attach, lake_mirror, pg_attach, read_warehouse
from tests.helpers import PASSED, SHOP_KEYS, key_set

MARTS = ("orders", "customers", "daily_revenue", "products", "marketing_roas", "cohort_retention", "daily_web_activity")
SNAPSHOTS = ("customers_snapshot", "products_snapshot", "stock_levels_snapshot")
SNAPSHOT_KEYS = {"customers_snapshot": "customer_id", "products_snapshot": "product_id"} | {
    "stock_levels_snapshot": SHOP_KEYS["stock_levels"]
}
RAW_TABLES = (
    *(f"raw_shop.{t}" for t in SHOP_KEYS),
    "raw_payments.payments",
    "raw_marketing.marketing_spend",
    "raw_marketing.fx_rates",
    "raw_web.web_events",
)


def differences(
    a: tuple[str, str], b: tuple[str, str], relations: list[str], exclude: dict[str, str] | None = None
) -> dict[str, int]:
    """Rows in one warehouse's relation and not in the other's (both ways, duplicates counted),
    per relation that differs; ``a`` and ``b`` as :attr:`Workspace.attach` gives them (a
    DuckDB file or a PostgreSQL database). ``exclude`` maps a relation to columns left out."""
    exclude = exclude or {}
    found = {}
    with read_warehouse(a) as con:
        what, how = duckdb_attach(b)
        con.execute(f"attach '{what}' as other {how}")
        for relation in relations:
            columns = f"* exclude ({exclude[relation]})" if relation in exclude else "*"
            for left, right in ((relation, f"other.{relation}"), (f"other.{relation}", relation)):
                (n,) = con.execute(
                    f"select count(*) from (select {columns} from {left} except all select {columns} from {right})"
                ).fetchone()
                if n:
                    found[f"{left} - {right}"] = int(n)
    return found


def served_differences(ws: Workspace, relations: list[str]) -> dict[str, int]:
    """:func:`differences` between the warehouse's relations and the copies readers have (the
    served file on DuckDB, the ``served_*`` schemas or namespaces on PostgreSQL and Spark)."""
    if ws.engine == "duckdb":
        return differences(ws.attach, (str(ws.data_dir / "served.duckdb"), "(read_only)"), relations)
    found = {}
    attach = (str(lake_mirror(ws.catalog_db, served=True)), "(read_only)") if ws.spark else ws.attach
    with read_warehouse(attach) as con:
        for relation in relations:
            theirs = f"served_{relation}"
            for left, right in ((relation, theirs), (theirs, relation)):
                (n,) = con.execute(f"select count(*) from (from {left} except all from {right})").fetchone()
                if n:
                    found[f"{left} - {right}"] = int(n)
    return found


def copy_warehouse(ws: Workspace, to: Path) -> tuple[str, str]:
    """A copy of the warehouse (taken while no run holds it), as :attr:`Workspace.attach` gives
    it: a file at ``to``, a PostgreSQL database named after the warehouse's and ``to``'s stem, or
    a copy of Spark's Iceberg catalog beside ``to``. Iceberg never rewrites a file, so the
    catalog's copy is a copy of the lake: what is written through it (new files, new metadata
    versions) the original never points to."""
    to.parent.mkdir(parents=True, exist_ok=True)
    if ws.spark:
        copy = to.with_suffix(".catalog.db")
        with sqlite3.connect(ws.catalog_db) as original, sqlite3.connect(copy) as into:
            original.backup(into)
        return str(copy), ICEBERG
    if ws.pg_database is None:
        shutil.copy(ws.warehouse, to)
        return str(to), "(read_only)"
    name = f"{ws.pg_database}_{to.stem}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}"')
        admin.execute(f'create database "{name}" template "{ws.pg_database}"')
    return pg_attach(name)


def drop_copy(copy: tuple[str, str]) -> None:
    """Remove a copy that :func:`copy_warehouse` made."""
    what, how = copy
    if how == ICEBERG:
        Path(what).with_suffix(".mirror.duckdb").unlink(missing_ok=True)
    if "type postgres" not in how:
        Path(what).unlink()
        return
    name = what.rsplit("dbname=", 1)[1]
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


def rebuild_from_scratch(ws: Workspace, copy: tuple[str, str]) -> None:
    """`dbt build --full-refresh` on a copy of the warehouse: every model rebuilt from raw (the
    snapshots keep their history: it cannot be rebuilt from today's sources). Without the data
    tests and unit tests: the night ran them, and what this compares is data (on a Spark night
    they are about 60 % of dbt's node time)."""
    what, how = copy
    folder = Path(what).parent if not ws.pg_database else ws.root / "scratch"
    if how == ICEBERG:  # the runner's own Spark settings for dbt, on the copy of the catalog
        exports = ws.cli(
            "env",
            env_extra={
                "DUSK_ICEBERG_CATALOG_URI": f"sqlite:///{what}",
                "DUSK_ICEBERG_WAREHOUSE": str(folder / "lake"),  # where tables new to the copy go
            },
        ).stdout
        where = dict(shlex.split(line)[1].split("=", 1) for line in exports.splitlines() if line.startswith("export "))
    elif "type postgres" in how:
        where = {"DUSK_PG_DATABASE": what.rsplit("dbname=", 1)[1]}
    else:
        where = {"DUSK_WAREHOUSE": what}
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "dbt"),
            "build",
            "--full-refresh",
            "--log-level",
            "warn",
            "--exclude-resource-type",
            "test",
            "unit_test",
        ],
        cwd=PROJECT_DIR,
        env={
            **ws.env(),
            **where,
            "DBT_PROFILES_DIR": str(PROJECT_DIR / "profiles"),
            "DBT_TARGET_PATH": str(folder / "target"),
            "DBT_LOG_PATH": str(folder / "logs"),
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, f"the from-scratch rebuild failed:\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}"


def assert_reconciled(ws: Workspace, record: dict) -> int:
    """Rows in source = rows in raw (live + deleted) for the shop's tables and the API; every
    landed file and every published event reached raw; raw = staged + quarantined (the
    `rowcount_reconciles` tests of the night passed). Returns the number of tables checked."""
    with ws.read() as wh:
        for table, key in SHOP_KEYS.items():
            with sqlite3.connect(ws.shop_db) as shop:
                source = key_set(shop.execute(f"select {key} from {table}"))
            live = key_set(wh.execute(f"select {key} from raw_shop.{table} where not _is_deleted").fetchall())
            assert live == source, f"raw_shop.{table}: {len(live ^ source)} keys differ from the source"
            (dups,) = wh.execute(f"select count(*) - count(distinct ({key})) from raw_shop.{table}").fetchone()
            assert dups == 0, f"raw_shop.{table}: {dups} duplicate keys"
    from tests.test_end_to_end import assert_feeds_loaded

    assert_feeds_loaded(ws)
    reconciles = [n for n in record["dbt"]["nodes"] if n["name"].startswith("reconcile_raw_")]
    assert len(reconciles) == len(RAW_TABLES) and all(n["status"] in PASSED for n in reconciles), reconciles
    assert_counts_reconcile(ws, record)
    return len(RAW_TABLES)


def assert_counts_reconcile(ws: Workspace, record: dict) -> None:
    """Counts never lie: for every table of every source the night ingested, the summary's
    loaded rows are the rows raw received from the night's own load packages, extracted +
    deleted = loaded, and quarantined = the rows the source's _quarantine received (files and
    streams; the shop's and the API's invalid rows are quarantined by dbt's staging)."""
    with ws.read() as wh:
        for source in record["sources"]:
            if not source["ok"] or source["skipped"]:
                continue
            own = [i for i in source["load_ids"] if i not in source["pending_load_ids"]]
            assert not [n for n in source["notes"] if "do not reconcile" in n], source["notes"]
            ids = ", ".join(f"'{i}'" for i in own) or "null"
            schema = f"raw_{source['source']}"
            tables = {
                r[0]
                for r in wh.execute(
                    "select table_name from information_schema.tables where table_schema = ?", [schema]
                ).fetchall()
            }
            for t in source["tables"]:
                where = f"{schema}.{t['table']}"
                (received,) = wh.execute(f"select count(*) from {where} where _dlt_load_id in ({ids})").fetchone()
                assert received == t["loaded"], (
                    f"{where}: the summary says {t['loaded']} loaded, raw received {received}"
                )
                assert t["extracted"] + t["deleted"] == t["loaded"], f"{where}: {t}"
                if "_quarantine" in tables:
                    (held,) = wh.execute(
                        f"select count(*) from {schema}._quarantine where source_table = ? and _dlt_load_id in ({ids})",
                        [t["table"]],
                    ).fetchone()
                    assert held == t["quarantined"], f"{where}: {t['quarantined']} quarantined, _quarantine got {held}"
                else:
                    assert t["quarantined"] == 0, f"{where}: {t}"


def assert_stock_snapshot_is_source(ws: Workspace) -> int:
    """stock_levels_snapshot, keyed by (product_id, warehouse_code): its current version of every
    valid source line carries the source's count; a current live version without a source line
    exists only for a line deleted while its count was invalid (staging never saw the delete).
    Returns the lines checked."""
    with sqlite3.connect(ws.shop_db) as shop:
        source = {
            (p, w): q
            for p, w, q in shop.execute("select product_id, warehouse_code, quantity_on_hand from stock_levels")
        }
    with ws.read() as wh:
        current = {
            (p, w): (q, d)
            for p, w, q, d in wh.execute(
                "select product_id, warehouse_code, quantity_on_hand, is_deleted "
                "from snapshots.stock_levels_snapshot where dbt_valid_to is null"
            ).fetchall()
        }
        invalid_when_deleted = {
            (p, w)
            for p, w in wh.execute(
                "select product_id, warehouse_code from raw_shop.stock_levels "
                "where _is_deleted and quantity_on_hand < 0"
            ).fetchall()
        }
    for key, quantity in source.items():
        if quantity >= 0:
            assert current.get(key) == (quantity, False), f"stock {key}: snapshot {current.get(key)}, source {quantity}"
    for key, (_, deleted) in current.items():
        if not deleted and key not in source:
            assert key in invalid_when_deleted, f"stock {key}: live in the snapshot, gone from the source"
    return len(source)


def assert_snapshot_is_truth(
    ws: Workspace, run_days: list[int], detected_at: dict[int, datetime] | None = None, salt: str | None = None
) -> tuple[int, int]:
    """customers_snapshot holds, per customer, its distinct versions as each run saw them (the
    ground truth's last version of each run's day), one current row per key, no overlap or gap;
    a customer created and deleted between two runs never appears; quarantined ones neither; a
    key back after a deletion (restored from a backup, or reused: SQLite gives a deleted highest
    rowid to the next insert) starts a new version. A live version is valid from its updated_at;
    a deletion from the time its run found it gone, and a return from the later of its updated_at
    and the time its run found it back: checked when ``detected_at`` gives each run's detection
    time (UTC, naive), else not. Emails are hashed with ``salt`` (None: the workspace's salt file).
    Returns (customers, versions) checked."""
    with sqlite3.connect(ws.truth_db) as truth:
        versions = truth.execute(
            "select customer_id, day, tier, email, country_code, city, is_deleted, updated_at "
            "from customer_versions order by customer_id, day, rowid"
        ).fetchall()
        invalid = {pk for (pk,) in truth.execute("select pk from invalid_rows where table_name = 'customers'")}
    state: dict[int, dict[int, tuple]] = {}
    for cid, day, *values in versions:
        state.setdefault(cid, {})[day] = tuple(values)
    with ws.read() as wh:
        rows = wh.execute(
            "select customer_id, tier, email, country_code, city, is_deleted, dbt_valid_from, dbt_valid_to "
            "from snapshots.customers_snapshot order by customer_id, dbt_valid_from"
        ).fetchall()
    snap: dict[int, list[tuple]] = {}
    for cid, *values in rows:
        snap.setdefault(cid, []).append(tuple(values))
    if salt is None:
        salt = (ws.data_dir / "secrets" / "pii_salt").read_text().strip()

    def norm(v: tuple) -> tuple:
        tier, email, country, city, is_deleted, updated_at = v
        when = None if is_deleted else datetime.fromisoformat(updated_at)
        hashed = hashlib.sha256((salt + email.strip().lower()).encode()).hexdigest()
        return (tier, hashed, country.strip().upper(), city, bool(is_deleted), when)

    def shape(v: tuple) -> tuple:
        tier, email, country, city, is_deleted, valid_from, _ = v
        return (tier, email, country, city, is_deleted, valid_from)

    checked = total = 0
    for cid, days in state.items():
        if cid in invalid:
            assert cid not in snap, f"quarantined customer {cid} reached the snapshot"
            continue
        expected: list[tuple] = []
        last = None
        for run in run_days:
            known = [d for d in days if d <= run]
            if not known or norm(days[max(known)]) == last:
                continue
            v = last = norm(days[max(known)])
            found = detected_at[run] if detected_at else None
            if v[4]:
                # a deletion carries the last values a run saw (a change made the same day as the
                # delete was never loaded); one no run saw alive leaves no row
                if expected and not expected[-1][4]:
                    expected.append((*expected[-1][:4], True, found))
            elif expected and expected[-1][4]:
                expected.append((*v[:5], None if found is None else max(v[5], found)))  # back
            else:
                expected.append(v)
        got = snap.get(cid, [])
        shapes = [shape(v) for v in got]
        if len(shapes) == len(expected):  # a time not known in advance is not compared
            shapes = [(*g[:5], None if e[5] is None else g[5]) for g, e in zip(shapes, expected, strict=True)]
        assert shapes == expected, f"customer {cid}: snapshot {got} vs truth {expected}"
        if got:
            assert got[-1][6] is None, f"customer {cid}: the last version must be current"
            for older, newer in pairwise(got):
                assert older[6] == newer[5], f"customer {cid}: versions overlap or leave a gap"
            checked += 1
            total += len(got)
    assert set(snap) <= set(state), "the snapshot holds customers the shop never had"
    return checked, total
