"""The database source against a real SQLite shop and a real DuckDB warehouse (dlt only, no dbt)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from unittest import mock

import duckdb
import pytest
import sqlalchemy as sa

from dusk.demo import demo_shop_url, ensure_demo
from dusk.settings import Settings
from ingestion.database import database_source, plan_source
from ingestion.declaration import SourceSpec, TableSpec
from ingestion.dlt_settings import configure_dlt
from ingestion.run import make_pipeline
from tests.helpers import ingest, kill_ingest_after, on_engine, raw, sources, target


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """The demo shop and a warehouse: a DuckDB file, or (``postgres``, as an indirect parameter) a
    PostgreSQL database of the test's own."""
    configure_dlt()
    s = Settings(
        data_dir=tmp_path, warehouse=tmp_path / "wh.duckdb", target_path=tmp_path / "t", demo=True, demo_seed=5
    )
    ensure_demo(s, sources())
    with on_engine(s, getattr(request, "param", "duckdb")) as s:
        yield s


ON_EVERY_ENGINE = pytest.mark.parametrize("settings", ["duckdb", "postgres"], indirect=True)


@ON_EVERY_ENGINE
def test_hard_deletes_are_marked_with_last_values(settings: Settings) -> None:
    spec = sources()["shop"]
    assert ingest(spec, settings).ok
    shop = settings.demo_dir / "shop.sqlite"
    with sqlite3.connect(shop) as con:
        con.execute("delete from products where product_id in (3, 4)")
    result = ingest(spec, settings)
    assert result.ok, result.error
    products = {t.table: t for t in result.tables}["products"]
    assert (products.extracted, products.deleted, products.loaded) == (0, 2, 2)
    rows = raw(
        settings,
        "select product_id, sku, _is_deleted, _deleted_at is not null from raw_shop.products "
        "where product_id in (3, 4, 5) order by 1",
    )
    assert rows == [(3, "SKU-00003", True, True), (4, "SKU-00004", True, True), (5, "SKU-00005", False, False)]
    # Nothing changed since: the next run marks nothing again.
    again = {t.table: t for t in ingest(spec, settings).tables}["products"]
    assert (again.extracted, again.deleted) == (0, 0)


@ON_EVERY_ENGINE
def test_a_new_working_folder_takes_the_warehouse_state_before_the_night_is_planned(settings: Settings) -> None:
    """dlt's working folder lost (a new machine, a cleared data/dlt, an installation moved to
    another engine): the next run goes on from the cursors and schema the warehouse holds, reads
    only what changed and marks deletions; it does not take itself for a first load."""
    import shutil

    spec = sources()["shop"]
    assert ingest(spec, settings).ok
    with sqlite3.connect(settings.demo_dir / "shop.sqlite") as con:
        con.execute("delete from products where product_id in (3, 4)")
    shutil.rmtree(settings.pipelines_dir / spec.name)
    result = ingest(spec, settings)
    assert result.ok, result.error
    products = {t.table: t for t in result.tables}["products"]
    assert (products.extracted, products.deleted) == (0, 2)
    assert raw(settings, "select count(*) from raw_shop.products where _is_deleted")[0] == (2,)


@ON_EVERY_ENGINE
def test_a_key_back_after_a_deletion_is_stamped_restored_until_it_changes(settings: Settings) -> None:
    """A deleted customer restored with its old updated_at (older than its deletion's detection):
    key-diff re-reads it, stamps _restored_at with this run's detection time, and raw keeps that
    stamp while the row is unchanged, even when a backfill re-reads it; its next change clears it."""
    spec = sources()["shop"]
    assert ingest(spec, settings).ok
    shop = settings.demo_dir / "shop.sqlite"
    with sqlite3.connect(shop) as con:
        con.row_factory = sqlite3.Row
        row = dict(con.execute("select * from customers where customer_id = 7").fetchone())
        con.execute("delete from customers where customer_id = 7")
    gone, back, later = (datetime(2026, 6, d, tzinfo=UTC) for d in (1, 2, 3))
    status = "select _is_deleted, _deleted_at, _restored_at, updated_at from raw_shop.customers where customer_id = 7"
    assert ingest(spec, replace(settings, detected_at=gone)).ok
    assert raw(settings, status) == [(True, gone, None, mock.ANY)]
    with sqlite3.connect(shop) as con:
        con.execute(
            f"insert into customers ({', '.join(row)}) values ({', '.join('?' * len(row))})", list(row.values())
        )
    result = ingest(spec, replace(settings, detected_at=back))
    assert result.ok, result.error
    assert {t.table: t.extracted for t in result.tables}["customers"] == 1
    (_, _, _, updated_at), *_ = raw(settings, status)
    assert updated_at < gone  # the restored row kept its old updated_at
    assert raw(settings, status) == [(False, None, back, updated_at)]

    again = ingest(spec, replace(settings, detected_at=later))
    assert {t.table: t.extracted for t in again.tables}["customers"] == 0
    window = (updated_at - timedelta(seconds=1), updated_at + timedelta(seconds=1))
    backfill = ingest(spec, replace(settings, detected_at=later), {"customers"}, window=window)
    assert backfill.ok, backfill.error
    assert {t.table: t.extracted for t in backfill.tables}["customers"] >= 1
    assert raw(settings, status) == [(False, None, back, updated_at)]

    with sqlite3.connect(shop) as con:
        con.execute("update customers set tier = 'gold', updated_at = '2026-06-04 00:00:00' where customer_id = 7")
    assert ingest(spec, replace(settings, detected_at=later)).ok
    assert raw(settings, status) == [(False, None, None, datetime(2026, 6, 4, tzinfo=UTC))]


@ON_EVERY_ENGINE
def test_deleted_rows_keep_raw_types_so_wider_values_still_load(settings: Settings) -> None:
    """Key-diff's deleted rows are read back from raw and merged again. Read from PostgreSQL they
    come as Python values; typed from those (a decimal(3,2) for 1.25) they would narrow dlt's
    schema, and the same merge's 1234.56 would be refused by the staging table made from it."""
    spec = sources()["shop"]
    assert ingest(spec, settings).ok
    shop = settings.demo_dir / "shop.sqlite"
    with sqlite3.connect(shop) as con:
        cheapest, price = con.execute(
            "select order_item_id, unit_price from order_items order by unit_price limit 1"
        ).fetchone()
        con.execute("delete from order_items where order_item_id = ?", [cheapest])
        (other,) = con.execute("select max(order_item_id) from order_items").fetchone()
        con.execute(
            "update order_items set unit_price = 1234.56, updated_at = '2099-01-01 00:00:00' where order_item_id = ?",
            [other],
        )
    night = ingest(spec, settings)  # the deleted row and the wider value in one merge
    assert night.ok, night.error
    row = "select _is_deleted, unit_price from raw_shop.order_items where order_item_id = "
    assert raw(settings, f"{row}{other}") == [(False, Decimal("1234.56"))]
    assert raw(settings, f"{row}{cheapest}") == [(True, Decimal(str(price)).quantize(Decimal("0.01")))]


def test_raw_tables_loaded_before_restored_at_existed_get_the_column(settings: Settings) -> None:
    """An upgrade: raw tables (and dlt's schema) without _restored_at get it on the next run, even
    the tables with nothing to extract, since staging reads it."""
    spec = sources()["shop"]
    assert ingest(spec, settings).ok
    pipeline = make_pipeline(spec, target(settings))
    schema = pipeline.default_schema
    tables = [t.name for t in spec.tables]
    for table in tables:
        schema.tables[table]["columns"].pop("_restored_at")
    pipeline.schemas.save_schema(schema)
    with duckdb.connect(str(settings.warehouse)) as wh:
        for table in tables:
            wh.execute(f"alter table raw_shop.{table} drop column _restored_at")
    with sqlite3.connect(settings.demo_dir / "shop.sqlite") as con:
        con.execute("update products set unit_price = 1.5, updated_at = '2026-06-01' where product_id = 3")
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert {t.table: t.extracted for t in result.tables} == {
        "customers": 0,
        "products": 1,
        "orders": 0,
        "order_items": 0,
        "stock_levels": 0,
    }
    having = raw(
        settings,
        "select table_name from information_schema.columns "
        "where table_schema = 'raw_shop' and column_name = '_restored_at' order by 1",
    )
    assert [t for (t,) in having] == sorted(tables)
    stored = make_pipeline(spec, target(settings)).default_schema.tables
    assert all("_restored_at" in stored[t]["columns"] for t in tables)
    assert ingest(spec, settings).ok


@pytest.mark.badinput
def test_an_emptied_source_table_is_refused_and_state_does_not_move(settings: Settings) -> None:
    spec = sources()["shop"]
    assert ingest(spec, settings).ok
    state_before = make_pipeline(spec, target(settings)).state["sources"]
    with sqlite3.connect(settings.demo_dir / "shop.sqlite") as con:
        con.execute("delete from customers")
        con.execute("update orders set status = 'shipped', updated_at = '2026-03-01 00:00:00.000000'")
    result = ingest(spec, settings)
    assert not result.ok
    assert result.error is not None
    assert "source 'shop', table 'customers'" in result.error
    assert "max_delete_share" in result.error
    assert raw(settings, "select count(*) from raw_shop.customers where _is_deleted") == [(0,)]
    assert raw(
        settings, "select count(*) from raw_shop.orders where status = 'shipped' and updated_at >= '2026-03-01'"
    ) == [(0,)]
    assert make_pipeline(spec, target(settings)).state["sources"] == state_before


@pytest.mark.badinput
def test_unreachable_source_is_a_clear_failure(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCES__SHOP__CREDENTIALS", f"sqlite:///{settings.data_dir / 'missing' / 'nowhere.db'}")
    result = ingest(sources()["shop"], settings)
    assert not result.ok
    assert result.error is not None and result.error.startswith("source 'shop':")
    assert "unable to open database file" in result.error


def test_declared_options_shape_the_load(settings: Settings) -> None:
    """exclude_columns never reaches raw; a table without cursor is reloaded whole with replace."""
    spec = SourceSpec(
        name="shop",
        kind="database",
        description="",
        demo=True,
        tables=(
            TableSpec("customers", ("customer_id",), "updated_at", "merge", "key_diff", exclude_columns=("email",)),
            TableSpec("products", ("product_id",), None, "replace", "none"),
        ),
    )
    first = {t.table: t for t in ingest(spec, settings).tables}
    assert first["products"].extracted == 200
    columns = {
        r[0] for r in raw(settings, "select column_name from information_schema.columns where table_name = 'customers'")
    }
    assert "email" not in columns and "tier" in columns
    with sqlite3.connect(settings.demo_dir / "shop.sqlite") as con:
        con.execute("delete from products where product_id = 1")
    second = {t.table: t for t in ingest(spec, settings).tables}
    assert second["customers"].extracted == 0
    assert second["products"].extracted == 199
    assert raw(settings, "select count(*), count(*) filter (where product_id = 1) from raw_shop.products") == [(199, 0)]


def test_an_interrupted_load_is_finished_and_fresh_data_still_extracted(settings: Settings) -> None:
    """A run killed after extraction leaves a pending package; the next run loads it first and
    then extracts what changed since, in the same run."""
    spec = sources()["shop"]
    assert ingest(spec, settings).ok
    shop = settings.demo_dir / "shop.sqlite"
    with sqlite3.connect(shop) as con:
        con.execute(
            "update products set unit_price = 1.11, updated_at = '2026-05-01 00:00:00.000000' where product_id = 7"
        )
    pipeline = make_pipeline(spec, target(settings))
    url = sa.make_url(demo_shop_url(settings))
    plans = plan_source(pipeline, url, spec, {"products"})
    pipeline.extract(database_source(spec, url, plans, settings.data_dir / "staging"))
    assert pipeline.has_pending_data  # as if killed before normalise/load
    with sqlite3.connect(shop) as con:
        con.execute(
            "update products set unit_price = 2.22, updated_at = '2026-05-02 00:00:00.000000' where product_id = 8"
        )
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert result.finished_pending
    assert len(result.load_ids) == 2
    assert {t.table: t.extracted for t in result.tables}["products"] == 1  # only product 8 is new
    prices = raw(settings, "select product_id, unit_price from raw_shop.products where product_id in (7, 8) order by 1")
    assert [(pid, float(price)) for pid, price in prices] == [(7, 1.11), (8, 2.22)]
    assert not make_pipeline(spec, target(settings)).has_pending_data


def test_a_table_split_into_many_parquet_files_loads_every_row(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large tables are cut into several files; every file reaches raw (counted and loaded), at
    most LOAD_JOBS at a time (dlt's twenty side by side ran out of DuckDB's memory limit on a
    30 M-row table)."""
    from dlt.destinations.impl.duckdb.duck import DuckDbCopyJob

    from dusk.warehouse.duckdb_engine import LOAD_JOBS
    from ingestion.database import scan

    monkeypatch.setattr(scan, "FILE_SIZE", "1KB")
    monkeypatch.setattr(scan, "ROW_GROUP_SIZE", 500)
    running, most, lock = [0], [0], threading.Lock()
    load_file = DuckDbCopyJob.run

    def counted(job: DuckDbCopyJob) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.05)  # long enough for the next job to start beside it, were it allowed
            load_file(job)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(DuckDbCopyJob, "run", counted)
    result = ingest(sources()["shop"], settings)
    assert result.ok, result.error
    assert most[0] == LOAD_JOBS
    with sqlite3.connect(settings.demo_dir / "shop.sqlite") as con:
        (items,) = con.execute("select count(*) from order_items").fetchone()
    assert items > 5000
    assert {t.table: t.extracted for t in result.tables}["order_items"] == items
    assert raw(settings, "select count(*), count(distinct order_item_id) from raw_shop.order_items") == [(items, items)]
    assert len(list((settings.pipelines_dir).rglob("order_items.*.parquet"))) > 1


@pytest.mark.parametrize("delay", [1.0, "extract", "load"])
def test_a_sigkilled_ingest_is_finished_by_the_next_run(settings: Settings, delay: float | str) -> None:
    """SIGKILL a real ingest process at some instant (reflection, extraction, load), run again:
    raw equals the source, no key twice, and a third run finds nothing new."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SOURCES__")}
    kill_ingest_after(settings, "shop", delay, env)
    spec = sources()["shop"]
    result = ingest(spec, settings)
    assert result.ok, result.error
    with sqlite3.connect(settings.demo_dir / "shop.sqlite") as con:
        for table, pk in (("customers", "customer_id"), ("order_items", "order_item_id")):
            source = sorted(r[0] for r in con.execute(f"select {pk} from {table}"))
            assert [r[0] for r in raw(settings, f"select {pk} from raw_shop.{table} order by 1")] == source
    quiet = ingest(spec, settings)
    assert quiet.ok and all(t.extracted == 0 for t in quiet.tables)


def test_a_lag_window_picks_up_rows_committed_late_without_key_diff(settings: Settings) -> None:
    """Without key-diff, `lag` re-reads the window below the watermark: a row committed late with
    an older updated_at inside it arrives, and the re-read rows are merged, not duplicated."""
    spec = SourceSpec(
        name="shop",
        kind="database",
        description="",
        demo=True,
        tables=(TableSpec("products", ("product_id",), "updated_at", "merge", "none", lag_seconds=3600),),
    )
    assert ingest(spec, settings).ok
    (top,) = raw(settings, "select max(updated_at) from raw_shop.products")[0]
    late = (top.replace(tzinfo=None) - timedelta(minutes=30)).isoformat(sep=" ")
    with sqlite3.connect(settings.demo_dir / "shop.sqlite") as con:
        con.execute("insert into products values (9100, 'SKU-09100', 'Late', 'books', 1.50, 'USD', ?, ?)", (late, late))
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert {t.table: t.extracted for t in result.tables}["products"] >= 1
    assert raw(settings, "select count(*), count(distinct product_id) from raw_shop.products") == [(201, 201)]
    assert raw(settings, "select sku from raw_shop.products where product_id = 9100") == [("SKU-09100",)]


def test_a_package_killed_while_dlt_deleted_it_does_not_block_the_next_run(settings: Settings) -> None:
    """dlt normalizes a package, then deletes its extracted copy; a SIGKILL during that delete
    leaves a half-deleted extracted package (no new_jobs) that made every later run fail."""
    spec = sources()["shop"]
    assert ingest(spec, settings).ok
    root = settings.pipelines_dir / "shop"
    (loaded,) = [p.name for p in (root / "load" / "loaded").iterdir()]
    leftover = root / "normalize" / "extracted" / loaded
    leftover.mkdir(parents=True)
    (leftover / "package_state.json").write_text("{}")
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert not leftover.exists()


def test_a_write_killed_before_its_rename_does_not_block_the_next_run(settings: Settings) -> None:
    """dlt writes each file to a temporary one named by 16 hex digits, then renames it. A SIGKILL
    between the two (seen in CI, during a CDC extract) left one in ``schemas/``, and dlt's sync
    step failed on it at every later run (FileNotFoundError: .../<hex>.schema.json)."""
    spec = sources()["shop"]
    assert ingest(spec, settings).ok
    root = settings.pipelines_dir / "shop"
    stray = [root / "schemas" / "e98870127cede4c7", root / "3f2a9c0b1d4e5f67", root / "load" / "0123456789abcdef"]
    for path in stray:
        path.write_text('{"half": ')
    keep = root / "schemas" / "notes.txt"  # not dlt's temporary name: left alone
    keep.write_text("mine")
    with sqlite3.connect(settings.demo_dir / "shop.sqlite") as con:
        con.execute(
            "update products set unit_price = 3.33, updated_at = '2026-05-01 00:00:00.000000' where product_id = 7"
        )
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert {t.table: t.extracted for t in result.tables}["products"] == 1
    assert not any(p.exists() for p in stray)
    assert keep.exists()
