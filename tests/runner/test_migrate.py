"""`dusk migrate` refuses, naming why, what it cannot move exactly or where it would overwrite;
nothing is moved then. What it moves to Iceberg arrives exactly. (A whole installation moved and
going on: tests/test_engines.py to PostgreSQL, tests/test_spark.py to Spark.)"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import psycopg
import pytest

from dusk.migrate import MigrateError, migrate
from dusk.settings import PostgresSettings, Settings
from tests.conftest import pg_databases, require_spark


def duckdb_warehouse(tmp_path: Path, *statements: str) -> Settings:
    settings = Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "target", demo=False, demo_seed=1)
    with duckdb.connect(str(settings.warehouse)) as con:
        con.execute("create schema raw_shop")
        for statement in statements:
            con.execute(statement)
    return settings


def tables_in(database: str) -> list[tuple[str, str]]:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}") as con:
        return con.execute(
            "select table_schema, table_name from information_schema.tables where table_schema like 'raw%'"
        ).fetchall()


def test_a_type_postgres_would_not_hold_exactly_is_named_and_nothing_moves(tmp_path: Path) -> None:
    settings = duckdb_warehouse(
        tmp_path,
        "create table raw_shop.customers (customer_id bigint, lifetime_units hugeint)",
        "insert into raw_shop.customers values (1, 170141183460469231731687303715884105727)",
    )
    with pg_databases(1) as (database,):
        settings = replace(settings, postgres=PostgresSettings(database=database))
        with pytest.raises(MigrateError, match=r"raw_shop\.customers\.lifetime_units \(HUGEINT\)"):
            migrate(settings, "postgres")
        assert tables_in(database) == []


def test_a_database_that_holds_a_warehouse_already_is_refused(tmp_path: Path) -> None:
    settings = duckdb_warehouse(tmp_path, "create table raw_shop.customers as select 1 as customer_id")
    with pg_databases(1) as (database,):
        settings = replace(settings, postgres=PostgresSettings(database=database))
        moved = migrate(settings, "postgres")
        assert moved.tables == {"raw_shop.customers": 1}
        with pytest.raises(MigrateError, match=r"already holds raw_shop\.customers: migrate into an empty database"):
            migrate(settings, "postgres")
        assert tables_in(database) == [("raw_shop", "customers")]


def test_the_moves_offered_are_duckdb_to_postgres_or_spark_and_postgres_to_spark(tmp_path: Path) -> None:
    settings = duckdb_warehouse(tmp_path)
    with pytest.raises(MigrateError, match="to postgres, spark, not 'bigquery'"):
        migrate(settings, "bigquery")
    with pytest.raises(MigrateError, match="this installation's is postgres"):
        migrate(replace(settings, target="postgres"), "postgres")
    with pytest.raises(MigrateError, match="a PostgreSQL one to Spark; this installation's is spark"):
        migrate(replace(settings, target="spark"), "postgres")


def lake_tables(settings: Settings) -> list[str]:
    from dusk.spark import iceberg_catalog

    catalog = iceberg_catalog(replace(settings, target="spark"))
    try:
        return sorted(".".join(t) for (ns,) in catalog.list_namespaces() for t in catalog.list_tables(ns))
    finally:
        catalog.engine.dispose()


def test_a_type_iceberg_would_not_hold_exactly_is_named_and_nothing_moves(tmp_path: Path) -> None:
    require_spark()
    settings = duckdb_warehouse(
        tmp_path,
        "create table raw_shop.customers (customer_id bigint, name varchar)",
        "create table raw_shop.visits (visit_id ubigint, stay interval)",
        "insert into raw_shop.customers values (1, 'Ada')",
    )
    with pytest.raises(
        MigrateError, match=r"raw_shop\.visits\.visit_id \(UBIGINT\), raw_shop\.visits\.stay \(INTERVAL\)"
    ):
        migrate(settings, "spark")
    assert lake_tables(settings) == []


def test_tables_move_to_iceberg_exactly_and_a_lake_that_holds_them_is_refused(tmp_path: Path) -> None:
    """Decimals, text, JSON, bytes, small integers and times arrive equal; outside raw a time
    without a zone becomes the UTC instant Spark's own tables hold; a raw table lands where dlt
    keeps it, in a dataset dlt takes for its own."""
    require_spark()
    settings = duckdb_warehouse(
        tmp_path,
        "create table raw_shop.orders (order_id tinyint, amount decimal(38, 10), note json, blob_col blob, "
        "placed_at timestamp, paid_at timestamptz, _dlt_load_id varchar)",
        "insert into raw_shop.orders values (1, 1234567890123456789012345678.0123456789, '{\"a\": [1, 2]}', "
        "'\\x00\\xFF'::blob, '2024-02-29 23:59:59.999999', '2024-03-31 01:30:00+00', '1.5'), "
        "(2, null, null, null, null, null, '1.5')",
        "create schema snapshots",
        "create table snapshots.orders_snapshot (order_id integer, dbt_valid_from timestamp, dbt_valid_to timestamp)",
        "insert into snapshots.orders_snapshot values (1, '2024-01-01 00:00:00', null)",
    )
    moved = migrate(settings, "spark")
    assert moved.tables == {"raw_shop.orders": 2, "snapshots.orders_snapshot": 1}
    assert lake_tables(settings) == ["raw_shop.orders", "snapshots.orders_snapshot"]
    lake = Path(replace(settings, target="spark").iceberg_lake.removeprefix("file://"))
    assert (lake / "raw_shop" / "init").exists() and (lake / "raw_shop" / "orders" / "metadata").is_dir()

    from dusk.spark import iceberg_catalog

    catalog = iceberg_catalog(replace(settings, target="spark"))
    try:
        orders = catalog.load_table("raw_shop.orders").scan().to_arrow().sort_by("order_id").to_pylist()
        snapshot = catalog.load_table("snapshots.orders_snapshot").scan().to_arrow().to_pylist()
    finally:
        catalog.engine.dispose()
    first = orders[0]
    assert str(first["amount"]) == "1234567890123456789012345678.0123456789"
    assert first["note"] == '{"a": [1, 2]}' and first["blob_col"] == b"\x00\xff"
    assert first["placed_at"] == datetime(2024, 2, 29, 23, 59, 59, 999999)  # raw keeps dlt's type
    assert first["paid_at"] == datetime(2024, 3, 31, 1, 30, tzinfo=UTC)
    assert orders[1] == {**dict.fromkeys(first), "order_id": 2, "_dlt_load_id": "1.5"}
    assert snapshot == [{"order_id": 1, "dbt_valid_from": datetime(2024, 1, 1, tzinfo=UTC), "dbt_valid_to": None}]

    taken = r"already holds raw_shop\.orders, snapshots\.orders_snapshot.*: migrate into an empty catalog and lake"
    with pytest.raises(MigrateError, match=taken):
        migrate(settings, "spark")
    assert lake_tables(settings) == ["raw_shop.orders", "snapshots.orders_snapshot"]  # left as they were


def test_a_source_with_an_unfinished_load_is_refused_before_anything_moves(tmp_path: Path) -> None:
    """The move clears dlt's working folders (the lake holds their state): one that holds a load
    dlt has not finished would lose it, so the move is refused, naming the source."""
    require_spark()
    import dlt

    settings = duckdb_warehouse(tmp_path, "create table raw_shop.customers as select 1 as customer_id")
    pipeline = dlt.pipeline(
        pipeline_name="shop",
        destination=dlt.destinations.duckdb(str(settings.warehouse)),
        dataset_name="raw_shop",
        pipelines_dir=str(settings.pipelines_dir),
    )
    pipeline.extract([{"customer_id": 2}], table_name="customers")
    with pytest.raises(MigrateError, match=r"source\(s\) shop have a load dlt has not finished.*run `dusk run`"):
        migrate(settings, "spark")
    assert not (settings.data_dir / "iceberg").exists() and pipeline.has_pending_data  # nothing written


def test_a_postgres_installation_moves_to_spark_and_its_next_load_reads_only_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL to Spark, at the level of one source (no dbt): the load after the move takes
    its cursors and schema from the lake, reads nothing unchanged and marks the deletions."""
    require_spark()
    import sqlite3

    from dusk.demo import ensure_demo
    from dusk.settings import runtime_environment
    from dusk.spark import iceberg_catalog
    from ingestion.dlt_settings import configure_dlt
    from tests.helpers import ingest, on_engine, sources

    configure_dlt()
    settings = Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "target", demo=True, demo_seed=5)
    ensure_demo(settings, sources())
    spec = sources()["shop"]
    with on_engine(settings, "postgres") as pg:
        assert ingest(spec, pg).ok
        with sqlite3.connect(pg.demo_dir / "shop.sqlite") as con:
            con.execute("delete from products where product_id in (3, 4)")
        moved = migrate(pg, "spark")
        assert moved.tables["raw_shop.products"] == 200 and moved.where.startswith("spark")
        lake = replace(pg, target="spark")
    for key, value in runtime_environment(lake).items():
        monkeypatch.setenv(key, value)
    result = ingest(spec, lake)
    assert result.ok, result.error
    tables = {t.table: (t.extracted, t.deleted) for t in result.tables}
    assert tables == {t: (0, 2 if t == "products" else 0) for t in tables}
    catalog = iceberg_catalog(lake)
    try:
        products = catalog.load_table("raw_shop.products").scan().to_arrow()
    finally:
        catalog.engine.dispose()
    assert sorted(r["product_id"] for r in products.to_pylist() if r["_is_deleted"]) == [3, 4]
    assert products.num_rows == 200


def test_a_postgres_numeric_iceberg_would_round_is_named_and_nothing_moves(tmp_path: Path) -> None:
    """DuckDB reads a numeric of no declared precision, or of more than 38 digits, as a double."""
    require_spark()
    from tests.helpers import on_engine

    settings = Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "target", demo=False, demo_seed=1)
    with on_engine(settings, "postgres") as pg, psycopg.connect(pg.postgres.url()) as con:
        con.execute("create schema raw_shop")
        con.execute("create table raw_shop.customers (customer_id bigint, credit numeric, wei numeric(78, 0))")
        con.commit()
        with pytest.raises(
            MigrateError,
            match=r"raw_shop\.customers\.credit \(NUMERIC, precision none\), "
            r"raw_shop\.customers\.wei \(NUMERIC, precision 78\)",
        ):
            migrate(pg, "spark")
        assert lake_tables(pg) == []
