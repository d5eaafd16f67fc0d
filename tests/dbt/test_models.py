"""The dbt layer on demo data: quarantine and replay, PII hashing, the microbatch rebuild of a date
range, and the whole project built on PostgreSQL (dbt-postgres) from the same raw data."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from dusk.settings import Settings
from ingestion.database.scan import load_extension
from ingestion.declaration import load_sources
from ingestion.dlt_settings import configure_dlt
from tests.conftest import PROJECT_DIR, Workspace, _service_missing, delete_demo_stream
from tests.helpers import PASSED, ingest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """One demo night, shared by the tests of this module (each leaves it as it found it)."""
    ws = Workspace(tmp_path_factory.mktemp("dbt_models"))
    try:
        ws.cli("run")
        yield ws
    finally:
        delete_demo_stream(ws.sources_file)


def dbt(ws: Workspace, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "dbt"), *args],
        cwd=PROJECT_DIR,
        env={**ws.env(), "DUSK_WAREHOUSE": str(ws.warehouse), "DBT_PROFILES_DIR": str(PROJECT_DIR / "profiles"), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def query(ws: Workspace, sql: str) -> list[tuple]:
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        return wh.sql(sql).fetchall()


def test_pii_columns_are_salted_hashes_and_the_salt_stays_secret(night: Workspace) -> None:
    salt = (night.data_dir / "secrets" / "pii_salt").read_text().strip()
    assert len(salt) == 64
    rows = query(
        night,
        "select r.email, r.last_name, s.email, s.last_name, s.first_name from raw_shop.customers as r "
        "join staging.stg_shop__customers as s using (customer_id)",
    )
    assert len(rows) > 900

    def digest(value: str) -> str:
        return hashlib.sha256((salt + value).encode()).hexdigest()

    for raw_email, raw_last, email, last_name, first_name in rows:
        assert email == digest(raw_email.strip().lower())
        assert last_name == digest(raw_last.strip())
        assert first_name and not re.fullmatch(r"[0-9a-f]{64}", first_name)  # not tagged pii
    # phones: standardised to E.164 before hashing, whatever way they were typed
    phones = query(
        night,
        "select r.phone, upper(r.country_code), s.phone from raw_shop.customers as r "
        "join staging.stg_shop__customers as s using (customer_id) where r.phone is not null",
    )
    codes = {"US": "1", "DE": "49", "FR": "33", "GB": "44", "NL": "31"}
    for typed, country, hashed in phones:
        digits = re.sub(r"\D", "", typed)
        national = digits[2 + len(codes[country]) :] if digits.startswith("00") else None
        if typed.startswith("+"):
            e164 = "+" + digits
        elif national is not None:
            e164 = f"+{codes[country]}{national}"
        else:
            e164 = f"+{codes[country]}{digits[1:]}"  # the demo's national forms carry the trunk prefix
        assert hashed == digest(e164), (typed, e164)
    # the salt is in no artifact, log or run record
    for folder in (night.root / "target", night.root / "logs", night.data_dir / "runs"):
        for path in folder.rglob("*"):
            if path.is_file():
                assert salt.encode() not in path.read_bytes(), path
    # a different salt would re-hash everything: the run refuses it
    other = night.cli("run", check=False, env_extra={"DUSK_PII_SALT": "x" * 32})
    assert other.returncode == 1
    assert "PII salt differs" in other.stdout + other.stderr


@pytest.mark.badinput
def test_quarantine_reconciles_and_replays_fixed_rows(night: Workspace) -> None:
    with sqlite3.connect(night.shop_db) as shop:
        shop.execute(
            "insert into customers values (900001, 'Zoe', 'Q', 'zoe@example.com', null, 'ZZ', 'Nowhere', 'bronze', "
            "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"
        )
        shop.execute(
            "insert into orders values (900001, 1, 'placed', 'XXX', null, '2026-01-01 10:00:00', '2026-01-01 10:00:00')"
        )
        shop.execute("insert into order_items values (900001, 900001, 1, 1, 5.00, '2026-01-01 10:00:00')")
    night.cli("run")  # quarantined rows do not fail the night
    quarantined = set(query(night, "select table_name, record_key, quarantine_reason from staging.quarantine_shop"))
    assert {
        ("customers", "900001", "unknown_country"),
        ("orders", "900001", "unknown_currency"),
        ("order_items", "900001", "order_quarantined"),
    } <= quarantined
    assert query(night, "select count(*) from marts.orders where order_id = 900001") == [(0,)]
    reconciled = [n for n in night.last_run()["dbt"]["nodes"] if n["name"].startswith("reconcile_raw_")]
    assert len(reconciled) == 9 and all(n["status"] in PASSED for n in reconciled)

    # fixed at the source: the rows leave quarantine and flow on at the next run
    with sqlite3.connect(night.shop_db) as shop:
        shop.execute(
            "update customers set country_code = 'DE', updated_at = '2026-01-01 00:00:01' where customer_id = 900001"
        )
        shop.execute(
            "update orders set currency_code = 'EUR', updated_at = '2026-01-01 10:00:01' where order_id = 900001"
        )
    night.cli("run")
    assert not [q for q in query(night, "select record_key from staging.quarantine_shop") if q[0] == "900001"]
    assert query(night, "select currency_code, order_amount from marts.orders where order_id = 900001") == [("EUR", 5)]
    assert query(night, "select country_code from staging.stg_shop__customers where customer_id = 900001") == [("DE",)]


def test_microbatch_rebuilds_only_the_given_days(night: Workspace) -> None:
    days = query(night, "select activity_date, sum(event_count) from marts.daily_web_activity group by 1 order by 1")
    # from the ledger, not the last run record: another test of this module may have run a night
    # that stopped before ingesting (the PII test's wrong salt)
    web = query(night, "select status from dusk_ledger.steps where target = 'web' order by run_id desc limit 1")
    if web != [("ok",)] or not days:
        _service_missing(f"no web events to build from (the web source's last ingest: {web})")
    assert sum(n for _, n in days) == query(night, "select count(*) from staging.stg_web__web_events")[0][0]
    target = days[0][0]
    with duckdb.connect(str(night.warehouse)) as wh:  # a damaged day, and a row no rebuild may touch
        wh.execute("delete from marts.daily_web_activity where activity_date = ?", [target])
        wh.execute("insert into marts.daily_web_activity values ('sentinel', 1, 1, 1, date '2020-01-01')")
    start, end = target.isoformat(), (target + timedelta(days=1)).isoformat()
    out = dbt(night, "build", "--select", "daily_web_activity", "--event-time-start", start, "--event-time-end", end)
    assert out.returncode == 0, out.stdout
    assert "batch" in out.stdout.lower()
    assert (
        query(
            night,
            "select activity_date, sum(event_count) from marts.daily_web_activity "
            "where event_type != 'sentinel' group by 1 order by 1",
        )
        == days
    )
    assert query(night, "select count(*) from marts.daily_web_activity where event_type = 'sentinel'") == [(1,)]
    with duckdb.connect(str(night.warehouse)) as wh:
        wh.execute("delete from marts.daily_web_activity where event_type = 'sentinel'")


def test_project_builds_on_postgres(night: Workspace) -> None:
    """Copy raw (and the salt and the ledger) to a new PostgreSQL database, build everything there with
    dbt-postgres, and get the same marts as on DuckDB."""
    admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as exc:
        admin.dispose()
        _service_missing(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc.orig}")
    db = f"dusk_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as con:
        con.execute(sa.text(f"create database {db}"))
    try:
        with duckdb.connect() as con:
            load_extension(con, "duckdb_extension_postgres_scanner")
            con.execute(f"attach '{night.warehouse}' as wh (read_only)")
            con.execute(f"attach 'host=127.0.0.1 port=5432 user=postgres dbname={db}' as pg (type postgres)")
            tables = con.execute(
                "select table_schema, table_name from information_schema.tables where table_catalog = 'wh' "
                "and (table_schema like 'raw\\_%' escape '\\' or table_schema in ('dusk_private', 'dusk_ledger')) "
                "and table_schema not like '%\\_staging' escape '\\' "
                "and table_name not like '\\_dlt%' escape '\\'"
            ).fetchall()
            assert {s for s, _ in tables} >= {
                "raw_shop",
                "raw_payments",
                "raw_marketing",
                "raw_web",
                "dusk_private",
                "dusk_ledger",
            }
            for schema in sorted({s for s, _ in tables}):
                con.execute(f'create schema pg."{schema}"')
            for schema, table in tables:
                con.execute(f'create table pg."{schema}"."{table}" as select * from wh."{schema}"."{table}"')
        # the microbatch model covers the night's event days, as the runner passes them (not one batch
        # per day since var web_events_begin)
        first, last = query(
            night, "select min(cast(occurred_at as date)), max(cast(occurred_at as date)) from raw_web.web_events"
        )[0]
        window = (
            []
            if first is None
            else ["--event-time-start", str(first), "--event-time-end", str(last + timedelta(days=1))]
        )
        out = dbt(night, "build", "--target", "postgres", *window, DUSK_PG_DATABASE=db)
        assert out.returncode == 0, out.stdout[-6000:]
        assert re.search(r"ERROR=0", out.stdout)
        pg = sa.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}")
        try:
            with pg.connect() as con:
                for mart, measure in (
                    ("orders", "sum(order_amount)"),
                    ("daily_revenue", "sum(revenue)"),
                    ("customers", "sum(lifetime_value)"),
                    ("marketing_roas", "sum(spend)"),
                    ("cohort_retention", "sum(active_customers)"),
                    ("products", "sum(unit_count)"),
                ):
                    got = con.execute(sa.text(f"select count(*), {measure} from marts.{mart}")).one()
                    want = query(night, f"select count(*), {measure} from marts.{mart}")[0]
                    assert (got[0], float(got[1])) == (want[0], pytest.approx(float(want[1]))), mart
                hashed = con.execute(
                    sa.text("select email from staging.stg_shop__customers order by customer_id limit 1")
                ).scalar()
                assert (
                    hashed
                    == query(night, "select email from staging.stg_shop__customers order by customer_id limit 1")[0][0]
                )
        finally:
            pg.dispose()
    finally:
        with admin.connect() as con:
            con.execute(sa.text(f"drop database if exists {db} with (force)"))
        admin.dispose()


@pytest.mark.badinput
def test_snapshot_guard_refuses_a_source_that_came_in_empty(night: Workspace) -> None:
    """Every customer flagged deleted at once (an emptied table past ingestion, a broken rule): the
    snapshot stops with both counts instead of recording a mass deletion, until overridden."""
    before = query(night, "select count(*) from snapshots.customers_snapshot")
    with duckdb.connect(str(night.warehouse)) as wh:
        wh.execute("create table raw_shop.customers_kept as select * from raw_shop.customers")
        wh.execute("update raw_shop.customers set _is_deleted = true, _deleted_at = current_timestamp")
    try:
        out = dbt(night, "build", "--select", "base_shop__customers", "stg_shop__customers", "customers_snapshot")
        assert out.returncode == 1
        assert re.search(
            r"customers_snapshot\" refused: its source .* has 0 live rows, the snapshot \d+ live", out.stdout
        )
        assert query(night, "select count(*) from snapshots.customers_snapshot") == before
    finally:
        with duckdb.connect(str(night.warehouse)) as wh:
            wh.execute("delete from raw_shop.customers")
            wh.execute("insert into raw_shop.customers select * from raw_shop.customers_kept")
            wh.execute("drop table raw_shop.customers_kept")
        assert dbt(night, "build", "--select", "base_shop__customers", "stg_shop__customers").returncode == 0


def test_everything_is_documented(night: Workspace) -> None:
    """Every model, seed, snapshot, source table, singular test and macro has a description, and
    every column the warehouse has is documented (dbt docs generate's catalog against the YAML)."""
    manifest = json.loads((night.root / "target" / "manifest.json").read_text())
    catalog = json.loads((night.root / "target" / "catalog.json").read_text())
    missing = []
    for uid, node in manifest["nodes"].items():
        if node["package_name"] != "dusk" or (node["resource_type"] == "test" and node.get("test_metadata")):
            continue
        if not node["description"].strip():
            missing.append(uid)
        if node["resource_type"] == "test":
            continue  # a singular test's columns are its failing rows
        built = catalog["nodes"].get(uid, {}).get("columns", {})
        documented = {c.lower() for c, v in node["columns"].items() if v["description"].strip()}
        missing += [f"{uid}.{c}" for c in built if c.lower() not in documented]
    for uid, source in manifest["sources"].items():
        if not source["description"].strip():
            missing.append(uid)
        built = catalog["sources"].get(uid, {}).get("columns", {})
        documented = {c.lower() for c, v in source["columns"].items() if v["description"].strip()}
        missing += [f"{uid}.{c}" for c in built if c.lower() not in documented and not c.startswith("_dlt_")]
    for uid, macro in manifest["macros"].items():
        if macro["package_name"] == "dusk" and not macro["description"].strip():
            missing.append(uid)
    assert not missing, missing
    assert {e["name"] for e in manifest["exposures"].values()} == {
        "nightly_run_report",
        "revenue_and_marketing_dashboard",
    }


def test_staging_timestamps_are_utc_whatever_the_session_time_zone(night: Workspace) -> None:
    """Staging views turn dlt's timestamptz into UTC timestamps, also for a reader whose session
    is in another time zone (a bare cast would shift them)."""
    with duckdb.connect(str(night.warehouse), read_only=True) as wh:
        wh.execute("set TimeZone = 'UTC'")
        utc = wh.sql("select order_id, ordered_at, updated_at from staging.stg_shop__orders order by 1").fetchall()
        raw_rows = wh.sql(
            "select order_id, strftime(ordered_at, '%Y-%m-%d %H:%M:%S') from raw_shop.orders order by 1"
        ).fetchall()
        wh.execute("set TimeZone = 'America/New_York'")
        elsewhere = wh.sql(
            "select order_id, ordered_at, updated_at from staging.stg_shop__orders order by 1"
        ).fetchall()
    assert utc == elsewhere and len(utc) > 1000
    raw_by_id = dict(raw_rows)
    assert all(ordered.strftime("%Y-%m-%d %H:%M:%S") == raw_by_id[oid] for oid, ordered, _ in utc)


def test_a_customer_restored_with_its_old_updated_at_reopens_in_the_snapshot(night: Workspace) -> None:
    """Delete a customer, run; restore its row unchanged (its updated_at older than the deletion's
    detection), run: the snapshot closes the deletion and opens a live version from the time the
    row was found back, instead of keeping the customer deleted for good. Leaves the customer live."""
    settings = Settings(night.data_dir, night.warehouse, night.root / "target", demo=True, demo_seed=7)
    configure_dlt()

    def run_shop(detected_at: datetime) -> None:
        """The shop's ingest at a fixed detection time, then staging and the snapshot."""
        shop = load_sources(night.sources_file)["shop"]
        result = ingest(shop, replace(settings, detected_at=detected_at.replace(tzinfo=UTC)))
        assert result.ok, result.error
        out = dbt(night, "build", "--select", "base_shop__customers", "stg_shop__customers", "customers_snapshot")
        assert out.returncode == 0, out.stdout[-3000:]

    def versions(cid: int) -> list[tuple]:
        return query(
            night,
            "select tier, is_deleted, dbt_valid_from, dbt_valid_to from snapshots.customers_snapshot "
            f"where customer_id = {cid} order by dbt_valid_from",
        )

    with sqlite3.connect(night.shop_db) as shop:
        shop.row_factory = sqlite3.Row
        row = dict(shop.execute("select * from customers order by updated_at limit 1").fetchone())
        shop.execute("delete from customers where customer_id = ?", [row["customer_id"]])
    cid, tier = row["customer_id"], row["tier"]
    (before,) = versions(cid)
    updated_at = before[2]
    gone, back = datetime(2026, 2, 2), datetime(2026, 2, 3)
    run_shop(gone)
    assert versions(cid) == [(tier, False, updated_at, gone), (tier, True, gone, None)]

    with sqlite3.connect(night.shop_db) as shop:
        shop.execute(f"insert into customers ({', '.join(row)}) values ({', '.join('?' * len(row))})", [*row.values()])
    run_shop(back)
    assert updated_at < gone
    reopened = [(tier, False, updated_at, gone), (tier, True, gone, back), (tier, False, back, None)]
    assert versions(cid) == reopened
    run_shop(back + timedelta(days=1))  # nothing changed since: no new version
    assert versions(cid) == reopened
