"""What a real source does to an incremental load, on PostgreSQL and MariaDB (own database per
test): late and tied rows, new, dropped and retyped columns, a renamed table, NULL and duplicate
keys, wrong credentials, and a read-only role. Every failure names the source and table, and
dlt's cursor does not move."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from dusk.demo import ensure_demo
from dusk.settings import Settings
from ingestion.database.plan import _unique_at_source, source_schema
from ingestion.declaration import SourceSpec, TableSpec
from ingestion.dlt_settings import configure_dlt
from ingestion.result import SourceResult
from ingestion.run import make_pipeline
from tests.helpers import ingest, raw, sources, sql, target


@pytest.fixture
def shop(shop_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, SourceSpec, sa.Engine]:
    """The demo shop in a fresh server database, loaded once."""
    configure_dlt()
    monkeypatch.setenv("SOURCES__SHOP__CREDENTIALS", shop_url)
    settings = Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "target", demo=True, demo_seed=3)
    specs = sources()
    assert ensure_demo(settings, specs)
    first = ingest(specs["shop"], settings)
    assert first.ok, first.error
    engine = sa.create_engine(shop_url)
    yield settings, specs["shop"], engine
    engine.dispose()


def stats(result: SourceResult, table: str) -> tuple[int, int]:
    t = {s.table: s for s in result.tables}[table]
    return t.extracted, t.deleted


def is_postgres(engine: sa.Engine) -> bool:
    return engine.dialect.name == "postgresql"


@pytest.mark.badinput
def test_late_rows_and_ties_at_the_watermark_are_neither_lost_nor_duplicated(shop) -> None:
    settings, spec, engine = shop
    (top,) = raw(settings, "select max(updated_at) from raw_shop.products")[0]
    top = top.replace(tzinfo=None).isoformat(sep=" ")
    sql(
        engine,
        # a tie: a new row with exactly the watermark value
        f"insert into products values (9001, 'SKU-09001', 'Tie', 'books', 1.00, 'USD', '{top}', '{top}')",
        # late: a row committed now with an updated_at far below the watermark
        "insert into products values (9002, 'SKU-09002', 'Late', 'books', 2.00, 'USD', "
        "'2025-01-01 00:00:00', '2025-01-01 00:00:00')",
        # a late update: the value changes, the cursor goes back in time
        "update products set unit_price = 3.33, updated_at = '2025-01-02 00:00:00' where product_id = 1",
    )
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert stats(result, "products") == (3, 0)
    assert raw(
        settings,
        "select product_id, unit_price, count(*) over (partition by product_id) from raw_shop.products "
        "where product_id in (1, 9001, 9002) order by 1",
    ) == [(1, Decimal("3.33"), 1), (9001, Decimal("1.00"), 1), (9002, Decimal("2.00"), 1)]
    again = ingest(spec, settings)
    assert again.ok and stats(again, "products") == (0, 0)


@pytest.mark.badinput
def test_a_new_column_appears_in_raw(shop) -> None:
    settings, spec, engine = shop
    sql(
        engine,
        "alter table customers add column loyalty_points integer",
        "update customers set loyalty_points = 7, updated_at = '2027-01-01 00:00:00' where customer_id = 1",
    )
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert raw(settings, "select loyalty_points from raw_shop.customers where customer_id = 1") == [(7,)]


@pytest.mark.badinput
@pytest.mark.parametrize("change", ["retype", "drop", "rename"])
def test_schema_changes_fail_the_table_and_keep_the_cursor(shop, change: str) -> None:
    settings, spec, engine = shop
    state = make_pipeline(spec, target(settings)).state["sources"]
    retype = (
        "alter table orders alter column customer_id type varchar(20)"
        if is_postgres(engine)
        else "alter table orders modify customer_id varchar(20)"
    )
    statement, expected = {
        "retype": (retype, "column 'customer_id' changed type in the source from "),
        "drop": ("alter table orders drop column currency_code", "column(s) ['currency_code'] were dropped"),
        "rename": ("alter table orders rename to purchases", "the table is not in the source database"),
    }[change]
    sql(engine, statement, "update products set updated_at = '2027-01-01 00:00:00' where product_id = 2")
    result = ingest(spec, settings)
    assert not result.ok
    assert result.error is not None and "source 'shop', table 'orders'" in result.error
    assert expected in result.error
    if change == "retype":
        assert "to varchar(20)" in result.error and "not a safe widening" in result.error
    assert make_pipeline(spec, target(settings)).state["sources"] == state
    # nothing of the night was loaded, not even the other tables' changes
    assert raw(settings, "select count(*) from raw_shop.products where updated_at >= '2027-01-01'") == [(0,)]


@pytest.mark.badinput
def test_null_and_duplicate_keys_fail_the_table(shop) -> None:
    settings, spec, engine = shop
    # a table whose key is declared in sources.yml but not enforced by the database
    sql(
        engine,
        "create table visits (visit_id integer, page varchar(40), updated_at timestamp null)",
        "insert into visits values (1, 'home', '2026-01-01 00:00:00'), (2, 'cart', '2026-01-01 00:00:01')",
    )
    visits = SourceSpec(
        "shop",
        "database",
        "",
        False,
        (spec.table("customers"), load_sources_table("visits")),
    )
    assert ingest(visits, settings).ok
    state = make_pipeline(visits, target(settings)).state["sources"]
    for bad, expected in (
        ("insert into visits values (2, 'again', '2026-02-01 00:00:00')", "1 duplicate value(s) of primary key"),
        ("insert into visits values (null, 'lost', '2026-02-01 00:00:00')", "1 row(s) with a NULL primary key"),
        ("insert into visits values (3, 'nocursor', null)", "1 row(s) with a NULL cursor 'updated_at'"),
    ):
        sql(engine, "delete from visits where visit_id > 2 or visit_id is null or updated_at > '2026-01-01 00:00:01'")
        sql(engine, bad)
        result = ingest(visits, settings)
        assert not result.ok, bad
        assert result.error is not None and "source 'shop', table 'visits'" in result.error
        assert expected in result.error
        assert make_pipeline(visits, target(settings)).state["sources"] == state
    assert raw(settings, "select visit_id from raw_shop.visits order by 1") == [(1,), (2,)]


def test_the_key_pass_trusts_only_a_constraint_that_is_the_declared_key(shop) -> None:
    """Key-diff skips grouping the source's keys for duplicates only where the source's primary
    key or a unique constraint is the declared key, in any column order; any other table's keys
    are grouped (the test above shows what that finds)."""
    _, _, engine = shop
    sql(
        engine,
        "create table pairs (a integer not null, b integer not null, c integer, unique (b, a))",
        "create table loose_pairs (a integer, b integer)",
        "create table keyed_on_a (a integer primary key, b integer)",
    )

    def unique(name: str, key: tuple[str, ...]) -> bool:
        table = TableSpec(name, key, None, "merge", "key_diff")  # type: ignore[arg-type]
        return _unique_at_source(engine, table, source_schema(table, engine.url))

    assert unique("customers", ("customer_id",))
    assert unique("pairs", ("a", "b"))
    assert not unique("pairs", ("a", "c"))
    assert not unique("loose_pairs", ("a", "b"))
    assert not unique("keyed_on_a", ("a", "b"))


def load_sources_table(name: str) -> TableSpec:
    from ingestion.declaration import _table

    return _table("database", name, {"primary_key": "visit_id", "cursor": "updated_at", "deletes": "key_diff"}, "test")


@pytest.mark.badinput
def test_wrong_credentials_name_the_source_and_hide_the_password(
    shop, monkeypatch: pytest.MonkeyPatch, shop_url: str
) -> None:
    settings, spec, _ = shop
    url = sa.make_url(shop_url).set(username="nobody_here", password="s3cret-canary")
    monkeypatch.setenv("SOURCES__SHOP__CREDENTIALS", url.render_as_string(hide_password=False))
    result = ingest(spec, settings)
    assert not result.ok
    assert result.error is not None and result.error.startswith("source 'shop':")
    assert "nobody_here" in result.error
    assert "s3cret-canary" not in result.error


def test_a_read_only_role_is_enough_on_postgres(shop, monkeypatch: pytest.MonkeyPatch, shop_url: str) -> None:
    settings, spec, engine = shop
    if not is_postgres(engine):
        pytest.skip("the documented read-only role is PostgreSQL's (MariaDB: GRANT SELECT works the same way)")
    role = f"dusk_reader_{uuid.uuid4().hex[:8]}"
    sql(
        engine,
        f"create role {role} login",
        f"alter role {role} set default_transaction_read_only = on",
        f"grant usage on schema public to {role}",
        f"grant select on all tables in schema public to {role}",
    )
    try:
        sql(engine, "update customers set tier = 'gold', updated_at = '2027-01-01 00:00:00' where customer_id = 2")
        monkeypatch.setenv("SOURCES__SHOP__CREDENTIALS", sa.make_url(shop_url).set(username=role).render_as_string())
        result = ingest(spec, settings)
        assert result.ok, result.error
        assert stats(result, "customers")[0] == 1
        assert raw(settings, "select tier from raw_shop.customers where customer_id = 2") == [("gold",)]
    finally:
        engine.dispose()
        sql(engine, f"drop owned by {role}", f"drop role {role}")
