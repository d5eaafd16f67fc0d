"""`dusk migrate` refuses, naming why, what it cannot move exactly or where it would overwrite;
nothing is moved then. (A whole installation moved and going on: tests/test_engines.py.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import duckdb
import psycopg
import pytest

from dusk.migrate import MigrateError, migrate
from dusk.settings import PostgresSettings, Settings
from tests.conftest import pg_databases


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


def test_only_postgres_is_a_destination_and_only_duckdb_a_source(tmp_path: Path) -> None:
    settings = duckdb_warehouse(tmp_path)
    with pytest.raises(MigrateError, match="to postgres, not 'spark'"):
        migrate(settings, "spark")
    with pytest.raises(MigrateError, match="this installation's is postgres"):
        migrate(replace(settings, target="postgres"), "postgres")
